"""Preference collection from verifiable tasks: every pair's chosen answer checks, its rejected one does not."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
import torch
from transformers import AutoTokenizer

import llada
from alignment.collect import collect_pairs
from llada.corpus import check_answer

sys.path.insert(0, str(Path(__file__).resolve().parent))
from helpers import make_tiny_chat_checkpoint  # noqa: E402


def test_pairs_are_verified(tmp_path):
    path = make_tiny_chat_checkpoint(tmp_path / "m", d_model=32, n_layers=1)
    model = llada.LLaDAModelLM.from_pretrained(str(path)).eval()
    tok = AutoTokenizer.from_pretrained(str(path))
    rows = [{"prompt": "what is 2 + 2?", "answer": "4", "family": "addition"},
            {"prompt": "reverse the word cat", "answer": "tac", "family": "reverse"}]
    pairs, stats = collect_pairs(model, tok, rows, samples=3, temperature=1.0, gen_length=8, steps=8, block_length=8,
                                 reference_chosen=True, progress=False)
    assert stats["addition/samples"] == 3 and stats["reverse/samples"] == 3
    assert pairs, stats
    for p in pairs:
        answer = {r["prompt"]: r["answer"] for r in rows}[p["prompt"]]
        assert check_answer(p["chosen"], answer)
        assert not check_answer(p["rejected"], answer)
        assert p["chosen_source"] in ("sample", "reference")
    # a random model essentially never answers right: without the reference answer no pair has a chosen side
    pairs, _ = collect_pairs(model, tok, rows, samples=3, temperature=1.0, gen_length=8, steps=8, block_length=8,
                             reference_chosen=False, progress=False)
    assert all(p["chosen_source"] == "sample" for p in pairs)


def test_several_pairs_per_prompt_use_distinct_wrong_answers(tmp_path):
    path = make_tiny_chat_checkpoint(tmp_path / "m", d_model=32, n_layers=1)
    model = llada.LLaDAModelLM.from_pretrained(str(path)).eval()
    tok = AutoTokenizer.from_pretrained(str(path))
    rows = [{"prompt": "what is 2 + 2?", "answer": "4", "family": "addition"}]
    pairs, _ = collect_pairs(model, tok, rows, samples=6, temperature=1.0, gen_length=8, steps=8, block_length=8,
                             reference_chosen=True, progress=False, pairs_per_prompt=3)
    assert 1 <= len(pairs) <= 3
    assert len({p["rejected"] for p in pairs}) == len(pairs)  # distinct rejected answers
    assert all(check_answer(p["chosen"], "4") and not check_answer(p["rejected"], "4") for p in pairs)
    with pytest.raises(ValueError, match="pairs_per_prompt"):
        collect_pairs(model, tok, rows, samples=2, temperature=1.0, gen_length=8, steps=8, block_length=8,
                      progress=False, pairs_per_prompt=0)


def test_training_prompts_offset_gives_fresh_prompts():
    from alignment.collect import training_prompts

    first = training_prompts(["compare", "parity"], 20)
    later = training_prompts(["compare", "parity"], 20, offset=10)
    assert [r["family"] for r in first].count("compare") == 10 == [r["family"] for r in later].count("compare")
    by_family = lambda rows, f: [r["prompt"] for r in rows if r["family"] == f]  # noqa: E731
    assert by_family(later, "compare") == by_family(training_prompts(["compare"], 20), "compare")[10:20]
    assert not set(by_family(first, "compare")) & set(by_family(later, "compare"))
    with pytest.raises(ValueError, match="no training prompts left"):
        training_prompts(["compare"], 4, offset=10 ** 6)
