"""The lm-eval adapter and the local tasks: real `python -m eval` (lm_eval CLI) runs, single-process and under
`accelerate launch` with two CPU processes, plus in-process checks of the adapter's three request types.

The model is a tiny randomly initialised LLaDA with a byte-level BPE tokenizer trained on the task data (LLaDA's
special tokens and chat template), saved in the Hub layout: it loads offline in a second and makes every code
path run for real (its accuracy is that of chance)."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]
TASKS = ("llada_arith_mc", "llada_knowledge_mc", "llada_arith", "llada_reverse", "llada_text_ppl")
METRICS = {
    "llada_arith_mc": ("acc", "acc_norm"),
    "llada_knowledge_mc": ("acc", "acc_norm"),
    "llada_arith": ("exact_match",),
    "llada_reverse": ("exact_match",),
    "llada_text_ppl": ("word_perplexity", "byte_perplexity", "bits_per_byte"),
}
LIMIT = 4
MODEL_ARGS = "mc_num=8,mc_batch_size=4,rows_per_forward=32,rolling_chunk=24"


@pytest.fixture(scope="module")
def eval_model_dir(tmp_path_factory) -> Path:
    """Tiny LLaDA + tokenizer (Hub layout) over the local tasks' text."""
    from llada import LLaDAConfig, LLaDAModelLM
    from llada.build_embedded import train_tokenizer
    from llada.tokenization import special_token_ids

    base = tmp_path_factory.mktemp("eval_model")
    corpus = base / "corpus"
    corpus.mkdir()
    texts = []
    for f in sorted((ROOT / "eval" / "tasks" / "data").glob("*.jsonl")):
        for line in f.read_text(encoding="utf-8").splitlines():
            row = json.loads(line)
            if "text" in row:
                texts.append((row["text"], ""))
            else:
                texts.append((row["prompt"], row.get("answer") or row["choices"][row["label"]]))
    with open(corpus / "pretrain.jsonl", "w", encoding="utf-8") as fh:
        for p, a in texts:
            fh.write(json.dumps({"text": f"{p} {a}".strip()}) + "\n")
    with open(corpus / "sft_train.jsonl", "w", encoding="utf-8") as fh:
        for p, a in texts:
            fh.write(json.dumps({"messages": [{"role": "user", "content": p}, {"role": "assistant", "content": a}]}) + "\n")
    model_dir = base / "model"
    tok = train_tokenizer(corpus, model_dir, vocab_size=300)
    ids = special_token_ids(tok)
    torch.manual_seed(0)
    cfg = LLaDAConfig(d_model=32, n_heads=4, n_layers=2, mlp_hidden_size=64, vocab_size=len(tok),
                      embedding_size=len(tok), mask_token_id=ids.mask, eos_token_id=ids.eos, pad_token_id=ids.pad,
                      bos_token_id=ids.bos, max_sequence_length=96, init_std=0.2)
    LLaDAModelLM(cfg).save_pretrained(model_dir)
    return model_dir


def _env() -> dict:
    env = dict(os.environ)
    env.update(HF_HUB_OFFLINE="1", HF_DATASETS_OFFLINE="1", TRANSFORMERS_OFFLINE="1", TOKENIZERS_PARALLELISM="false",
               OMP_NUM_THREADS="1", PYTHONPATH=str(ROOT))
    return env


def _results(out_dir: Path) -> tuple[dict, dict[str, list[dict]]]:
    (results_file,) = sorted(out_dir.rglob("results_*.json"))
    samples = {}
    for f in out_dir.rglob("samples_*.jsonl"):
        task = f.name[len("samples_"):].rsplit("_", 1)[0]
        samples[task] = [json.loads(line) for line in f.read_text(encoding="utf-8").splitlines()]
    return json.loads(results_file.read_text()), samples


