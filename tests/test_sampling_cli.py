"""`llada generate` / `llada chat` end to end, as subprocesses, on the llada-tiny fixture."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

import sampling

ROOT = Path(__file__).resolve().parents[1]


def run_cli(args, stdin=None):
    env = dict(os.environ, PYTHONPATH=str(ROOT), OMP_NUM_THREADS="1", TOKENIZERS_PARALLELISM="false")
    return subprocess.run([sys.executable, "-m", "llada.cli", *args], input=stdin, capture_output=True, text=True,
                          cwd=ROOT, env=env, timeout=300)


def ids_arg(t):
    return ",".join(str(int(v)) for v in t)


def test_generate_prompt_ids_prints_reference_ids(llada_tiny_path, tiny_expected):
    tensors, meta = tiny_expected
    case = meta["cases"]["gen_single_block"]
    prompt = tensors["gen.prompt"][0]
    proc = run_cli(["generate", "--model", str(llada_tiny_path), "--prompt-ids", ids_arg(prompt),
                    "--steps", str(case["steps"]), "--gen-length", str(case["gen_length"]),
                    "--block-length", str(case["block_length"]), "--show-nfe"])
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == ids_arg(tensors["gen_single_block.output"][0, prompt.numel():])
    assert f"nfe {case['steps']}" in proc.stderr and "denoising" in proc.stderr  # progress bar on stderr


def test_generate_main_batch_of_prompt_ids(llada_tiny_path, tiny_expected, capsys):
    from sampling.cli import generate_main

    tensors, meta = tiny_expected
    case = meta["cases"]["gen_batch"]
    batch, batch_mask = tensors["gen_batch.prompt"], tensors["gen_batch.attention_mask"]
    rows = [ids_arg(batch[r][batch_mask[r].bool()]) for r in range(batch.shape[0])]
    code = generate_main(["--model", str(llada_tiny_path), "--prompt-ids", rows[0], "--prompt-ids", rows[1],
                          "--steps", str(case["steps"]), "--gen-length", str(case["gen_length"]),
                          "--block-length", str(case["block_length"]), "--output", "ids", "--include-prompt",
                          "--no-progress"])
    assert code == 0
    lines = capsys.readouterr().out.strip().splitlines()
    P = batch.shape[1]
    for r in range(2):
        assert lines[r] == rows[r] + "," + ids_arg(tensors["gen_batch.output"][r, P:])


@pytest.mark.parametrize("argv, word", [
    (["--steps", "3", "--gen-length", "8", "--block-length", "4"], "number of blocks"),
    (["--remasking", "lowest"], "invalid choice"),
    ([], "--prompt"),
])
def test_generate_main_reports_bad_settings(llada_tiny_path, capsys, argv, word):
    from sampling.cli import generate_main

    prompt = ["--prompt-ids", "1,2"] if argv else []
    with pytest.raises(SystemExit) as err:
        generate_main(["--model", str(llada_tiny_path), *prompt, *argv])
    assert err.value.code == 2 and word in capsys.readouterr().err


def test_text_prompt_without_tokenizer_is_refused(llada_tiny_path, capsys):
    from sampling.cli import generate_main

    with pytest.raises(SystemExit):
        generate_main(["--model", str(llada_tiny_path), "--prompt", "hi", "--steps", "4", "--gen-length", "4",
                       "--block-length", "4"])
    assert "--prompt-ids" in capsys.readouterr().err


@pytest.fixture(scope="module")
def chat_model_dir(tmp_path_factory, llada_tiny_path):
    """The fixture model plus a word-level tokenizer whose special tokens have the real LLaDA ids."""
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    from llada.tokenization import SPECIAL_TOKENS

    config = __import__("json").loads((llada_tiny_path / "config.json").read_text())
    real = {"<|startoftext|>": 126080, "<|endoftext|>": 126081, "<|mdm_mask|>": 126336,
            "<|start_header_id|>": 126346, "<|end_header_id|>": 126347, "<|eot_id|>": 126348}
    assert config["mask_token_id"] == real["<|mdm_mask|>"] and config["eos_token_id"] == real["<|endoftext|>"]
    words = ["user", "assistant", "system", "hello", "again", "friend", "[UNK]"]
    vocab = {w: i for i, w in enumerate(words)}
    taken = set(real.values()) | set(vocab.values())
    vocab.update({f"t{i}": i for i in range(config["embedding_size"]) if i not in taken})
    vocab.update(real)
    inner = Tokenizer(models.WordLevel(vocab=vocab, unk_token="[UNK]"))
    inner.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    tok = PreTrainedTokenizerFast(tokenizer_object=inner, bos_token="<|startoftext|>", eos_token="<|endoftext|>",
                                  pad_token="<|endoftext|>", mask_token="<|mdm_mask|>", unk_token="[UNK]",
                                  additional_special_tokens=[t for t in SPECIAL_TOKENS if t not in
                                                             ("<|startoftext|>", "<|endoftext|>", "<|mdm_mask|>")])
    out = tmp_path_factory.mktemp("chat-model")
    for name in ("config.json", "generation_config.json", "model.safetensors"):
        (out / name).symlink_to(llada_tiny_path / name)
    tok.save_pretrained(out)
    return out


def test_chat_keeps_history_as_reference(chat_model_dir, tiny_model):
    from transformers import AutoTokenizer

    from llada.tokenization import apply_chat_template, next_turn_prompt

    settings = dict(steps=8, gen_length=8, block_length=4)
    proc = run_cli(["chat", "--model", str(chat_model_dir), "--steps", "8", "--gen-length", "8",
                    "--block-length", "4", "--print-prompt-ids", "--no-progress"],
                   stdin="hello friend\nhello again\nexit\nnot read\n")
    assert proc.returncode == 0, proc.stderr
    prompts = [[int(t) for t in line.split(" ", 1)[1].split(",")]
               for line in proc.stderr.splitlines() if line.startswith("prompt_ids ")]
    replies = proc.stdout.strip().splitlines()
    assert len(prompts) == 2 and len(replies) == 2
    tok = AutoTokenizer.from_pretrained(str(chat_model_dir))
    first = apply_chat_template(tok, [{"role": "user", "content": "hello friend"}])
    # BOS, header(user), "hello friend", EoT, header(assistant): the LLaDA template, real special ids
    assert prompts[0] == first == [126080, 126346, 0, 126347, 3, 5, 126348, 126346, 1, 126347]
    # the library's answer to turn 1, then the reference history rule for turn 2
    out1 = sampling.generate(tiny_model, torch.tensor([first]), **settings)
    answer1 = out1[0, len(first):].tolist()
    assert prompts[1] == next_turn_prompt(tok, first, answer1, "hello again", eos_id=126081)
    assert prompts[1][:len(first)] == first and 126081 not in prompts[1]
    assert replies[0] == tok.decode(answer1, skip_special_tokens=True).strip()
