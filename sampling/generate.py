"""The LLaDA reverse process (reference `generate.py`, token for token) and its fast approximations.

    x = [prompt | MASK * gen_length]
    for each block (semi-autoregressive, left to right):
        for each step of the block:
            logits = denoiser(x)                              (CFG: u + (w + 1)(c - u))
            x0     = candidates (argmax, or Gumbel-max at T > 0) at the block's masked positions
            c      = remasking score of x0 (positions after the block: -inf)
            commit the k most confident x0, k = num_transfer_tokens schedule
                   (fast modes: more when they pass a threshold / the factor rule)

`generate` returns the token ids; `stream` yields a `StepEvent` after every step (for the demo and
the CLI's streamed output); `generate(..., callback=f)` calls f with each event.

Differences from the reference code (all deliberate, documented):
- CFG also works without an attention mask (the reference crashes).
- EOS / EoT confidence suppression works at every temperature (see `suppress_eos_eot_confidence`).
- The prompt is never changed: mask tokens inside the prompt stay (the reference would also fill them).
- Probabilities / CFG are computed in float32 for bf16/fp16 models (the reference uses the model dtype).
- At T > 0 the Gumbel noise is drawn only for the current block's positions, so seeded runs do not
  reproduce the reference's random stream (the distribution is the same).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable, Iterator, Optional

import torch

from .config import SamplerConfig
from .denoiser import Denoiser, EmbeddingsDenoiser, KVCache, as_denoiser
from .remasking import (
    REMASKING_RULES,
    factor_count,
    gumbel_max_sample,
    select_top_k,
    suppress_eos_eot_confidence,
    threshold_count,
)
from .schedule import scheduled_count


@dataclass
class StepEvent:
    """What one denoising step did (yielded by `stream`, passed to `generate`'s callback).

    x: (B, T) the sequence after the step (prompt + generation region, ids; a live view: copy it to keep it).
    transferred: (B, T) bool, the positions committed at this step.
    confidence: (B, T) float32, the model probability of each committed token (NaN elsewhere).
    block, step: indices of the block and of the step inside it; nfe: model calls so far.
    prompt_length: P (the generation region is x[:, P:]).
    """

    x: torch.Tensor
    transferred: torch.Tensor
    confidence: torch.Tensor
    block: int
    step: int
    nfe: int
    prompt_length: int


@dataclass
class GenerationResult:
    """`generate(..., return_dict=True)`.

    sequences: what `generate` returns by default (prompt + generated ids; generated ids only when
        the prompt was given as inputs_embeds).
    nfe: number of model calls (forward passes; a CFG step is one call on a doubled batch).
    steps: denoising steps taken (== nfe).
    """

    sequences: torch.Tensor
    nfe: int
    steps: int
    config: SamplerConfig = field(repr=False, default=None)


def _resolve_config(config: Optional[SamplerConfig], overrides: dict[str, Any]) -> SamplerConfig:
    base = config if config is not None else SamplerConfig()
    return (base.replace(**overrides) if overrides else base).validate()


def classifier_free_guidance(cond_logits: torch.Tensor, uncond_logits: torch.Tensor, scale: float) -> torch.Tensor:
    """Unsupervised classifier-free guidance (LLaDA, App. B.3):

        l = u + (w + 1) (c - u)

    with c the logits given the prompt, u the logits with the prompt masked, w = `scale`.
    """
    return uncond_logits + (scale + 1) * (cond_logits - uncond_logits)


class _Sampler:
    """One run of the reverse process: holds x, the attention mask and the KV cache."""

    def __init__(self, denoiser: Denoiser, x: torch.Tensor, prompt_length: int, attention_mask, cfg: SamplerConfig, generator):
        self.d = denoiser
        self.x = x
        self.P = prompt_length
        self.am = attention_mask
        self.cfg = cfg
        self.generator = generator
        self.mask_id = denoiser.mask_token_id
        self.nfe = 0
        self.cache: Optional[KVCache] = None
        self.rule = REMASKING_RULES[cfg.remasking]
        eos = cfg.eos_token_id if cfg.eos_token_id is not None else denoiser.eos_token_id
        self.eos_id = eos
        self.banned = sorted({*cfg.suppress_tokens, *([eos] if cfg.logits_eos_inf and eos is not None else [])})
        self.low_conf_ids = [] if not cfg.confidence_eos_eot_inf else [
            t for t in (eos, cfg.eot_token_id) if t is not None
        ]
        # prompt positions of x (what CFG's unconditional copy masks): all of the first P columns.
        self.prompt_index = torch.zeros_like(x, dtype=torch.bool)
        self.prompt_index[:, :prompt_length] = x[:, :prompt_length] != self.mask_id

    # ------------------------------------------------------------------ model calls
    def _model_input(self) -> tuple[torch.Tensor, Optional[torch.Tensor]]:
        if self.cfg.cfg_scale > 0:
            un_x = self.x.masked_fill(self.prompt_index, self.mask_id)
            x_in = torch.cat([self.x, un_x], dim=0)
            am = None if self.am is None else torch.cat([self.am, self.am], dim=0)
            return x_in, am
        return self.x, self.am

    def _combine(self, logits: torch.Tensor) -> torch.Tensor:
        if logits.dtype not in (torch.float32, torch.float64):
            logits = logits.float()
        if self.cfg.cfg_scale > 0:
            cond, uncond = logits.chunk(2, dim=0)
            logits = classifier_free_guidance(cond, uncond, self.cfg.cfg_scale)
        return logits

    def block_logits(self, bs: int, be: int, step: int) -> torch.Tensor:
        """Logits (B, be - bs, V) of the current block, exact or through the KV cache."""
        x_in, am = self._model_input()
        mode = self.cfg.cache
        interval = self.cfg.cache_refresh_interval
        refresh = mode == "none" or step == 0 or self.cache is None or (interval is not None and step % interval == 0)
        self.nfe += 1
        # only the block's logits are used: models that can skip the LM head elsewhere are asked to
        block_only = {"logits_slice": slice(bs, be)} if getattr(self.d, "supports_logits_slice", False) else {}
        if mode == "none":
            out = self.d(x_in, am, **block_only)
            return self._combine(out.logits if block_only else out.logits[:, bs:be])
        if refresh:
            out = self.d(x_in, am, use_cache=True, **block_only)
            kv = out.past_key_values
            if kv is None:
                raise ValueError(f"cache={mode!r}: the model returned no past_key_values with use_cache=True")
            if mode == "prefix":
                self.cache = tuple((k[:, :, :bs], v[:, :, :bs]) for k, v in kv)
            else:
                self.cache = tuple(
                    (torch.cat([k[:, :, :bs], k[:, :, be:]], dim=2), torch.cat([v[:, :, :bs], v[:, :, be:]], dim=2))
                    for k, v in kv
                )
            return self._combine(out.logits if block_only else out.logits[:, bs:be])
        if mode == "prefix":
            am_step = am  # cached prefix keys first, then positions bs..T-1: the natural order
            out = self.d(x_in[:, bs:], am_step, start=bs, past_key_values=self.cache)
        else:
            am_step = None if am is None else torch.cat([am[:, :bs], am[:, be:], am[:, bs:be]], dim=1)
            out = self.d(x_in[:, bs:be], am_step, start=bs, past_key_values=self.cache)
        return self._combine(out.logits[:, : be - bs])

    # ------------------------------------------------------------------ one step
    def step(self, bs: int, be: int, step: int, steps_in_block: int) -> Optional[StepEvent]:
        cfg = self.cfg
        block = self.x[:, bs:be]
        masked = block == self.mask_id
        remaining = masked.sum(-1)
        if int(remaining.max()) == 0:
            return None
        logits = self.block_logits(bs, be, step)
        if self.banned:
            logits[..., self.banned] = float("-inf")
        candidates = gumbel_max_sample(logits, cfg.temperature, self.generator)
        score = self.rule(logits, candidates, generator=self.generator)
        score = suppress_eos_eot_confidence(score, candidates, self.low_conf_ids)
        score = torch.where(masked, score, torch.full_like(score, float("-inf")))

        k = scheduled_count(remaining, steps_in_block - step)
        if cfg.threshold is not None:
            k = torch.maximum(k, threshold_count(score, cfg.threshold))
        elif cfg.factor is not None:
            k = torch.maximum(k, factor_count(score, cfg.factor))
        k = torch.minimum(k, remaining)
        chosen = select_top_k(score, k)

        block[chosen] = candidates[chosen]  # block is a view of self.x
        transferred = torch.zeros_like(self.x, dtype=torch.bool)
        transferred[:, bs:be] = chosen
        confidence = torch.full(self.x.shape, float("nan"), dtype=torch.float32, device=self.x.device)
        if chosen.any():
            probs = torch.softmax(logits[chosen], dim=-1)
            confidence[transferred] = probs.gather(-1, candidates[chosen].unsqueeze(-1)).squeeze(-1).float()
        return StepEvent(self.x, transferred, confidence, -1, step, self.nfe, self.P)

    # ------------------------------------------------------------------ early stop
    def finished_rows(self, be: int) -> torch.Tensor:
        """Rows whose generated tokens up to `be` contain an EOS with only EOS after it."""
        if self.eos_id is None:
            return torch.zeros(self.x.shape[0], dtype=torch.bool, device=self.x.device)
        gen = self.x[:, self.P:be]
        is_eos = gen == self.eos_id
        has_eos = is_eos.any(-1)
        after_first = is_eos.to(torch.int64).cumsum(-1) > 0
        return has_eos & (is_eos | ~after_first).all(-1)

    def run(self) -> Iterator[StepEvent]:
        cfg = self.cfg
        s = cfg.steps_per_block
        for b in range(cfg.num_blocks):
            bs = self.P + b * cfg.block_length
            be = bs + cfg.block_length
            self.cache = None
            for i in range(s):
                event = self.step(bs, be, i, s)
                if event is None:
                    break
                event.block = b
                yield event
            if cfg.early_stop and be < self.x.shape[1]:
                done = self.finished_rows(be)
                if bool(done.any()):
                    tail = self.x[:, be:]
                    tail[done] = torch.where(tail[done] == self.mask_id, self.eos_id, tail[done])
                if bool(done.all()):
                    return


def _prepare(
    model: Any,
    input_ids: Optional[torch.Tensor],
    attention_mask: Optional[torch.Tensor],
    inputs_embeds: Optional[torch.Tensor],
    cfg: SamplerConfig,
    generator: Optional[torch.Generator],
) -> tuple[_Sampler, bool]:
    denoiser = as_denoiser(model)
    if (input_ids is None) == (inputs_embeds is None):
        raise ValueError("generate: pass exactly one of input_ids or inputs_embeds (the prompt)")
    from_embeds = inputs_embeds is not None
    if from_embeds:
        denoiser = denoiser.with_prompt_embeds(inputs_embeds)
        B, P = inputs_embeds.shape[:2]
        device = inputs_embeds.device
    else:
        if input_ids.dim() == 1:
            input_ids = input_ids[None]
        if input_ids.dim() != 2:
            raise ValueError(f"input_ids must have shape (batch, prompt_length), got {tuple(input_ids.shape)}")
        B, P = input_ids.shape
        device = getattr(denoiser, "device", None) or input_ids.device
        input_ids = input_ids.to(device)
    mask_id = denoiser.mask_token_id
    if denoiser.pad_token_id is not None and denoiser.pad_token_id == mask_id:
        raise ValueError(
            f"pad_token_id {denoiser.pad_token_id} equals the mask id {mask_id}: padding would be read as masked "
            f"positions; set the config's pad_token_id to EOS (or another non-mask token)"
        )
    total = P + cfg.gen_length
    if denoiser.max_sequence_length is not None and total > denoiser.max_sequence_length:
        raise ValueError(
            f"prompt_length {P} + gen_length {cfg.gen_length} = {total} exceeds the model's "
            f"max_sequence_length={denoiser.max_sequence_length}"
        )
    if attention_mask is not None:
        if attention_mask.shape != (B, P):
            raise ValueError(
                f"attention_mask has shape {tuple(attention_mask.shape)}, expected (batch, prompt_length) = {(B, P)}"
            )
        attention_mask = attention_mask.to(device)
        if not from_embeds and bool(((attention_mask == 0) & (input_ids == mask_id)).any()):
            raise ValueError(
                f"input_ids hold the mask id {mask_id} at padded positions (attention_mask == 0): the pad id "
                f"must differ from the mask id; pad with EOS"
            )
        attention_mask = torch.cat(
            [attention_mask, torch.ones((B, cfg.gen_length), dtype=attention_mask.dtype, device=device)], dim=1
        )
    x = torch.full((B, total), mask_id, dtype=torch.long, device=device)
    if from_embeds:
        x[:, :P] = denoiser.placeholder_id()
    else:
        x[:, :P] = input_ids
    if cfg.cache != "none" and not denoiser.supports_cache:
        raise ValueError(f"cache={cfg.cache!r}: {type(denoiser).__name__} does not support KV caching")
    return _Sampler(denoiser, x, P, attention_mask, cfg, generator), from_embeds


@torch.no_grad()
def stream(
    model: Any,
    input_ids: Optional[torch.Tensor] = None,
    attention_mask: Optional[torch.Tensor] = None,
    *,
    inputs_embeds: Optional[torch.Tensor] = None,
    config: Optional[SamplerConfig] = None,
    generator: Optional[torch.Generator] = None,
    **settings: Any,
) -> Iterator[StepEvent]:
    """Run the reverse process, yielding a `StepEvent` after each step (same arguments as `generate`).

    The last event's `x` is the final sequence (prompt + generated ids).
    """
    cfg = _resolve_config(config, settings)
    sampler, _ = _prepare(model, input_ids, attention_mask, inputs_embeds, cfg, generator)
    yield from sampler.run()


@torch.no_grad()
def generate(
    model: Any,
    input_ids: Optional[torch.Tensor] = None,
    attention_mask: Optional[torch.Tensor] = None,
    *,
    inputs_embeds: Optional[torch.Tensor] = None,
    config: Optional[SamplerConfig] = None,
    callback: Optional[Callable[[StepEvent], Any]] = None,
    generator: Optional[torch.Generator] = None,
    return_dict: bool = False,
    **settings: Any,
):
    """Sample from a LLaDA model with the (semi-autoregressive) reverse process.

    Args:
        model: a LLaDA model (`LLaDAModelLM` or anything with its forward signature and a config with
            `mask_token_id`), or a `sampling.Denoiser`.
        input_ids: (B, P) prompt ids, left-padded for batches (pad id != mask id).
        attention_mask: (B, P), 1 for real tokens, 0 for padding; None = no padding.
        inputs_embeds: (B, P, D) the prompt as embeddings instead of ids (LLaDA-V); then only the
            generated ids (B, gen_length) are returned.
        config: a `SamplerConfig`; keyword `settings` (any of its fields: steps, gen_length,
            block_length, temperature, cfg_scale, remasking, logits_eos_inf, confidence_eos_eot_inf,
            suppress_tokens, threshold, factor, cache, cache_refresh_interval, early_stop, ...) override it.
        callback: called with a `StepEvent` after every step (streaming, progress bars).
        generator: torch.Generator for temperature > 0 and random remasking.
        return_dict: return a `GenerationResult` (with the NFE count) instead of the ids.

    Returns:
        LongTensor (B, P + gen_length): prompt followed by the generated ids, as the reference
        `generate.py` returns (or (B, gen_length) with inputs_embeds), or a `GenerationResult`.

    Raises ValueError naming the setting or input that is wrong (see `SamplerConfig.validate`).
    """
    cfg = _resolve_config(config, settings)
    sampler, from_embeds = _prepare(model, input_ids, attention_mask, inputs_embeds, cfg, generator)
    steps = 0
    for event in sampler.run():
        steps += 1
        if callback is not None:
            callback(event)
    sequences = sampler.x[:, sampler.P:] if from_embeds else sampler.x
    if return_dict:
        return GenerationResult(sequences=sequences, nfe=sampler.nfe, steps=steps, config=cfg)
    return sequences


__all__ = ["generate", "stream", "StepEvent", "GenerationResult", "classifier_free_guidance"]