@pytest.fixture(scope="module")
def single_process_run(eval_model_dir, tmp_path_factory):
    out = tmp_path_factory.mktemp("lm_eval_single")
    cmd = [sys.executable, "-m", "eval", "--model_args", f"pretrained={eval_model_dir},{MODEL_ARGS}",
           "--tasks", ",".join(TASKS), "--limit", str(LIMIT), "--device", "cpu", "--batch_size", "2",
           "--apply_chat_template", "--log_samples", "--output_path", str(out)]
    proc = subprocess.run(cmd, cwd=ROOT, env=_env(), capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-4000:]
    return _results(out)


# ------------------------------------------------------------------------------------------- real lm_eval runs


def test_lm_eval_runs_every_local_task_offline(single_process_run):
    results, samples = single_process_run
    assert set(TASKS) <= set(results["results"])
    for task in TASKS:
        row = results["results"][task]
        assert results["n-samples"][task]["effective"] == LIMIT
        assert len(samples[task]) == LIMIT and sorted(s["doc_id"] for s in samples[task]) == list(range(LIMIT))
        for metric in METRICS[task]:
            value = row[f"{metric},none"]
            if metric in ("acc", "acc_norm", "exact_match"):
                assert 0.0 <= value <= 1.0
                # the metric is the mean of the per-document scores lm-eval logged
                assert value == pytest.approx(sum(s[metric] for s in samples[task]) / LIMIT)
            else:
                assert value > 0 and value == value and value != float("inf")
    # multiple choice: one finite ELBO per choice, scored by the log-likelihood argmax
    for s in samples["llada_arith_mc"]:
        lls = [float(r[0]) for r in s["filtered_resps"]]
        assert len(lls) == 4 and all(ll < 0 for ll in lls)
        assert s["acc"] == float(max(range(4), key=lambda i: lls[i]) == int(s["target"]))
    # generation: the chat template was applied (lm-eval's own flag) and the sampler output is text
    s = samples["llada_reverse"][0]
    assert s["arguments"]["gen_args_0"]["arg_0"].startswith("<|startoftext|><|start_header_id|>user<|end_header_id|>")
    assert isinstance(s["filtered_resps"][0], str)
    assert results["config"]["model"] == "llada"


def test_accelerate_two_processes_give_the_single_process_results(eval_model_dir, tmp_path, single_process_run):
    _, single = single_process_run
    out = tmp_path / "out"
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    cmd = [str(Path(sys.executable).with_name("accelerate")), "launch", "--config_file",
           str(ROOT / "configs" / "accelerate" / "cpu_2proc.yaml"), "--main_process_port", str(port), "-m", "eval",
           "--model_args", f"pretrained={eval_model_dir},{MODEL_ARGS}", "--tasks", "llada_arith_mc,llada_reverse",
           "--limit", str(LIMIT), "--device", "cpu", "--apply_chat_template", "--log_samples",
           "--output_path", str(out)]
    proc = subprocess.run(cmd, cwd=ROOT, env=_env(), capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-4000:]
    results, samples = _results(out)
    for task in ("llada_arith_mc", "llada_reverse"):
        assert results["n-samples"][task]["effective"] == LIMIT
        got = {s["doc_id"]: s for s in samples[task]}
        want = {s["doc_id"]: s for s in single[task]}
        assert sorted(got) == list(range(LIMIT))  # both ranks' documents were gathered
        for doc_id in range(LIMIT):
            if task == "llada_arith_mc":  # per-request seeds: the same ELBO whatever the process / batch
                a = [float(r[0]) for r in got[doc_id]["filtered_resps"]]
                b = [float(r[0]) for r in want[doc_id]["filtered_resps"]]
                assert a == pytest.approx(b, abs=1e-4)
            else:
                assert got[doc_id]["filtered_resps"] == want[doc_id]["filtered_resps"]


# ------------------------------------------------------------------------------------------- the adapter in-process


