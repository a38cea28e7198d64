"""The trainer: recipes, data handling, schedules, and real `accelerate launch` runs on the CPU
(loss falls; 2 processes == 1; DeepSpeed ZeRO-2 / ZeRO-3 with 2 processes; SIGKILL + resume == uninterrupted)."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from llada.data import DataError, DataStats, Row, read_rows, tokenize_pretraining, tokenize_sft
from llada.tokenization import apply_chat_template, special_token_ids
from llada.train import (
    TrainConfig,
    learning_rate_at,
    load_training_data,
    micro_batch_positions,
)

ROOT = Path(__file__).resolve().parents[1]

TINY_MODEL = {"d_model": 32, "n_heads": 2, "n_layers": 2, "mlp_hidden_size": 64, "max_sequence_length": 128,
              "rope_theta": 10000.0}


# --------------------------------------------------------------------------- fixtures
@pytest.fixture(scope="session")
def tiny_corpus(tmp_path_factory):
    """A small seeded corpus and a byte-level BPE tokenizer trained on it (vocab 300)."""
    from llada.build_embedded import train_tokenizer
    from llada.corpus import CorpusConfig, write_corpus

    root = tmp_path_factory.mktemp("tiny_corpus")
    write_corpus(root / "corpus", CorpusConfig(sft_examples=300, pretrain_documents=300, heldout_per_family=3))
    tokenizer = train_tokenizer(root / "corpus", root / "tokenizer", vocab_size=300)
    return {"root": root, "corpus": root / "corpus", "tokenizer_dir": root / "tokenizer", "tokenizer": tokenizer}


def _recipe(tiny_corpus, path: Path, **fields) -> Path:
    import yaml

    recipe = {
        "task": "pretrain",
        "model_config": TINY_MODEL,
        "tokenizer_name_or_path": str(tiny_corpus["tokenizer_dir"]),
        "train_data": [str(tiny_corpus["corpus"] / "pretrain.jsonl")],
        "seq_len": 32,
        "micro_batch_size": 4,
        "max_steps": 40,
        "lr": 3e-3,
        "warmup_steps": 2,
        "logging_steps": 1,
        "log_with": None,
        "num_threads": 1,
        "seed": 0,
    }
    recipe.update(fields)
    path.write_text(yaml.safe_dump(recipe))
    return path


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _launch_cmd(config_file: str, recipe: Path, *overrides: str, processes: int | None = None) -> list[str]:
    cmd = [sys.executable, "-m", "accelerate.commands.launch", "--config_file", f"configs/accelerate/{config_file}"]
    if processes is not None:
        cmd += ["--num_processes", str(processes)]
    if processes is not None and processes > 1:
        cmd += ["--main_process_port", str(_free_port())]
    return cmd + ["-m", "llada.train", str(recipe), *overrides]


def _env() -> dict:
    return dict(os.environ, OMP_NUM_THREADS="1", TOKENIZERS_PARALLELISM="false")


def _launch(config_file: str, recipe: Path, *overrides: str, processes: int | None = None, timeout: int = 300):
    proc = subprocess.run(_launch_cmd(config_file, recipe, *overrides, processes=processes), cwd=ROOT, env=_env(),
                          capture_output=True, text=True, timeout=timeout)
    if proc.returncode != 0:
        raise AssertionError(f"accelerate launch failed ({proc.returncode}):\n{proc.stdout[-3000:]}\n{proc.stderr[-5000:]}")
    return proc


def _weights(folder: Path) -> dict:
    from safetensors.torch import load_file

    return load_file(str(folder / "model.safetensors"))


def _max_diff(a: dict, b: dict) -> float:
    assert a.keys() == b.keys()
    return max((a[k].float() - b[k].float()).abs().max().item() for k in a)


@pytest.fixture(scope="module")
def single_run(tiny_corpus, tmp_path_factory):
    """The reference run: 1 process, batch 4, 40 steps, through the real `accelerate launch`."""
    from llada.train import build_model

    out = tmp_path_factory.mktemp("single")
    recipe = _recipe(tiny_corpus, out / "recipe.yaml")
    proc = _launch("cpu.yaml", recipe, f"output_dir={out}")
    # the weights every run starts from (the trainer seeds the initialisation with `seed`)
    initial = build_model(TrainConfig.from_yaml_and_overrides(str(recipe)), tiny_corpus["tokenizer"], accelerator=None)
    initial = {k: v.detach().clone() for k, v in initial.state_dict().items()}
    return {"out": out, "recipe": recipe, "stdout": proc.stdout, "final": out / "final", "initial": initial}


def _assert_same_run(other: dict, single_run: dict):
    """Another layout of the same run (processes, DeepSpeed stage) ends at the single-process weights up to float
    reduction order: the discrepancy is under 1% of how far training moved the weights. A real difference (other
    rows, other noise, a step missed) moves weights by the order of the training movement itself."""
    reference = _weights(single_run["final"])
    moved = _max_diff(reference, single_run["initial"])
    assert moved > 1e-2, moved
    assert _max_diff(other, reference) < 1e-2 * moved, (_max_diff(other, reference), moved)


# --------------------------------------------------------------------------- recipes and schedules
def test_config_from_yaml_and_overrides(tmp_path, tiny_corpus):
    recipe = _recipe(tiny_corpus, tmp_path / "r.yaml")
    cfg = TrainConfig.from_yaml_and_overrides(
        str(recipe), ["lr=1e-4", "lora=true", "model_config.n_layers=3", "train_data=[a.jsonl,b.jsonl]"])
    assert cfg.lr == 1e-4 and cfg.lora is True and cfg.model_config["n_layers"] == 3
    assert cfg.model_config["d_model"] == 32 and cfg.train_data == ["a.jsonl", "b.jsonl"]
    with pytest.raises(ValueError, match="unknown TrainConfig field"):
        TrainConfig.from_yaml_and_overrides(str(recipe), ["learning_rate=1"])
    with pytest.raises(ValueError, match="lr_schedule"):
        TrainConfig.from_yaml_and_overrides(str(recipe), ["lr_schedule=linear"])
    with pytest.raises(ValueError, match="exactly one of model_name_or_path"):
        TrainConfig.from_yaml_and_overrides(str(recipe), ["model_name_or_path=x"])


@pytest.mark.parametrize("recipe", ["embedded_pretrain", "embedded_sft_stage1", "embedded_sft", "llada_1b_pretrain",
                                    "llada_8b_sft", "llada_8b_lora_sft"])
def test_shipped_recipes_parse(recipe):
    cfg = TrainConfig.from_yaml_and_overrides(str(ROOT / "configs" / "recipes" / f"{recipe}.yaml"))
    assert cfg.task in ("pretrain", "sft") and cfg.lr > 0


def test_learning_rate_schedules():
    wsd = TrainConfig(model_config={}, train_data=["x"], lr=1.0, warmup_steps=4, lr_schedule="wsd",
                      decay_fraction=0.2, max_steps=20)
    lrs = [learning_rate_at(s, 20, wsd) for s in range(20)]
    assert lrs[:4] == [0.25, 0.5, 0.75, 1.0]  # linear warmup
    assert lrs[4:16] == [1.0] * 12  # stable
    assert lrs[16:] == pytest.approx([0.75, 0.5, 0.25, 0.0])  # linear decay over the last 20% to min ratio 0
    cos = TrainConfig(model_config={}, train_data=["x"], lr=2.0, warmup_steps=0, lr_schedule="cosine",
                      min_lr_ratio=0.1, max_steps=11)
    assert learning_rate_at(0, 11, cos) == pytest.approx(2.0)
    assert learning_rate_at(5, 11, cos) == pytest.approx(2.0 * (0.1 + 0.9 * 0.5))  # halfway: cos(pi / 2) = 0
    assert learning_rate_at(10, 11, cos) == pytest.approx(0.2)  # the last step is at the floor


def test_global_batches_split_over_processes_cover_the_single_process_batch():
    one = TrainConfig(model_config={}, train_data=["x"], micro_batch_size=6, gradient_accumulation_steps=2)
    two = TrainConfig(model_config={}, train_data=["x"], micro_batch_size=3, gradient_accumulation_steps=2)
    for step in range(3):
        for micro in range(2):
            single = list(micro_batch_positions(step, micro, one, 0, 1))
            split = [p for r in range(2) for p in micro_batch_positions(step, micro, two, r, 2)]
            assert single == split


@pytest.mark.parametrize("task,layout", [("pretrain", "right"), ("sft", "right"), ("sft", "left")])
def test_micro_batches_split_over_processes_give_the_single_process_gradient(task, layout, tiny_corpus):
    """What DDP computes (the mean over processes of each process's gradient) equals the single-process gradient
    of the whole batch: same rows, same noise, SFT padding to the global longest row, same random-length cut."""
    import llada
    from llada.train import DataOrder, build_micro_batch, micro_batch_loss

    tok = tiny_corpus["tokenizer"]
    ids = special_token_ids(tok)
    data = tiny_corpus["corpus"] / ("pretrain.jsonl" if task == "pretrain" else "sft_train.jsonl")
    base = dict(task=task, model_config=TINY_MODEL, train_data=[str(data)], seq_len=32 if task == "pretrain" else 96,
                gradient_accumulation_steps=2, random_length_probability=0.5, seed=3, sft_layout=layout,
                sft_response_length=24)
    one, two = TrainConfig(micro_batch_size=4, **base), TrainConfig(micro_batch_size=2, **base)
    examples, _ = load_training_data(one, tok, log=lambda m: None)
    order = DataOrder(len(examples), one.seed)
    config = llada.LLaDAConfig(**TINY_MODEL, vocab_size=len(tok), embedding_size=320, mask_token_id=ids.mask,
                               eos_token_id=ids.eos, pad_token_id=ids.pad)
    torch.manual_seed(0)
    model = llada.LLaDAModelLM(config)

    def grads(cfg, rank, P, step, micro):
        model.zero_grad()
        batch = build_micro_batch(cfg, examples, order, step, micro, rank, P, ids.pad)
        micro_batch_loss(model, batch, cfg, ids.mask).loss.backward()
        return torch.cat([p.grad.flatten() for p in model.parameters()]), batch["input_ids"].shape

    for step, micro in [(0, 0), (0, 1), (5, 1)]:
        g1, shape1 = grads(one, 0, 1, step, micro)
        (ga, shape_a), (gb, shape_b) = grads(two, 0, 2, step, micro), grads(two, 1, 2, step, micro)
        assert shape_a[1] == shape_b[1] == shape1[1]  # same (padded / cut) length on every process
        torch.testing.assert_close((ga + gb) / 2, g1, rtol=1e-5, atol=1e-7)


def test_left_layout_matches_the_sampler_layout(tiny_corpus):
    """sft_layout=left: [left padding | prompt | response + EOS to sft_response_length], exactly what
    `left_pad(prompts)` followed by gen_length positions looks like at generation time."""
    from llada.data import collate_sft_left
    from llada.tokenization import left_pad

    tok = tiny_corpus["tokenizer"]
    ids = special_token_ids(tok)
    rows = [Row("m", 0, {"prompt": "What is 2 + 3?", "response": "5"}),
            Row("m", 1, {"prompt": "Reverse the letters: a b c d e", "response": "e d c b a"})]
    examples = tokenize_sft(rows, tok, seq_len=128)
    batch = collate_sft_left(examples, ids.pad, response_length=12)
    prompts = [e.input_ids[: e.prompt_length] for e in examples]
    padded, mask = left_pad(prompts, ids.pad)
    P = padded.shape[1]
    assert torch.equal(batch["input_ids"][:, :P], padded) and torch.equal(batch["attention_mask"][:, :P], mask)
    assert bool((batch["attention_mask"][:, P:] == 1).all()) and batch["prompt_lengths"].tolist() == [P, P]
    for b, e in enumerate(examples):
        response = e.input_ids[e.prompt_length:]
        assert batch["input_ids"][b, P: P + len(response)].tolist() == response
        assert bool((batch["input_ids"][b, P + len(response):] == ids.eos).all())  # EOS padding of the response
    with pytest.raises(ValueError, match="does not fit response_length=2"):
        collate_sft_left(examples, ids.pad, response_length=2)
    stats = DataStats()
    cut = tokenize_sft(rows[1:], tok, seq_len=128, max_response_length=3, stats=stats)
    assert len(cut[0].input_ids) - cut[0].prompt_length == 3 and stats.truncated == 1
    with pytest.raises(DataError, match=r"m row 2: response is \d+ tokens, longer than sft_response_length=3"):
        tokenize_sft(rows[1:], tok, seq_len=128, max_response_length=3, too_long="error")


# --------------------------------------------------------------------------- data
def test_sft_tokenisation_uses_the_chat_template(tiny_corpus):
    tok = tiny_corpus["tokenizer"]
    ids = special_token_ids(tok)
    msgs = [{"role": "user", "content": "What is 2 + 3?"}, {"role": "assistant", "content": "5"},
            {"role": "user", "content": "Reverse the letters: a b"}, {"role": "assistant", "content": "b a"}]
    examples = tokenize_sft([Row("mem", 0, {"messages": msgs})], tok, seq_len=128)
    assert len(examples) == 2  # one per assistant turn
    for ex, (history, answer) in zip(examples, [(msgs[:1], "5"), (msgs[:3], "b a")]):
        prompt = apply_chat_template(tok, history)
        assert ex.input_ids[: ex.prompt_length] == prompt
        response = ex.input_ids[ex.prompt_length:]
        assert response[-1] == ids.eot and tok.decode(response[:-1]) == answer
    pr = tokenize_sft([Row("mem", 0, {"prompt": "What is 2 + 3?", "response": "5"})], tok, seq_len=128)
    assert pr[0].input_ids == examples[0].input_ids


def test_malformed_row_is_reported_with_file_and_row(tmp_path, tiny_corpus):
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"text": "fine"}\n{"text": broken\n{"text": "also fine"}\n')
    with pytest.raises(DataError, match=r"bad\.jsonl row 2 \(line 2\): malformed JSON"):
        list(read_rows([str(bad)]))
    stats = DataStats()
    rows = list(read_rows([str(bad)], bad_rows="skip", stats=stats))
    assert [r.index for r in rows] == [0, 2] and stats.skipped_bad == 1
    wrong = tmp_path / "wrong.jsonl"
    wrong.write_text('{"messages": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "yo"}]}\n'
                     '{"messages": [{"role": "user", "content": "no answer"}]}\n')
    with pytest.raises(DataError, match=r"wrong\.jsonl row 2: the conversation has no assistant turn"):
        tokenize_sft(read_rows([str(wrong)]), tiny_corpus["tokenizer"], seq_len=64)
    stats = DataStats()
    got = tokenize_sft(read_rows([str(wrong)]), tiny_corpus["tokenizer"], seq_len=64, bad_rows="skip", stats=stats)
    assert len(got) == 1 and stats.skipped_bad == 1
    with pytest.raises(DataError, match=r"wrong\.jsonl row 1: field 'text' must be a string"):
        tokenize_pretraining(read_rows([str(wrong)]), tiny_corpus["tokenizer"], seq_len=16)


def test_empty_dataset_is_refused(tmp_path, tiny_corpus):
    empty = tmp_path / "empty.jsonl"
    empty.write_text("\n")
    cfg = TrainConfig(task="sft", model_config={}, tokenizer_name_or_path=str(tiny_corpus["tokenizer_dir"]),
                      train_data=[str(empty)])
    with pytest.raises(DataError, match="gave no usable sft examples"):
        load_training_data(cfg, tiny_corpus["tokenizer"], log=lambda m: None)
    only_bad = tmp_path / "only_bad.jsonl"
    only_bad.write_text("not json\n")
    cfg = TrainConfig(task="pretrain", model_config={}, train_data=[str(only_bad)], bad_rows="skip")
    with pytest.raises(DataError, match=r"1 malformed"):
        load_training_data(cfg, tiny_corpus["tokenizer"], log=lambda m: None)
    with pytest.raises(DataError, match="no such file"):
        list(read_rows([str(tmp_path / "missing.jsonl")]))


def test_too_long_sequences_truncated_skipped_or_refused(tiny_corpus):
    tok = tiny_corpus["tokenizer"]
    ids = special_token_ids(tok)
    long_answer = " ".join(["a"] * 40)
    row = Row("f.jsonl", 6, {"prompt": "Reverse the letters: a", "response": long_answer})
    full = tokenize_sft([row], tok, seq_len=256)[0]
    assert len(full.input_ids) > 40
    limit = full.prompt_length + 5
    stats = DataStats()
    cut = tokenize_sft([row], tok, seq_len=limit, too_long="truncate", stats=stats)[0]
    assert len(cut.input_ids) == limit and cut.input_ids == full.input_ids[:limit] and stats.truncated == 1
    assert cut.prompt_length == full.prompt_length  # the response is cut, never the prompt
    stats = DataStats()
    assert tokenize_sft([row], tok, seq_len=limit, too_long="skip", stats=stats) == [] and stats.skipped_too_long == 1
    with pytest.raises(DataError, match=rf"f\.jsonl row 7: prompt \+ response is \d+ tokens, longer than seq_len={limit}"):
        tokenize_sft([row], tok, seq_len=limit, too_long="error")
    stats = DataStats()
    assert tokenize_sft([row], tok, seq_len=full.prompt_length, stats=stats) == [] and stats.skipped_too_long == 1
    doc = Row("p.jsonl", 0, {"text": long_answer})
    seqs = tokenize_pretraining([doc], tok, seq_len=16, pack=False, too_long="truncate")
    assert len(seqs) == 1 and len(seqs[0]) == 16 and seqs[0][0] == ids.bos
    with pytest.raises(DataError, match=r"p\.jsonl row 1: \d+ tokens, longer than seq_len=16"):
        tokenize_pretraining([doc], tok, seq_len=16, pack=False, too_long="error")
    short = tokenize_pretraining([Row("p", 0, {"text": "a b"})], tok, seq_len=16, pack=False)
    assert len(short[0]) == 16 and short[0][-1] == ids.pad  # EOS-padded, not mangled


def test_qlora_on_cpu_is_a_clear_error(tmp_path, tiny_corpus, llada_tiny_path):
    if torch.cuda.is_available():
        pytest.skip("this machine has a GPU")
    from llada.train import build_model

    cfg = TrainConfig(task="sft", model_name_or_path=str(llada_tiny_path), train_data=["x"], load_in_4bit=True)
    assert cfg.lora is True  # QLoRA = 4-bit base + LoRA
    with pytest.raises(ValueError, match="needs a CUDA GPU"):
        build_model(cfg, tiny_corpus["tokenizer"], accelerator=None)


def test_lora_bf16_gradient_checkpointing_in_process(tmp_path, tiny_corpus):
    """`llada train` (one process, in this process): LoRA + bf16 autocast + gradient checkpointing, then the
    merged model loads and only LoRA weights were trained."""
    from accelerate.state import AcceleratorState

    import llada
    from llada.train import main

    base = tmp_path / "base"
    rc = main([str(_recipe(tiny_corpus, tmp_path / "r.yaml")), f"output_dir={base}", "max_steps=2"])
    AcceleratorState._reset_state(True)
    assert rc == 0
    sft = tmp_path / "sft"
    rc = main([str(_recipe(tiny_corpus, tmp_path / "r2.yaml", task="sft", model_config=None,
                           model_name_or_path=str(base / "final"), tokenizer_name_or_path=None,
                           train_data=[str(tiny_corpus["corpus"] / "sft_train.jsonl")], seq_len=96)),
               f"output_dir={sft}", "max_steps=3", "lora=true", "lora_r=4", "mixed_precision=bf16",
               "gradient_checkpointing=true", "lr=1e-2"])
    AcceleratorState._reset_state(True)
    assert rc == 0
    assert (sft / "final" / "adapter" / "adapter_config.json").is_file()
    merged = llada.LLaDAModelLM.from_pretrained(str(sft / "final"), dtype=torch.float32)
    before, after = _weights(base / "final"), merged.state_dict()
    assert set(before) == set(after)
    changed = [k for k in before if not torch.equal(before[k], after[k])]
    lora_targets = ("q_proj.weight", "k_proj.weight", "v_proj.weight", "attn_out.weight", "ff_proj.weight",
                    "up_proj.weight", "ff_out.weight")
    assert "model.transformer.blocks.0.q_proj.weight" in changed
    assert all(".blocks." in k and k.endswith(lora_targets) for k in changed), changed
    log = [json.loads(line) for line in (sft / "train_log.jsonl").read_text().splitlines()]
    assert all(torch.isfinite(torch.tensor(r["loss"])) for r in log)


# --------------------------------------------------------------------------- accelerate launch runs
@pytest.mark.slow
def test_accelerate_launch_cpu_loss_falls(single_run):
    log = [json.loads(line) for line in (single_run["out"] / "train_log.jsonl").read_text().splitlines()]
    assert [r["step"] for r in log] == list(range(1, 41))
    first = sum(r["loss"] for r in log[:8]) / 8
    last = sum(r["loss"] for r in log[-8:]) / 8
    assert last < first - 0.5, (first, last)
    final = single_run["final"]
    for name in ("config.json", "model.safetensors", "generation_config.json", "tokenizer.json",
                 "tokenizer_config.json"):
        assert (final / name).is_file(), name
    assert "chat_template" in json.loads((final / "tokenizer_config.json").read_text())
    import llada
    from transformers import AutoTokenizer

    model = llada.LLaDAModelLM.from_pretrained(str(final))
    tok = AutoTokenizer.from_pretrained(str(final))
    assert model.config.mask_token_id == special_token_ids(tok).mask


@pytest.mark.slow
def test_two_processes_equal_one(single_run, tmp_path):
    out = tmp_path / "two"
    _launch("cpu_2proc.yaml", single_run["recipe"], f"output_dir={out}", "micro_batch_size=2", processes=2)
    summary = json.loads((out / "final" / "training_summary.json").read_text())
    assert summary["processes"] == 2
    _assert_same_run(_weights(out / "final"), single_run)


@pytest.mark.slow
@pytest.mark.parametrize("stage", ["zero2", "zero3"])
def test_deepspeed_two_cpu_processes(single_run, tmp_path, stage):
    out = tmp_path / stage
    proc = _launch(f"deepspeed_{stage}.yaml", single_run["recipe"], f"output_dir={out}", "micro_batch_size=2",
                   "save_steps=20", processes=2)
    assert "2 process(es), distributed=DistributedType.DEEPSPEED" in proc.stdout
    assert (out / "checkpoint-0000020" / "accelerate_state").is_dir()
    log = [json.loads(line) for line in (out / "train_log.jsonl").read_text().splitlines()]
    assert len(log) == 40 and all(torch.isfinite(torch.tensor(r["loss"])) for r in log)
    # the same run as one process without DeepSpeed (the same global batch of 4 split over 2 processes)
    _assert_same_run(_weights(out / "final"), single_run)


@pytest.mark.slow
def test_sigkill_then_resume_matches_uninterrupted(single_run, tmp_path):
    out = tmp_path / "killed"
    cmd = _launch_cmd("cpu.yaml", single_run["recipe"], f"output_dir={out}", "save_steps=10", "save_total_limit=0")
    proc = subprocess.Popen(cmd, cwd=ROOT, env=_env(), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                            start_new_session=True)
    marker = out / "checkpoint-0000010" / "trainer_state.json"
    deadline = time.time() + 240
    while not marker.exists() and proc.poll() is None and time.time() < deadline:
        time.sleep(0.01)
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    assert marker.exists(), "the run never wrote its first checkpoint"
    assert not (out / "final").exists(), "the run finished before it could be killed"
    done = max(int(p.name.split("-")[-1]) for p in out.glob("checkpoint-*") if (p / "trainer_state.json").exists())
    assert 10 <= done < 40
    resumed = _launch("cpu.yaml", single_run["recipe"], f"output_dir={out}", "save_steps=10", "save_total_limit=0")
    assert f"resumed from {out / f'checkpoint-{done:07d}'} at step {done}" in resumed.stdout
    a, b = _weights(out / "final"), _weights(single_run["final"])
    assert all(torch.equal(a[k], b[k]) for k in a), _max_diff(a, b)


# --------------------------------------------------------------------------- the synthetic corpus
def test_corpus_is_seeded_split_and_checkable(tmp_path):
    from llada.corpus import FAMILIES, CorpusConfig, check_answer, heldout_split, knowledge_facts, split_facts, \
        sft_train_split, write_corpus

    cfg = CorpusConfig(sft_examples=600, pretrain_documents=50, heldout_per_family=20)
    a, b = write_corpus(tmp_path / "a", cfg), write_corpus(tmp_path / "b", cfg)
    for name in a:
        assert a[name].read_bytes() == b[name].read_bytes()  # same seed, same bytes
    train, held = sft_train_split(cfg), heldout_split(cfg)
    assert {r["family"] for r in held} == set(FAMILIES)
    train_prompts = {m["content"] for r in train for m in r["messages"] if m["role"] == "user"}
    assert not any(r["prompt"] in train_prompts for r in held)  # held-out instances never trained on
    train_facts, held_facts = split_facts(cfg.heldout_fraction, cfg.seed)
    assert held_facts and len(train_facts) + len(held_facts) == len(knowledge_facts())
    pretrain_text = (tmp_path / "a" / "pretrain.jsonl").read_text()
    import re

    def expression(prompt):
        return re.search(r"\d+ [+-] \d+", prompt).group(0)

    for r in held:
        if r["family"] in ("addition", "subtraction"):  # nor written in the pretraining text
            assert not re.search(rf"(?<!\d){re.escape(expression(r['prompt']))} = ", pretrain_text)
    for r in held + [{"answer": r["answer"], **r} for r in train]:
        assert check_answer(r["answer"], r["answer"])
    assert check_answer(" 42. ", "42") and not check_answer("4 2", "42") and check_answer("paris", "Paris")
    ex = {r["family"]: r for r in held}
    a, b = map(int, re.findall(r"\d+", ex["addition"]["prompt"]))
    assert ex["addition"]["answer"] == str(a + b)
    a, b = map(int, re.findall(r"\d+", ex["subtraction"]["prompt"]))
    assert ex["subtraction"]["answer"] == str(a - b)
    nums = [int(x) for x in ex["sort"]["prompt"].split(": ")[1].split(", ")]
    assert ex["sort"]["answer"] == ", ".join(map(str, sorted(nums)))
    letters = ex["reverse"]["prompt"].split(": ")[1].split()
    assert ex["reverse"]["answer"] == " ".join(reversed(letters))
    n = int(re.search(r"\d+", ex["parity"]["prompt"]).group(0))
    assert ex["parity"]["answer"] == ("even" if n % 2 == 0 else "odd")
    a, b = map(int, re.findall(r"\d+", ex["compare"]["prompt"]))
    assert ex["compare"]["answer"] == str(max(a, b)) and a != b and 10 <= min(a, b) and max(a, b) <= 99
    compare = [r for r in held if r["family"] == "compare"]
    assert len(compare) == cfg.heldout_per_family_overrides["compare"]  # the larger held-out set of this family
    # compare is split by the unordered pair: a held-out pair is never trained on, in either order
    held_pairs = {frozenset(re.findall(r"\d+", r["prompt"])) for r in compare}
    train_pairs = {frozenset(re.findall(r"\d+", m["content"])) for r in train for m in r["messages"]
                   if m["role"] == "user" and m["content"].startswith(("Which is larger", "Which number is bigger",
                                                                       "Say the larger number"))}
    assert train_pairs and not held_pairs & train_pairs
    # stage 3: sft_train plus repeated compare rows
    stage3 = [json.loads(line) for line in (tmp_path / "a" / "sft_stage3.jsonl").read_text().splitlines()]
    n_compare = sum(r["family"] == "compare" for r in train)
    assert len(stage3) == len(train) + cfg.stage3_repeats["compare"] * n_compare
    assert sum(r["family"] == "compare" for r in stage3) == (1 + cfg.stage3_repeats["compare"]) * n_compare
    assert not any(f"The larger of {a} and {b} " in pretrain_text or f"The larger of {b} and {a} " in pretrain_text
                   for a, b in map(sorted, held_pairs))


def test_compare_heldout_all_is_every_heldout_pair_in_both_orders():
    import re
    from collections import Counter

    from llada.corpus import CorpusConfig, compare_heldout_all, heldout_split, sft_train_split

    cfg = CorpusConfig()
    rows = compare_heldout_all(cfg)
    assert rows == compare_heldout_all(cfg)  # seeded
    orders = Counter(tuple(map(int, re.findall(r"\d+", r["prompt"]))) for r in rows)
    assert set(orders.values()) == {1} and all((b, a) in orders for a, b in orders)  # each pair once per order
    assert all(r["answer"] == str(max(map(int, re.findall(r"\d+", r["prompt"])))) for r in rows)
    pairs = {frozenset(k) for k in orders}
    train_pairs = {frozenset(map(int, re.findall(r"\d+", r["messages"][0]["content"])))
                   for r in sft_train_split(cfg) if r["family"] == "compare"}
    assert train_pairs and not pairs & train_pairs
    assert {frozenset(map(int, re.findall(r"\d+", r["prompt"]))) for r in heldout_split(cfg)
            if r["family"] == "compare"} <= pairs
    assert len(pairs) + len(train_pairs) <= 90 * 89 // 2 and len(rows) > 1000
