"""The LLaDA training losses (LLaDA paper, Sec. 2 and the official guidelines), on the shared forward process.

Notation: x_0 the clean sequence (batch B, length L), t ~ U(0, 1) per sequence,
p_mask = (1 - eps) t + eps (eps = 1e-3), x_t = x_0 with each maskable token replaced by `<|mdm_mask|>`
independently with probability p_mask (`llada.forward_process`), p_theta the mask predictor.

- `pretraining_loss`:  L = 1/(B L) sum_b sum_i 1[x_t^{b,i} = M] (-log p_theta(x_0^{b,i} | x_t^b)) / p_mask_b
- `sft_loss`:          L = 1/B sum_b 1/|r_b| sum_{i in r_b} 1[x_t^{b,i} = M] (-log p_theta(x_0^{b,i} | p_b, x_t^b)) / p_mask_b
  with the prompt p_b never masked and r_b the response *including its EOS padding* (padding is response,
  masked and trained on; |r_b| = L - prompt length).

The pure loss functions take logits; `pretraining_objective` / `sft_objective` draw the noise with
`llada.forward_process`, run the model and apply them. Noise can be drawn from one generator for the whole
batch or from one generator per row (the trainer does the latter, so that the noise of an example does
not depend on how the batch is split over processes).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional, Sequence, Union

import torch
import torch.nn.functional as F

from .forward_process import DEFAULT_EPS, forward_process, sample_mask_ratio

Generators = Union[None, torch.Generator, Sequence[torch.Generator]]


@dataclass
class NoisyBatch:
    """x_t and what produced it: noisy ids (B, L), the bool mask of masked positions, p_mask (B,)."""

    noisy_ids: torch.Tensor
    is_masked: torch.Tensor
    p_mask: torch.Tensor


@dataclass
class LossOutput:
    """A training loss and what it was computed on (for logging)."""

    loss: torch.Tensor
    num_masked: int
    num_tokens: int


def add_noise(
    input_ids: torch.Tensor,
    mask_token_id: int,
    *,
    eps: float = DEFAULT_EPS,
    maskable: Optional[torch.Tensor] = None,
    generator: Generators = None,
) -> NoisyBatch:
    """Forward process q(x_t | x_0) with t ~ U(0, 1) per row, p_mask = (1 - eps) t + eps.

    `generator` is None, one generator for the whole batch, or a sequence with one generator per row (each
    row's t and mask are then drawn from its own generator only).
    """
    B = input_ids.shape[0]
    if generator is None or isinstance(generator, torch.Generator):
        _, p_mask = sample_mask_ratio(B, eps=eps, generator=generator)
        p_mask = p_mask.to(input_ids.device)
        noisy, is_masked = forward_process(input_ids, mask_token_id, p_mask=p_mask, maskable=maskable,
                                           generator=generator)
        return NoisyBatch(noisy, is_masked, p_mask)
    if len(generator) != B:
        raise ValueError(f"add_noise: got {len(generator)} generators for a batch of {B} rows")
    rows, masks, ps = [], [], []
    for b, g in enumerate(generator):
        _, p = sample_mask_ratio(1, eps=eps, generator=g)
        row_maskable = None if maskable is None else maskable[b: b + 1]
        noisy, is_masked = forward_process(input_ids[b: b + 1], mask_token_id, p_mask=p.to(input_ids.device),
                                           maskable=row_maskable, generator=g)
        rows.append(noisy)
        masks.append(is_masked)
        ps.append(p)
    return NoisyBatch(torch.cat(rows), torch.cat(masks), torch.cat(ps).to(input_ids.device))


def _masked_token_ce(logits: torch.Tensor, targets: torch.Tensor, is_masked: torch.Tensor) -> torch.Tensor:
    """Cross entropy -log p(x_0^i | x_t) at every position (B, L), zero where not masked (float32)."""
    if logits.shape[:2] != targets.shape or is_masked.shape != targets.shape:
        raise ValueError(
            f"loss: logits {tuple(logits.shape)}, targets {tuple(targets.shape)} and is_masked "
            f"{tuple(is_masked.shape)} must agree on (batch, length)"
        )
    ce = torch.zeros(targets.shape, dtype=torch.float32, device=logits.device)
    if bool(is_masked.any()):
        ce[is_masked] = F.cross_entropy(logits[is_masked].float(), targets[is_masked], reduction="none")
    return ce


def pretraining_loss(
    logits: torch.Tensor, input_ids: torch.Tensor, is_masked: torch.Tensor, p_mask: torch.Tensor
) -> torch.Tensor:
    """LLaDA pretraining loss (guidelines, Eq. 3 of the paper as implemented):

        L = 1/(B L) * sum_b sum_i  1[x_t^{b,i} = M] * (-log p_theta(x_0^{b,i} | x_t^b)) / p_mask_b

    logits (B, L, V) of the model on x_t; input_ids = x_0 (B, L); is_masked (B, L); p_mask (B,).
    """
    ce = _masked_token_ce(logits, input_ids, is_masked)
    B, L = input_ids.shape
    return (ce / p_mask.to(ce.device).reshape(B, 1)).sum() / (B * L)


def sft_loss(
    logits: torch.Tensor,
    input_ids: torch.Tensor,
    is_masked: torch.Tensor,
    p_mask: torch.Tensor,
    answer_lengths: torch.Tensor,
) -> torch.Tensor:
    """LLaDA SFT loss (guidelines, Eq. 5 of the paper as implemented):

        L = 1/B * sum_b  1/|r_b| * sum_i  1[x_t^{b,i} = M] * (-log p_theta(x_0^{b,i} | x_t^b)) / p_mask_b

    |r_b| = answer_lengths[b]: the number of response positions of row b *including* its EOS padding
    (L - prompt length). The prompt is never masked (the caller's `is_masked` must be False there).
    """
    ce = _masked_token_ce(logits, input_ids, is_masked)
    B = input_ids.shape[0]
    lengths = answer_lengths.to(device=ce.device, dtype=torch.float32).reshape(B)
    if bool((lengths <= 0).any()):
        raise ValueError(f"sft_loss: every row needs a positive answer length, got {lengths.tolist()}")
    per_row = (ce / p_mask.to(ce.device).reshape(B, 1)).sum(dim=1) / lengths
    return per_row.mean()


def response_mask(prompt_lengths: torch.Tensor, length: int) -> torch.Tensor:
    """Bool (B, L): True at response positions i >= prompt_length_b (EOS padding included)."""
    positions = torch.arange(length, device=prompt_lengths.device)
    return positions[None, :] >= prompt_lengths[:, None]


def pretraining_objective(
    model: torch.nn.Module,
    input_ids: torch.Tensor,
    *,
    mask_token_id: int,
    eps: float = DEFAULT_EPS,
    generator: Generators = None,
) -> LossOutput:
    """Draw x_t from x_0 = `input_ids` (every position maskable), run `model`, return `pretraining_loss`."""
    noise = add_noise(input_ids, mask_token_id, eps=eps, generator=generator)
    logits = model(input_ids=noise.noisy_ids).logits
    loss = pretraining_loss(logits, input_ids, noise.is_masked, noise.p_mask)
    return LossOutput(loss, int(noise.is_masked.sum()), input_ids.numel())


def sft_objective(
    model: torch.nn.Module,
    input_ids: torch.Tensor,
    prompt_lengths: torch.Tensor,
    *,
    mask_token_id: int,
    eps: float = DEFAULT_EPS,
    generator: Generators = None,
    attention_mask: Optional[torch.Tensor] = None,
) -> LossOutput:
    """Draw x_t with the prompt kept clean, run `model`, return `sft_loss` (answer length incl. EOS padding).

    Positions before `prompt_lengths[b]` are the prompt (never masked, no loss). `attention_mask` (B, L) is given
    for left-padded prompts (the layout of the sampler): the padding sits inside the prompt region and is not
    attended to.
    """
    L = input_ids.shape[1]
    maskable = response_mask(prompt_lengths.to(input_ids.device), L)
    noise = add_noise(input_ids, mask_token_id, eps=eps, maskable=maskable, generator=generator)
    logits = model(input_ids=noise.noisy_ids, attention_mask=attention_mask).logits
    answer_lengths = L - prompt_lengths.to(input_ids.device)
    loss = sft_loss(logits, input_ids, noise.is_masked, noise.p_mask, answer_lengths)
    return LossOutput(loss, int(noise.is_masked.sum()), int(maskable.sum()))


__all__ = [
    "NoisyBatch", "LossOutput", "add_noise", "pretraining_loss", "sft_loss", "response_mask",
    "pretraining_objective", "sft_objective",
]
