"""How many masked tokens the reverse process unmasks at each step (LLaDA, App. B.3 / reference `generate.py`)."""

from __future__ import annotations

import torch


def num_transfer_tokens(mask_count: torch.Tensor, steps: int) -> torch.Tensor:
    """Tokens unmasked at each of the `steps` steps of a block, per sequence.

    With m masked tokens in the block and s steps, every step unmasks floor(m / s) tokens and the first
    (m mod s) steps one more:

        n_i = floor(m / s) + [i < (m mod s)],   i = 0 .. s-1,   sum_i n_i = m.

    Args:
        mask_count: (B,) or (B, 1) integer tensor, the number of masked positions m of each sequence.
        steps: s >= 1.
    Returns:
        (B, s) int64 tensor of n_i.
    """
    if steps < 1:
        raise ValueError(f"num_transfer_tokens: steps must be >= 1, got {steps}")
    m = mask_count.reshape(-1, 1).to(torch.int64)
    base = m // steps
    remainder = m % steps
    step_index = torch.arange(steps, device=m.device)[None, :]
    return base + (step_index < remainder).to(torch.int64)


def scheduled_count(remaining_masks: torch.Tensor, remaining_steps: int) -> torch.Tensor:
    """The number of tokens the exact schedule unmasks now, given what is left of the block.

    n = ceil(m_rem / s_rem), which equals the first entry of `num_transfer_tokens(m_rem, s_rem)`.
    Following the static schedule step by step gives the same counts (after i steps of a block with
    m = q s + r masks, m_rem = q (s - i) + max(r - i, 0)), so the exact sampler can use it; the parallel
    decoders use it as their per-step minimum, so that when no extra token qualifies they reproduce
    the exact sampler, and a block never needs more than its `steps`.
    """
    if remaining_steps < 1:
        raise ValueError(f"scheduled_count: remaining_steps must be >= 1, got {remaining_steps}")
    m = remaining_masks.to(torch.int64)
    return (m + remaining_steps - 1) // remaining_steps


__all__ = ["num_transfer_tokens", "scheduled_count"]
