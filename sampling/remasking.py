"""Candidates, confidences and the choice of which masked positions to commit at a step.

At every step of the reverse process the mask predictor gives logits l (one row per position). The
sampler draws a candidate token x0 for every masked position (`sample_candidates`), scores every
candidate with a *remasking rule* (the higher the score, the earlier it is committed), and commits
some of them (`select_top_k`, `select_by_threshold`, `select_by_factor`). Every other masked position
stays masked ("remasked"). Decoded tokens are never remasked.

Remasking rules (one function each; `REMASKING_RULES` maps the names the sampler accepts):

- `low_confidence`   LLaDA's rule: score = p(x0) = softmax(l)[x0]
- `random`           LLaDA's baseline: score ~ U(0, 1)
- `topk_margin`      Dream: score = p_(1) - p_(2), the gap between the two most likely tokens
- `entropy`          Dream: score = -H(p) = sum_v p_v log p_v

Probabilities are those of the (guided, suppressed) logits at temperature 1, as in the reference,
computed in float32 (the reference uses the model's dtype; identical for float32 models).
"""

from __future__ import annotations

from typing import Callable, Optional

import torch
import torch.nn.functional as F


def gumbel_max_sample(
    logits: torch.Tensor, temperature: float, generator: Optional[torch.Generator] = None
) -> torch.Tensor:
    """Sample token ids from softmax(logits / T) with the Gumbel-max trick in float64.

    The reference computes argmax_v exp(l_v) / (-log U_v)^T with U_v ~ U(0, 1) in float64. Taking the
    log (a monotone map) gives the same argmax without overflow:

        x0 = argmax_v [ l_v - T log(-log U_v) ] = argmax_v [ l_v / T + g_v ],  g_v ~ Gumbel(0, 1),

    i.e. an exact sample of softmax(l / T). At T = 0 this is plain argmax (greedy).

    Args:
        logits: (..., V).
        temperature: T >= 0.
        generator: optional torch.Generator for reproducible draws.
    Returns:
        (...) int64 token ids.
    """
    if temperature < 0:
        raise ValueError(f"gumbel_max_sample: temperature must be >= 0, got {temperature}")
    if temperature == 0:
        return logits.argmax(dim=-1)
    logits64 = logits.to(torch.float64)
    uniform = torch.rand(logits64.shape, dtype=torch.float64, device=logits.device, generator=generator)
    scores = logits64 - temperature * torch.log(-torch.log(uniform))
    return scores.argmax(dim=-1)


def _probabilities(logits: torch.Tensor) -> torch.Tensor:
    return F.softmax(logits if logits.dtype in (torch.float32, torch.float64) else logits.float(), dim=-1)


def low_confidence_remasking(logits: torch.Tensor, candidates: torch.Tensor, **_) -> torch.Tensor:
    """LLaDA's low-confidence remasking score: the model probability of each candidate,

        c_i = p_theta(x0_i | x_t)_i = softmax(l_i)[x0_i].

    The positions with the highest c are committed; the others are remasked.
    """
    p = _probabilities(logits)
    return torch.gather(p, -1, candidates.unsqueeze(-1)).squeeze(-1)


def random_remasking(
    logits: torch.Tensor, candidates: torch.Tensor, generator: Optional[torch.Generator] = None, **_
) -> torch.Tensor:
    """LLaDA's random remasking: c_i ~ U(0, 1) independently, so a uniform subset is committed."""
    return torch.rand(candidates.shape, device=candidates.device, generator=generator)


def topk_margin_remasking(logits: torch.Tensor, candidates: torch.Tensor, **_) -> torch.Tensor:
    """Dream's margin confidence: c_i = p_(1) - p_(2), the probability gap between the two most likely tokens."""
    top2 = _probabilities(logits).topk(2, dim=-1).values
    return top2[..., 0] - top2[..., 1]


