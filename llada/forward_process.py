"""The forward (masking) process of LLaDA, shared by the training losses and the ELBO estimator.

LLaDA's forward process q(x_t | x_0) replaces tokens of x_0 by the mask token `<|mdm_mask|>`. Two
parameterisations are used in the papers and both are served by `forward_process`:

- t-form (pretraining / SFT, LLaDA guidelines): each maskable token is masked independently with
  probability p_mask = (1 - eps) t + eps, t ~ U(0, 1), eps = 1e-3  (`p_mask=`).
- l-form (conditional ELBO, LLaDA Eq. 6 / LLaDA 1.5): exactly l of the L maskable tokens are masked,
  the subset uniform among all subsets of size l  (`num_masked=`).

Positions that are not maskable (the prompt, padding excluded by the caller) are never masked.
"""

from __future__ import annotations

from typing import Optional, Union

import torch

DEFAULT_EPS = 1e-3


def sample_mask_ratio(
    batch_size: int,
    *,
    eps: float = DEFAULT_EPS,
    generator: Optional[torch.Generator] = None,
    device: Union[str, torch.device, None] = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Draw t ~ U(0, 1) per sequence and return (t, p_mask) with p_mask = (1 - eps) * t + eps."""
    t = torch.rand(batch_size, generator=generator, device=device)
    return t, (1.0 - eps) * t + eps


def forward_process(
    input_ids: torch.Tensor,
    mask_token_id: int,
    *,
    p_mask: Union[torch.Tensor, float, None] = None,
    num_masked: Union[torch.Tensor, int, None] = None,
    maskable: Optional[torch.Tensor] = None,
    generator: Optional[torch.Generator] = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Mask `input_ids` (batch, length) by the LLaDA forward process; returns (noisy_ids, is_masked).

    Exactly one of
      p_mask:     per-row masking probability (batch,) or scalar; tokens masked independently (t-form);
      num_masked: per-row number of masked tokens (batch,) or scalar; a uniform subset of that size of
                  the maskable positions is masked (l-form). Must not exceed a row's maskable count.
    maskable: bool (batch, length) or (length,), True where masking is allowed (default: everywhere).
    """
    if (p_mask is None) == (num_masked is None):
        raise ValueError("forward_process: pass exactly one of p_mask (t-form) or num_masked (l-form)")
    if input_ids.dim() != 2:
        raise ValueError(f"forward_process: input_ids must be (batch, length), got shape {tuple(input_ids.shape)}")
    B, L = input_ids.shape
    device = input_ids.device
    if maskable is None:
        maskable = torch.ones(B, L, dtype=torch.bool, device=device)
    else:
        maskable = maskable.to(device=device, dtype=torch.bool).expand(B, L)

    if p_mask is not None:
        p = torch.as_tensor(p_mask, dtype=torch.float32, device=device).reshape(-1, 1).expand(B, 1)
        u = torch.rand(B, L, generator=generator, device=generator.device if generator is not None else device)
        is_masked = (u.to(device) < p) & maskable
    else:
        counts = torch.as_tensor(num_masked, dtype=torch.long, device=device).reshape(-1).expand(B)
        available = maskable.sum(dim=1)
        if bool((counts < 0).any()) or bool((counts > available).any()):
            raise ValueError(
                f"forward_process: num_masked {counts.tolist()} must lie in 0..maskable count {available.tolist()}"
            )
        # Uniform random keys on maskable positions, +inf elsewhere: the `count` smallest keys form a
        # uniformly random subset of the maskable positions of that size.
        keys = torch.rand(B, L, generator=generator, device=generator.device if generator is not None else device)
        keys = keys.to(device).masked_fill(~maskable, float("inf"))
        rank = keys.argsort(dim=1).argsort(dim=1)
        is_masked = rank < counts[:, None]
    noisy = torch.where(is_masked, torch.full_like(input_ids, mask_token_id), input_ids)
    return noisy, is_masked