@pytest.fixture(scope="module")
def adapter(eval_model_dir):
    from eval.lm_eval_adapter import LLaDAEvalModel

    return LLaDAEvalModel(pretrained=str(eval_model_dir), device="cpu", batch_size=3, mc_num=8, mc_batch_size=4,
                          rolling_chunk=8, steps=8, gen_length=8, block_length=8)


def _instance(kind, args, i=0):
    from lm_eval.api.instance import Instance

    return Instance(request_type=kind, doc={}, arguments=args, idx=i, metadata=("t", i, 1))


def test_registered_with_lm_eval():
    import eval.lm_eval_adapter as adapter_module
    from lm_eval.api.registry import get_model

    assert get_model("llada") is adapter_module.LLaDAEvalModel
    assert get_model("hf").__name__ == "HFLM"  # lm-eval's own models stay available


def test_loglikelihood_is_the_seeded_elbo_and_independent_of_batching(adapter):
    from eval.lm_eval_adapter import request_seed
    from llada.likelihood import log_likelihood_batch

    pairs = [("What is 12 + 30?", " 42"), ("What is 12 + 30?", " 43"), ("Reverse the letters: a b", " b a"),
             ("", "What is 1 + 1?")]
    got = adapter.loglikelihood([_instance("loglikelihood", p, i) for i, p in enumerate(pairs)])
    for (context, continuation), (ll, greedy) in zip(pairs, got):
        if context:
            ctx, cont = adapter._encode_pair(context, continuation)
        else:
            ctx, cont = [adapter.prefix_token_id], adapter.tok_encode(continuation)
        (expected,) = log_likelihood_batch(adapter.model, [(ctx, cont)], config=adapter.likelihood_config,
                                           seeds=[request_seed(adapter.seed, context, continuation)])
        assert ll == pytest.approx(expected.estimate, abs=1e-5)
        assert isinstance(greedy, bool)
    saved = adapter.batch_size
    try:
        adapter.batch_size = 1
        again = adapter.loglikelihood([_instance("loglikelihood", p, i) for i, p in enumerate(reversed(pairs))])
    finally:
        adapter.batch_size = saved
    assert [ll for ll, _ in reversed(again)] == pytest.approx([ll for ll, _ in got], abs=1e-5)


def test_greedy_check_is_the_one_token_per_step_greedy_sampler(adapter):
    import sampling
    from llada.likelihood import greedy_unmasking_matches

    prompts = [adapter.tok_encode("What is 12 + 30?"), adapter.tok_encode("Reverse the letters: a b c")]
    answers = []
    for p in prompts:  # what the low-confidence sampler generates with one token per step
        out = sampling.generate(adapter.model, torch.tensor([p]), steps=5, gen_length=5, block_length=5)
        answers.append(out[0, len(p):].tolist())
    requests = [(p, a) for p, a in zip(prompts, answers)]
    altered = [(p, a[:2] + [(a[2] + 1) % len(adapter.tokenizer)] + a[3:]) for p, a in requests]
    assert greedy_unmasking_matches(adapter.model, requests + altered) == [True, True, False, False]
    # the adapter reports it as lm-eval's is_greedy
    got = adapter._loglikelihood_tokens([(("c", "a"), p, a) for p, a in requests + altered])
    assert [g for _, g in got] == [True, True, False, False]


def test_loglikelihood_rolling_sums_chunk_elbos_over_every_token(adapter):
    from eval.lm_eval_adapter import request_seed
    from llada.likelihood import log_likelihood_batch

    text = "The numbers 55, 10, 39 in increasing order are 10, 39, 55."
    tokens = adapter.tok_encode(text)
    chunks = adapter.rolling_chunks(tokens)
    assert [t for _, a in chunks for t in a] == tokens  # every token predicted exactly once
    assert all(len(p) + len(a) <= adapter.max_length for p, a in chunks) and chunks[0][0] == [adapter.prefix_token_id]
    assert chunks[1][0][-8:] == tokens[:8]  # later chunks are conditioned on the text before them
    (total,) = adapter.loglikelihood_rolling([_instance("loglikelihood_rolling", (text,))])
    expected = log_likelihood_batch(adapter.model, chunks, config=adapter.likelihood_config,
                                    seeds=[request_seed(adapter.seed, text, str(k)) for k in range(len(chunks))])
    assert total == pytest.approx(sum(r.estimate for r in expected), abs=1e-4)


