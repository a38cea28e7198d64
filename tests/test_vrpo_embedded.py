"""The shipped VRPO model (llada/embedded/llada-mini-vrpo) is the `vrpo` default and reproduces the compare accuracy
its model card reports (bench/vrpo.py wrote the card from the same evaluation)."""

from __future__ import annotations

import importlib.util
import re
from pathlib import Path

import torch

import llada
from llada.defaults import resolve_model

ROOT = Path(__file__).resolve().parents[1]


def _bench_module(name: str):
    """A bench/ script as a module (bench/ is not put on sys.path: its sampling.py would shadow the package)."""
    spec = importlib.util.spec_from_file_location(f"bench_{name}", ROOT / "bench" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _card_counts(card: str, model: str) -> dict[str, int]:
    """{family: correct} of one model's row in the card's held-out table."""
    lines = card.splitlines()
    header = next(line for line in lines if line.startswith("| model |"))
    families = [c.strip() for c in header.strip("|").split("|")][1:-1]
    row = next(line for line in lines if line.startswith(f"| {model} |"))
    cells = [c.strip() for c in row.strip("|").split("|")][1:-1]
    return {f: int(re.fullmatch(r"(\d+)/\d+", c).group(1)) for f, c in zip(families, cells)}


def test_shipped_vrpo_model_reproduces_its_card():
    from transformers import AutoTokenizer

    from llada.corpus import CorpusConfig, heldout_split

    path = Path(resolve_model(None, "vrpo"))
    assert path == ROOT / "llada" / "embedded" / "llada-mini-vrpo"
    card = (path / "README.md").read_text()
    want = _card_counts(card, "vrpo")
    assert want["compare"] > _card_counts(card, "sft")["compare"]  # the card claims a gain; check it is this model's
    model = llada.LLaDAModelLM.from_pretrained(str(path), dtype=torch.float32).eval()
    tok = AutoTokenizer.from_pretrained(str(path))
    rows = [r for r in heldout_split(CorpusConfig()) if r["family"] == "compare"]
    got = _bench_module("embedded_accuracy").evaluate(model, tok, rows, gen_length=32, steps=32, block_length=32, batch_size=32, progress=False)
    assert got["per_family"]["compare"]["correct"] == want["compare"]