def entropy_remasking(logits: torch.Tensor, candidates: torch.Tensor, **_) -> torch.Tensor:
    """Dream's entropy confidence: c_i = -H(p_i) = sum_v p_v log p_v (0 for a certain prediction)."""
    logp = F.log_softmax(logits if logits.dtype in (torch.float32, torch.float64) else logits.float(), dim=-1)
    return (logp.exp() * logp).nan_to_num(0.0).sum(-1)


#: name -> rule(logits, candidates, generator=None) -> score (same shape as candidates)
REMASKING_RULES: dict[str, Callable[..., torch.Tensor]] = {
    "low_confidence": low_confidence_remasking,
    "random": random_remasking,
    "topk_margin": topk_margin_remasking,
    "entropy": entropy_remasking,
}


def suppress_eos_eot_confidence(
    confidence: torch.Tensor, candidates: torch.Tensor, token_ids: list[int]
) -> torch.Tensor:
    """EOS / EoT confidence suppression (LLaDA 1.5): a position whose candidate is EOS or EoT gets the
    lowest possible score,

        c_i <- c_min   if x0_i in {EOS, EoT},

    so it is committed only when nothing else in the block is left ("zero confidence" for the
    probability-valued rules; the float minimum here, so it also ranks last for the entropy rule whose
    scores are negative). The candidate itself is unchanged. Unlike the reference code, this works at
    every temperature and does not renormalise the other positions' probabilities.
    """
    if not token_ids:
        return confidence
    hit = torch.isin(candidates, torch.as_tensor(token_ids, device=candidates.device))
    return confidence.masked_fill(hit, torch.finfo(confidence.dtype).min)


def select_top_k(confidence: torch.Tensor, k: torch.Tensor) -> torch.Tensor:
    """Commit the k_b highest-scoring positions of each row b (LLaDA: the `num_transfer_tokens` schedule).

    Args:
        confidence: (B, W) scores, -inf where a position is not a candidate.
        k: (B,) counts (not more than the candidates of each row).
    Returns:
        (B, W) bool, True where a position is committed.
    """
    chosen = torch.zeros_like(confidence, dtype=torch.bool)
    k_list = k.tolist()
    kmax = max(k_list) if k_list else 0
    if kmax == 0:
        return chosen
    if len(set(k_list)) == 1:
        idx = torch.topk(confidence, k=kmax, dim=-1).indices
        chosen.scatter_(1, idx, True)
        return chosen
    for row, kb in enumerate(k_list):
        if kb > 0:
            chosen[row, torch.topk(confidence[row], k=kb).indices] = True
    return chosen


def threshold_count(confidence: torch.Tensor, threshold: float) -> torch.Tensor:
    """Fast-dLLM's threshold rule: the number of candidates with confidence above the threshold,

        n = |{ i : c_i > tau }|,

    per row (the caller commits max(n, minimum) of the most confident ones, at least one per step).
    With tau = 1.0 no probability qualifies (p <= 1), so only the minimum is committed.
    """
    return (confidence > threshold).sum(-1)


def factor_count(confidence: torch.Tensor, factor: float) -> torch.Tensor:
    """Fast-dLLM's factor rule: with the candidates' confidences sorted c_(1) >= c_(2) >= ..., commit

        n = max { n : (n + 1) (1 - c_(n)) < f },

    the largest parallel set whose error bound stays below f (per row; non-candidates have c = -inf and
    never qualify). The condition is monotone in n, so n is the number of sorted positions meeting it.
    """
    if factor <= 0:
        raise ValueError(f"factor_count: factor must be > 0, got {factor}")
    sorted_c = confidence.sort(dim=-1, descending=True).values
    n = torch.arange(1, confidence.shape[-1] + 1, device=confidence.device, dtype=sorted_c.dtype)
    ok = (n + 1) * (1 - sorted_c) < factor
    return ok.to(torch.int64).cumprod(-1).sum(-1)


__all__ = [
    "gumbel_max_sample",
    "low_confidence_remasking",
    "random_remasking",
    "topk_margin_remasking",
    "entropy_remasking",
    "REMASKING_RULES",
    "suppress_eos_eot_confidence",
    "select_top_k",
    "threshold_count",
    "factor_count",
]
