"""The ELBO log-likelihood estimator (LLaDA Eq. 6): exact enumeration vs the reference fixture, Monte Carlo
calibration of the estimate and of its standard error, batching, adaptive mode, shared draws, CFG, errors."""

from __future__ import annotations

import math

import pytest
import torch

import llada
from llada import LLaDAConfig, LLaDAModelLM
from llada.likelihood import (
    LikelihoodEstimate,
    draw_masks,
    exact_masks,
    exact_minibatch_variance,
    log_likelihood,
    log_likelihood_batch,
    score_draws,
    stratified_num_masked,
)


@pytest.fixture(scope="module")
def small_model():
    """A tiny random LLaDA with a 64-token vocabulary and large weights (so log-probs vary across masks)."""
    torch.manual_seed(0)
    cfg = LLaDAConfig(d_model=32, n_heads=4, n_layers=2, mlp_hidden_size=64, vocab_size=64, embedding_size=64,
                      mask_token_id=63, eos_token_id=62, pad_token_id=62, max_sequence_length=48, init_std=0.3)
    return LLaDAModelLM(cfg).eval()


def _request(seed, prompt_len, answer_len, vocab=60):
    g = torch.Generator().manual_seed(seed)
    return torch.randint(0, vocab, (prompt_len,), generator=g), torch.randint(0, vocab, (answer_len,), generator=g)


# ------------------------------------------------------------------------------------------- fixture


@pytest.mark.parametrize("case", ["elbo_a", "elbo_b"])
def test_exact_matches_reference_fixture(tiny_model, tiny_expected, case):
    tensors, expected = tiny_expected
    result = log_likelihood(tiny_model, tensors[f"{case}.prompt"], tensors[f"{case}.answer"], exact=True)
    assert result.exact and result.std_error == 0.0
    assert result.num_samples == 2 ** tensors[f"{case}.answer"].numel() - 1
    assert abs(result.estimate - expected["cases"][case]["log_likelihood_exact"]) < 1e-4
    if case == "elbo_a":  # lists work as well as tensors, and the result unpacks
        est, se = llada.log_likelihood(tiny_model, tensors[f"{case}.prompt"].tolist(),
                                       tensors[f"{case}.answer"].tolist(), exact=True, rows_per_forward=32)
        assert est == pytest.approx(result.estimate, abs=1e-5) and se == 0.0


@pytest.mark.parametrize("case", ["elbo_a", "elbo_b"])
def test_monte_carlo_within_three_standard_errors_of_fixture(tiny_model, tiny_expected, case):
    tensors, expected = tiny_expected
    truth = expected["cases"][case]["log_likelihood_exact"]
    for seed in (0, 1):
        g = torch.Generator().manual_seed(seed)
        est, se = log_likelihood(tiny_model, tensors[f"{case}.prompt"], tensors[f"{case}.answer"], generator=g,
                                 rows_per_forward=64)
        assert 0 < se < 2.0
        assert abs(est - truth) <= 3 * se, (seed, est, truth, se)


# ------------------------------------------------------------------------------------------- the draws


@pytest.mark.parametrize("L,b", [(5, 16), (7, 16), (3, 4), (16, 16), (6, 4)])
def test_stratified_counts_are_uniform_for_every_row(L, b):
    table = torch.stack([stratified_num_masked(L, b, offset=k) for k in range(1, L + 1)])  # (k, j)
    assert int(table.min()) >= 1 and int(table.max()) <= L
    for j in range(b):  # over the uniform offset k, every row's l is uniform on 1..L (unbiased rows)
        assert sorted(table[:, j].tolist()) == list(range(1, L + 1))
    for k in range(L):  # and each minibatch spreads its rows evenly over 1..L
        counts = torch.bincount(table[k], minlength=L + 1)[1:]
        assert int(counts.max()) - int(counts.min()) <= 1


def test_draw_masks_masks_exactly_l_positions():
    g = torch.Generator().manual_seed(3)
    d = draw_masks(9, mc_num=24, batch_size=8, generator=g)
    assert d.is_masked.shape == (3, 8, 9) and d.mc_num == 24
    assert torch.equal(d.is_masked.sum(-1), d.num_masked)
    assert torch.allclose(d.weights(), 9 / d.num_masked.double() / 8)


def test_exact_mask_weights_sum_to_the_expectation_of_l_over_L():
    masks, w = exact_masks(6)
    assert masks.shape == (63, 6) and len({tuple(m.tolist()) for m in masks}) == 63
    # sum_S w_S * |S| = E_l[(L/l) l] / L ... = 1 for every L: the weights of a constant per-token log-prob
    assert float((w * masks.sum(1)).sum()) == pytest.approx(1.0 * 6 / 6 * 6, rel=1e-12)