def test_generate_until_uses_the_sampler_and_stops(adapter):
    import sampling

    context = "What is 12 + 30?"
    (text,) = adapter.generate_until([_instance("generate_until", (context, {"until": [], "gen_length": 8,
                                                                             "steps": 8, "block_length": 8}))])
    ids = torch.tensor([adapter.tok_encode(context)])
    out = sampling.generate(adapter.model, ids, steps=8, gen_length=8, block_length=8, eot_token_id=adapter.special.eot)
    assert text == adapter.postprocess_generation(out[0, ids.shape[1]:].tolist(), [])
    # stop rules: EOS / EoT tokens end the answer, then the first `until` string
    hello = adapter.tok_encode("ab cd")
    assert adapter.postprocess_generation(hello + [adapter.special.eot] + hello, []) == "ab cd"
    assert adapter.postprocess_generation(hello + [adapter.special.eos], ["c"]) == "ab "
    # batching: a batch of prompts gives one answer per prompt, in order
    reqs = [_instance("generate_until", (c, {"until": ["\n"]}), i) for i, c in enumerate(["a", "What is 1 + 2?", "b c"])]
    assert len(adapter.generate_until(reqs)) == 3


def test_long_contexts_are_cut_from_the_left(adapter):
    m = adapter.max_length
    assert adapter._fit(list(range(2 * m)), [1, 2]) == list(range(2 * m))[-(m - 2):]
    with pytest.raises(ValueError, match="continuation has"):
        adapter._fit([1], list(range(m + 1)))


def test_model_args_are_checked(eval_model_dir):
    from eval.lm_eval_adapter import LLaDAEvalModel

    with pytest.raises(ValueError, match="unknown llada model arg"):
        LLaDAEvalModel(pretrained=str(eval_model_dir), device="cpu", top_p=0.9)
    with pytest.raises(ValueError, match="mc_num=10 is not a multiple"):
        LLaDAEvalModel(pretrained=str(eval_model_dir), device="cpu", mc_num=10, mc_batch_size=4)
    with pytest.raises(ValueError, match="block_length"):
        LLaDAEvalModel(pretrained=str(eval_model_dir), device="cpu", gen_length=10, block_length=4)


def test_cli_forwards_lm_eval_flags():
    from eval.__main__ import TASKS_DIR, lm_eval_argv, local_task_names, requested_tasks

    argv = lm_eval_argv(["--tasks", "llada_arith_mc", "--limit", "2"])
    assert argv[:5] == ["run", "--model", "llada", "--include_path", str(TASKS_DIR)]
    assert lm_eval_argv(["--model", "hf", "--tasks", "x"])[1:3] == ["--include_path", str(TASKS_DIR)]
    assert lm_eval_argv(["ls", "tasks"]) == ["ls", "--include_path", str(TASKS_DIR), "tasks"]
    assert requested_tasks(["--tasks", "a,b", "c", "--limit", "1", "-t", "d"]) == ["a", "b", "c", "d"]
    assert set(TASKS) | {"llada_local"} <= local_task_names()


def test_task_data_files_are_reproducible(tmp_path):
    from eval.tasks.make_data import DATA_DIR, write

    paths = write(tmp_path)
    for name, path in paths.items():
        assert path.read_bytes() == (DATA_DIR / path.name).read_bytes(), name
    rows = [json.loads(line) for line in (DATA_DIR / "arith_mc.jsonl").read_text().splitlines()]
    for r in rows:  # one correct choice, distinct choices
        assert len(set(r["choices"])) == 4 and 0 <= r["label"] < 4
