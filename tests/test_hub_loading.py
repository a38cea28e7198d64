"""Loading by Hub id: the huggingface_hub cache is respected and HF_HUB_OFFLINE is honoured.

No network here, so the test lays the fixture out in the Hub cache layout (models--ORG--NAME/snapshots/REV,
refs/main) exactly as huggingface_hub would after a download, and loads it by id in offline mode.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import textwrap

import pytest


def _fill_cache(cache, repo_id, src):
    folder = cache / ("models--" + repo_id.replace("/", "--"))
    rev = "0123456789abcdef0123456789abcdef01234567"
    snap = folder / "snapshots" / rev
    snap.mkdir(parents=True)
    for name in ("config.json", "generation_config.json", "model.safetensors"):
        shutil.copy(src / name, snap / name)
    (folder / "refs").mkdir()
    (folder / "refs" / "main").write_text(rev)


def _run(code, env):
    return subprocess.run([sys.executable, "-c", textwrap.dedent(code)], env=env, capture_output=True, text=True, timeout=300)


def test_hub_id_from_cache_offline(llada_tiny_path, tmp_path):
    _fill_cache(tmp_path / "hub", "GSAI-ML/LLaDA-tiny-test", llada_tiny_path)
    env = {**os.environ, "HF_HUB_CACHE": str(tmp_path / "hub"), "HF_HUB_OFFLINE": "1"}
    code = """
        import torch, llada
        from transformers import AutoModel
        m = AutoModel.from_pretrained("GSAI-ML/LLaDA-tiny-test", dtype=torch.float32)
        print(type(m).__name__, m.config.n_layers)
        """
    out = _run(code, env)
    assert out.returncode == 0, out.stderr
    assert "LLaDAModelLM 2" in out.stdout


def test_unknown_hub_id_offline_fails_clearly(tmp_path):
    env = {**os.environ, "HF_HUB_CACHE": str(tmp_path / "empty"), "HF_HUB_OFFLINE": "1"}
    code = """
        import llada
        llada.LLaDAModelLM.from_pretrained("GSAI-ML/LLaDA-8B-Instruct")
        """
    out = _run(code, env)
    assert out.returncode != 0
    assert "CheckpointError: GSAI-ML/LLaDA-8B-Instruct: could not be resolved" in out.stderr
    assert "HF_HUB_OFFLINE=1" in out.stderr
