"""The LLaDA-V training loss: LLaDA's SFT loss with the masking done on input embeddings.

For a batch of spliced sequences (text embeddings and image rows) e^b with labels y^b (-100 on the
prompt and the image rows, token ids on the response, its EOS padding included):

    t_b ~ U(0, 1),  p_b = (1 - eps) t_b + eps,
    m^{b,i} ~ Bernoulli(p_b) for every response position i (y^{b,i} != -100), 0 elsewhere,
    x_t^{b,i} = E[MASK] if m^{b,i} else e^{b,i}                      (masking on embeddings)
    L = 1/B sum_b 1/|r_b| sum_i m^{b,i} (-log p_theta(y^{b,i} | x_t^b)) / p_b,  |r_b| = #{i : y^{b,i} != -100}

which is `llada.losses.sft_loss` on the shared forward process (`llada.losses.add_noise`), as the
official LLaDA-V `forward` computes it.
"""

from __future__ import annotations

from typing import Optional

import torch

from llada.losses import Generators, LossOutput, add_noise, sft_loss

from .merging import IGNORE_INDEX


def mask_embeddings(inputs_embeds: torch.Tensor, is_masked: torch.Tensor, mask_embedding: torch.Tensor) -> torch.Tensor:
    """x_t on embeddings: the mask token's embedding wherever `is_masked`, the input elsewhere."""
    return torch.where(is_masked[..., None], mask_embedding.to(inputs_embeds.dtype).expand_as(inputs_embeds), inputs_embeds)


def llada_v_sft_objective(
    model: torch.nn.Module,
    inputs_embeds: torch.Tensor,
    labels: torch.Tensor,
    attention_mask: Optional[torch.Tensor] = None,
    *,
    mask_token_id: Optional[int] = None,
    eps: float = 1e-3,
    generator: Generators = None,
) -> LossOutput:
    """Noise the response positions of `inputs_embeds` (B, L, D), run the language model, return the SFT loss.

    `labels` (B, L): -100 where nothing is trained (prompt, image rows), the target ids elsewhere (EOS
    padding included). `generator`: None, one generator, or one per row (see `llada.losses.add_noise`).
    """
    if labels.shape != inputs_embeds.shape[:2]:
        raise ValueError(f"labels {tuple(labels.shape)} must match inputs_embeds' (batch, length) {tuple(inputs_embeds.shape[:2])}")
    maskable = labels != IGNORE_INDEX
    answer_lengths = maskable.sum(1)
    if bool((answer_lengths == 0).any()):
        rows = torch.nonzero(answer_lengths == 0).flatten().tolist()
        raise ValueError(f"llada_v_sft_objective: row(s) {rows} have no response position (every label is -100)")
    mask_id = model.config.mask_token_id if mask_token_id is None else mask_token_id
    targets = labels.masked_fill(~maskable, 0)
    noise = add_noise(targets, mask_id, eps=eps, maskable=maskable, generator=generator)
    embedding = model.get_input_embeddings()
    mask_vec = embedding(torch.tensor([mask_id], device=inputs_embeds.device))[0]
    noisy = mask_embeddings(inputs_embeds, noise.is_masked, mask_vec)
    logits = model(inputs_embeds=noisy, attention_mask=attention_mask).logits
    loss = sft_loss(logits, targets, noise.is_masked, noise.p_mask, answer_lengths)
    return LossOutput(loss, int(noise.is_masked.sum()), int(maskable.sum()))


__all__ = ["mask_embeddings", "llada_v_sft_objective"]
