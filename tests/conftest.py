"""Shared test fixtures: paths to the reference fixtures and models loaded from them."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]
FIXTURES = ROOT.parent / "shared" / "fixtures"
LLADA_TINY = FIXTURES / "llada-tiny"
LLADA_V_TINY = FIXTURES / "llada-v-tiny"


@pytest.fixture(scope="session")
def llada_tiny_path() -> Path:
    if not (LLADA_TINY / "config.json").is_file():
        pytest.fail(f"reference fixture missing: {LLADA_TINY} (shared/ must sit beside the repository)")
    return LLADA_TINY


@pytest.fixture(scope="session")
def tiny_expected(llada_tiny_path):
    from safetensors.torch import load_file
    import json

    return load_file(str(llada_tiny_path / "expected.safetensors")), json.loads((llada_tiny_path / "expected.json").read_text())


@pytest.fixture(scope="session")
def tiny_model(llada_tiny_path):
    import llada  # noqa: F401
    from transformers import AutoModel

    return AutoModel.from_pretrained(str(llada_tiny_path), dtype=torch.float32).eval()