# ------------------------------------------------------------------------------------------- calibration


def test_standard_error_matches_spread_of_repeated_estimates(small_model):
    prompt, answer = _request(1, 4, 5)
    exact = log_likelihood(small_model, prompt, answer, exact=True).estimate
    b, mc, reps = 4, 16, 200
    mean, var = exact_minibatch_variance(small_model, prompt, answer, batch_size=b)
    assert mean == pytest.approx(exact, abs=1e-5)  # the stratified estimator is unbiased
    true_se = math.sqrt(var / (mc // b))

    g = torch.Generator().manual_seed(1234)
    results = log_likelihood_batch(small_model, [(prompt, answer)] * reps, mc_num=mc, batch_size=b, generator=g,
                                   rows_per_forward=512)
    est = torch.tensor([r.estimate for r in results], dtype=torch.float64)
    se = torch.tensor([r.std_error for r in results], dtype=torch.float64)
    empirical = float(est.std())
    reported = float(se.pow(2).mean().sqrt())
    assert abs(reported / empirical - 1) < 0.2, (reported, empirical)
    assert abs(reported / true_se - 1) < 0.1, (reported, true_se)
    assert abs(empirical / true_se - 1) < 0.2, (empirical, true_se)
    assert abs(float(est.mean()) - exact) < 3 * true_se / math.sqrt(reps)
    assert float(((est - exact).abs() <= 3 * se).double().mean()) > 0.85  # t with 3 dof: 94% expected


# ------------------------------------------------------------------------------------------- batching


def test_batch_equals_one_by_one(small_model):
    requests = [_request(10, 3, 4), _request(11, 7, 6), _request(12, 1, 2), _request(13, 5, 1), _request(14, 2, 9)]
    for kwargs in (dict(mc_num=16, batch_size=4), dict(mc_num=12, batch_size=4, cfg_scale=0.7), dict(exact="auto")):
        g = torch.Generator().manual_seed(5)
        batched = log_likelihood_batch(small_model, requests, generator=g, rows_per_forward=7, **kwargs)
        g = torch.Generator().manual_seed(5)
        single = [log_likelihood(small_model, p, a, generator=g, **kwargs) for p, a in requests]
        for b_res, s_res in zip(batched, single):
            assert b_res.estimate == pytest.approx(s_res.estimate, abs=1e-5)
            assert b_res.std_error == pytest.approx(s_res.std_error, abs=1e-5)
            assert b_res.num_samples == s_res.num_samples and b_res.exact == s_res.exact


def test_one_token_answer_is_deterministic(small_model):
    prompt, answer = _request(20, 5, 1)
    r = log_likelihood(small_model, prompt, answer, mc_num=32, batch_size=16)
    assert r.exact and r.std_error == 0.0 and r.num_samples == 1
    ids = torch.cat([prompt, torch.tensor([small_model.config.mask_token_id])])[None]
    with torch.no_grad():
        logp = torch.log_softmax(small_model(ids).logits[0, -1].float(), -1)[answer[0]]
    assert r.estimate == pytest.approx(float(logp), abs=1e-5)


def test_classifier_free_guidance_combines_conditional_and_unconditional(small_model):
    prompt, answer = _request(21, 4, 1)
    w = 1.5
    mask = small_model.config.mask_token_id
    cond = torch.cat([prompt, torch.tensor([mask])])[None]
    uncond = torch.full_like(cond, mask)
    with torch.no_grad():
        c, u = small_model(cond).logits[0, -1], small_model(uncond).logits[0, -1]
    expected = torch.log_softmax((u + (w + 1) * (c - u)).float(), -1)[answer[0]]
    assert log_likelihood(small_model, prompt, answer, cfg_scale=w).estimate == pytest.approx(float(expected), abs=1e-5)


def test_exact_auto_enumerates_short_answers_only(small_model):
    prompt, answer = _request(22, 3, 4)
    assert log_likelihood(small_model, prompt, answer, mc_num=16, batch_size=4, exact="auto").exact  # 15 <= 16
    assert not log_likelihood(small_model, prompt, answer, mc_num=8, batch_size=4, exact="auto").exact  # 15 > 8


# ------------------------------------------------------------------------------------------- adaptive


def test_adaptive_stops_once_standard_error_is_below_tolerance(small_model):
    prompt, answer = _request(30, 4, 6)
    _, var = exact_minibatch_variance(small_model, prompt, answer, batch_size=4)
    tol = math.sqrt(var / 12)  # about 12 minibatches needed
    g = torch.Generator().manual_seed(0)
    results = log_likelihood_batch(small_model, [(prompt, answer)] * 6, mc_num=400, batch_size=4, tolerance=tol,
                                   generator=g, rows_per_forward=64)
    for r in results:
        assert r.std_error < tol
        assert 4 * 4 <= r.num_samples < 400 and r.num_samples % 4 == 0
    # an unreachable tolerance stops at the mc_num budget
    r = log_likelihood(small_model, prompt, answer, mc_num=32, batch_size=4, tolerance=1e-9)
    assert r.num_samples == 32 and r.std_error > 1e-9


def test_standard_error_upper_bound_uses_the_chi_square_quantile():
    from llada.likelihood import standard_error_upper_bound

    # sqrt(k / chi2_{0.1}(k)) with chi2_{0.1}(3) = 0.5844, chi2_{0.1}(15) = 8.5468, chi2_{0.1}(63) = 49.11
    assert standard_error_upper_bound(1.0, 4) == pytest.approx(math.sqrt(3 / 0.5844), rel=0.02)
    assert standard_error_upper_bound(2.0, 16) == pytest.approx(2 * math.sqrt(15 / 8.5468), rel=0.01)
    assert standard_error_upper_bound(1.0, 64) == pytest.approx(math.sqrt(63 / 49.11), rel=0.01)
    assert standard_error_upper_bound(1.0, 1) == float("inf")


# ------------------------------------------------------------------------------------------- shared draws (VRPO)


def test_shared_draws_correlate_two_models_and_are_differentiable(small_model):
    prompt, answer = _request(40, 4, 6)
    other = LLaDAModelLM(small_model.config).eval()
    other.load_state_dict(small_model.state_dict())
    noise = torch.Generator().manual_seed(0)
    with torch.no_grad():  # a nearby model, as a policy is near its reference in VRPO
        for p in other.parameters():
            p.add_(0.005 * torch.randn(p.shape, generator=noise))
    g = torch.Generator().manual_seed(7)
    d1 = draw_masks(6, mc_num=80, batch_size=4, generator=g)  # 20 minibatches
    d2 = draw_masks(6, mc_num=80, batch_size=4, generator=g)
    with torch.no_grad():
        a = score_draws(small_model, prompt, answer, d1, rows_per_forward=80)
        shared = a - score_draws(other, prompt, answer, d1, rows_per_forward=80)
        independent = a - score_draws(other, prompt, answer, d2, rows_per_forward=80)
    assert float(shared.var()) < 0.1 * float(independent.var()), (shared.var(), independent.var())

    # same draws, same model: identical values; with gradients on, the values are differentiable
    d = draw_masks(6, mc_num=8, batch_size=4, generator=g)
    values = score_draws(small_model, prompt, answer, d)
    assert values.shape == (2,) and values.requires_grad
    values.mean().backward()
    grad = small_model.get_input_embeddings().weight.grad
    assert grad is not None and float(grad.abs().sum()) > 0
    small_model.zero_grad(set_to_none=True)
    with torch.no_grad():
        assert torch.allclose(score_draws(small_model, prompt, answer, d), values.detach())


# ------------------------------------------------------------------------------------------- errors


def test_errors_name_the_bad_input(small_model):
    prompt, answer = _request(50, 4, 3)
    with pytest.raises(ValueError, match="answer_ids is empty"):
        log_likelihood(small_model, prompt, [])
    with pytest.raises(ValueError, match="max_sequence_length=48"):
        log_likelihood(small_model, torch.zeros(46, dtype=torch.long), answer)
    with pytest.raises(ValueError, match="mc_num=20 is not a multiple of batch_size=16"):
        log_likelihood(small_model, prompt, answer, mc_num=20)
    with pytest.raises(ValueError, match="exact=True enumerates"):
        log_likelihood(small_model, prompt, torch.zeros(17, dtype=torch.long), exact=True)
    with pytest.raises(ValueError, match="cfg_scale"):
        log_likelihood(small_model, prompt, answer, cfg_scale=-1.0)
    with pytest.raises(ValueError, match="1-D"):
        log_likelihood(small_model, prompt[None], answer)
    with pytest.raises(ValueError, match=r"request 1"):
        log_likelihood_batch(small_model, [(prompt, answer), (prompt, [])])
    with pytest.raises(ValueError, match="tolerance"):
        log_likelihood(small_model, prompt, answer, tolerance=0.0)


def test_result_is_a_documented_dataclass():
    r = LikelihoodEstimate(-3.5, 0.25, 128)
    est, se = r
    assert (est, se) == (-3.5, 0.25) and float(r) == -3.5 and not r.exact
