"""Variance diagnostics: a larger budget and antithetic sampling reduce the score variance as the LLaDA 1.5
theory says, on a small model whose policy is a slightly perturbed copy of the reference. (The finer order
between allocations of the same budget, 8x1 < 2x2 < 1x4, depends on the model's V_t / V_yt split and is
measured on the embedded model in bench/RESULTS.md.)"""

from __future__ import annotations

import copy
import sys
from pathlib import Path

import pytest
import torch

import llada
from alignment.variance import VarianceSetting, measure_variance, to_markdown

sys.path.insert(0, str(Path(__file__).resolve().parent))
from helpers import make_tiny_chat_checkpoint  # noqa: E402


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    path = make_tiny_chat_checkpoint(tmp_path_factory.mktemp("var"), d_model=32, n_layers=1)
    reference = llada.LLaDAModelLM.from_pretrained(str(path)).eval()
    policy = copy.deepcopy(reference)
    g = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for p in policy.parameters():
            p.add_(0.002 * torch.randn(p.shape, generator=g))
    return policy, reference


def _pairs():
    g = torch.Generator().manual_seed(1)
    return [(torch.randint(0, 300, (6,), generator=g).tolist(), torch.randint(0, 300, (12,), generator=g).tolist(),
             torch.randint(0, 300, (12,), generator=g).tolist()) for _ in range(3)]


def test_setting_parse():
    assert VarianceSetting.parse("4x1") == VarianceSetting(4, 1, True)
    assert VarianceSetting.parse("2x2:noanti") == VarianceSetting(2, 2, False)
    with pytest.raises(ValueError, match="expected N_TxN_YT"):
        VarianceSetting.parse("four")


def test_policy_equal_reference_has_zero_antithetic_variance(models):
    _, reference = models
    rows = measure_variance(reference, copy.deepcopy(reference), _pairs()[:1], [VarianceSetting(2, 1)], repeats=4,
                            with_grad=False, progress=False)
    assert rows[0].var_score == 0.0 and rows[0].mean_score == 0.0


def test_variance_orders_as_theory(models):
    policy, reference = models
    settings = [VarianceSetting(8, 1), VarianceSetting(1, 1), VarianceSetting(8, 1, False)]
    rows = {r.setting.label: r for r in measure_variance(policy, reference, _pairs()[:2], settings, repeats=16,
                                                         with_grad=True, progress=False)}
    table = to_markdown(list(rows.values()))
    # n = 8 samples: about 8x less variance than one sample
    assert 3 * rows["8x1"].var_score < rows["1x1"].var_score, table
    assert rows["8x1"].var_grad < rows["1x1"].var_grad, table
    # shared draws: the policy-reference ELBO differences are far less noisy than with independent draws
    assert rows["8x1 (no antithetic)"].var_score > 10 * rows["8x1"].var_score, table
