"""VRPO: the loss by hand, antithetic zero score, unbiasedness against the exact ELBO, gradient flow, errors."""

from __future__ import annotations

import copy
import math

import pytest
import torch

import llada
from alignment.vrpo import (
    VRPOConfig,
    allocate_budget,
    check_compatible,
    draw_elbo_masks,
    preference_elbos,
    vrpo_loss,
    vrpo_objective,
    vrpo_score,
)
from llada.likelihood import score_draws


@pytest.fixture(scope="module")
def pair(tiny_expected):
    exp, _ = tiny_expected
    prompt = exp["elbo_a.prompt"].tolist()
    chosen = exp["elbo_a.answer"].tolist()
    rejected = exp["elbo_b.answer"].tolist()[:4]
    return prompt, chosen, rejected


def test_loss_against_hand_computed_values():
    s = vrpo_score(torch.tensor([-10.0, -5.0]), torch.tensor([-12.0, -5.0]), torch.tensor([-20.0, -3.0]),
                   torch.tensor([-19.0, -4.0]), beta=0.2)
    # 0.2 * ((-10 + 12) - (-20 + 19)) = 0.6 ;  0.2 * ((-5 + 5) - (-3 + 4)) = -0.2
    assert torch.allclose(s, torch.tensor([0.6, -0.2]))
    expected = (math.log1p(math.exp(-0.6)) + math.log1p(math.exp(0.2))) / 2
    assert abs(vrpo_loss(s).item() - expected) < 1e-6
    # stable for large scores
    assert torch.isfinite(vrpo_loss(torch.tensor([-1e4, 1e4])))


def test_budget_allocation():
    assert allocate_budget(8) == (8, 1)
    assert allocate_budget(8, optimal=False) == (1, 8)
    assert allocate_budget(8, n_t=2) == (2, 4)
    assert allocate_budget(4, n_yt=4) == (1, 4)
    with pytest.raises(ValueError, match="not divisible"):
        allocate_budget(8, n_t=3)
    cfg = VRPOConfig(budget=4, n_t=2, n_yt=2)
    assert (cfg.n_t, cfg.n_yt, cfg.budget) == (2, 2, 4)


def test_draws_shape_and_allocation():
    g = torch.Generator().manual_seed(0)
    d = draw_elbo_masks(6, n_t=2, n_yt=3, generator=g)
    assert d.is_masked.shape == (1, 6, 6)
    l = d.num_masked[0]
    assert torch.equal(l[:3], l[0].repeat(3)) and torch.equal(l[3:], l[3].repeat(3))
    assert torch.equal(d.is_masked[0].sum(1), l)


def test_antithetic_score_is_exactly_zero_when_policy_is_reference(tiny_model, pair):
    twin = copy.deepcopy(tiny_model)
    cfg = VRPOConfig(budget=4, antithetic=True)
    for seed in range(3):
        g = torch.Generator().manual_seed(seed)
        e = preference_elbos(tiny_model, twin, [pair, pair], cfg, generator=g)
        s = vrpo_score(e.policy_chosen, e.reference_chosen, e.policy_rejected, e.reference_rejected, cfg.beta)
        assert torch.equal(s, torch.zeros_like(s))
    # without antithetic sampling the same models give non-zero scores
    g = torch.Generator().manual_seed(0)
    e = preference_elbos(tiny_model, twin, [pair], VRPOConfig(budget=4, antithetic=False), generator=g)
    assert (e.policy_chosen - e.reference_chosen).abs().item() > 0


@pytest.mark.parametrize("n_t,n_yt", [(1, 1), (2, 2)])
def test_elbo_estimate_is_unbiased(tiny_model, tiny_expected, n_t, n_yt):
    exp, meta = tiny_expected
    prompt, answer = exp["elbo_a.prompt"], exp["elbo_a.answer"]
    exact = meta["cases"]["elbo_a"]["log_likelihood_exact"]
    g = torch.Generator().manual_seed(123)
    d = draw_elbo_masks(answer.numel(), n_t, n_yt, num_estimates=200, generator=g)
    with torch.no_grad():
        v = score_draws(tiny_model, prompt, answer, d, rows_per_forward=64)  # 200 independent estimates
    assert v.shape == (200,)
    se = v.std() / math.sqrt(len(v))
    assert abs(v.mean().item() - exact) < 4 * se.item(), (v.mean().item(), exact, se.item())


def test_gradients_flow_only_into_policy(tiny_model, pair, llada_tiny_path):
    policy = llada.LLaDAModelLM.from_pretrained(str(llada_tiny_path), dtype=torch.float32).train()
    reference = tiny_model
    out = vrpo_objective(policy, reference, [pair], VRPOConfig(budget=2), generator=torch.Generator().manual_seed(0))
    out.loss.backward()
    assert all(p.grad is None for p in reference.parameters())
    grads = [p.grad for p in policy.parameters()]
    assert all(g is not None for g in grads)
    assert policy.model.transformer.blocks[0].up_proj.weight.grad.abs().sum() > 0
    assert out.sft_loss is not None and torch.isfinite(out.loss)


def test_bad_pairs_and_models(tiny_model, pair):
    prompt, chosen, _ = pair
    cfg = VRPOConfig(budget=1)
    with pytest.raises(ValueError, match="pair 0: the chosen and rejected responses are identical"):
        preference_elbos(tiny_model, tiny_model, [(prompt, chosen, chosen)], cfg)
    with pytest.raises(ValueError, match="pair 1: empty rejected"):
        preference_elbos(tiny_model, tiny_model, [pair, (prompt, chosen, [])], cfg)
    other = llada.LLaDAModelLM(llada.LLaDAConfig(d_model=32, n_heads=4, n_layers=1, mlp_hidden_size=64,
                                                 vocab_size=1000, embedding_size=1000, mask_token_id=999,
                                                 eos_token_id=998, pad_token_id=998))
    with pytest.raises(ValueError, match="vocabulary"):
        check_compatible(tiny_model, other)
