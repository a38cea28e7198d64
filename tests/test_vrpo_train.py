"""The VRPO trainer through the real `accelerate launch`: it runs, resumes exactly, and precomputing the
reference ELBOs (same draws) gives the same weights as scoring the reference live. Bad data is refused."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from alignment.data import tokenize_preferences
from llada.data import DataError, read_rows

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))
from helpers import make_tiny_chat_checkpoint  # noqa: E402

PAIRS = [
    {"prompt": "what is 2 + 2?", "chosen": "the answer is 4.", "rejected": "the answer is 5."},
    {"prompt": [{"role": "user", "content": "reverse the word cat"}], "chosen": "tac",
     "rejected": {"role": "assistant", "content": "cat"}},
    {"prompt": "hello there", "chosen": "hello", "rejected": "what?"},
    {"prompt": "what is 2 + 2?", "chosen": "4", "rejected": "2"},
]


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    root = tmp_path_factory.mktemp("vrpo")
    model = make_tiny_chat_checkpoint(root / "sft", d_model=32, n_layers=1)
    data = root / "pairs.jsonl"
    data.write_text("".join(json.dumps(p) + "\n" for p in PAIRS))
    recipe = root / "vrpo.yaml"
    recipe.write_text(
        f"model_name_or_path: {model}\ntrain_data: [{data}]\nmicro_batch_size: 2\nmax_steps: 4\nlr: 1.0e-3\n"
        f"warmup_steps: 1\nbudget: 2\nlogging_steps: 1\nlog_with: null\nnum_threads: 1\nseq_len: 64\n"
    )
    return root, recipe


def _launch(recipe: Path, *overrides: str) -> subprocess.CompletedProcess:
    cmd = [sys.executable, "-m", "accelerate.commands.launch", "--config_file", str(ROOT / "configs/accelerate/cpu.yaml"),
           "-m", "alignment.train", str(recipe), *overrides]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    out = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
    return out


def _weights(folder: Path) -> dict:
    return load_file(str(folder / "model.safetensors"))


def test_vrpo_runs_resumes_and_precomputes(setup):
    root, recipe = setup
    full = _launch(recipe, f"output_dir={root / 'full'}", "save_steps=2", "save_total_limit=0")
    log = full.stdout + full.stderr
    assert "reward_accuracy" in log and "score_variance" in log
    final = _weights(root / "full" / "final")
    start = _weights(root / "sft")
    assert any(not torch.equal(final[k], start[k]) for k in final)  # the policy moved
    summary = json.loads((root / "full" / "final" / "training_summary.json").read_text())
    assert summary["steps"] == 4 and summary["task"] == "vrpo"

    # resume: a run that only has the step-2 checkpoint continues to the same final weights
    resumed = root / "resumed"
    resumed.mkdir()
    shutil.copytree(root / "full" / "checkpoint-0000002", resumed / "checkpoint-0000002")
    out = _launch(recipe, f"output_dir={resumed}")
    assert "resumed from" in out.stdout + out.stderr
    again = _weights(resumed / "final")
    for k in final:
        assert torch.allclose(final[k], again[k], atol=1e-6), k

    # precomputed reference ELBOs use the very same draws: the same training trajectory
    pre = _launch(recipe, f"output_dir={root / 'pre'}", "precompute_reference=true")
    assert "precomputed 8 reference ELBO pairs" in pre.stdout + pre.stderr
    pre_w = _weights(root / "pre" / "final")
    for k in final:
        assert torch.allclose(final[k], pre_w[k], atol=1e-6), k


def test_bad_preference_rows(tmp_path, setup):
    from transformers import AutoTokenizer

    root, _ = setup
    tok = AutoTokenizer.from_pretrained(str(root / "sft"))
    bad = tmp_path / "bad.jsonl"
    bad.write_text(json.dumps(PAIRS[0]) + "\n" + json.dumps({"prompt": "x", "chosen": "same", "rejected": "same"}) + "\n")
    with pytest.raises(DataError, match=r"bad\.jsonl row 2: the chosen and rejected responses are identical"):
        tokenize_preferences(read_rows([str(bad)]), tok, max_length=64)
    bad.write_text(json.dumps({"prompt": "x", "chosen": "", "rejected": "y"}) + "\n")
    with pytest.raises(DataError, match="empty response"):
        tokenize_preferences(read_rows([str(bad)]), tok, max_length=64)
    bad.write_text(json.dumps({"prompt": "x", "chosen": "y"}) + "\n")
    with pytest.raises(DataError, match="missing field"):
        tokenize_preferences(read_rows([str(bad)]), tok, max_length=64)
    pairs = tokenize_preferences(read_rows([str(bad)]), tok, max_length=64, bad_rows="skip")
    assert pairs == []
