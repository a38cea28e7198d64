"""The small model-call interface of the sampler: a `Denoiser` maps a partially masked sequence to logits.

The sampler never calls a model directly. It holds the sequence x as token ids, (B, T) = prompt
followed by the generation region, masked positions holding the model's mask id, and at every step
asks a `Denoiser` for logits:

    out = denoiser(x[:, start:start + L], attention_mask, start=start,
                   past_key_values=None, use_cache=False)
    out.logits            # (B, L, V): mask-predictor logits of the L given positions
    out.past_key_values   # with use_cache=True: per-layer (k, v) over cached + given positions

- `start` is the absolute position of x's first given column (0 for a full sequence). RoPE positions
  of the given tokens are start .. start + L - 1.
- `attention_mask` is None or (B, S + L) with 1 for real tokens and 0 for padding, covering the S
  cached keys first (in the order of `past_key_values`), then the L given positions.
- `past_key_values` (prefix / dual KV cache) are per-layer (key, value) of shape (B, n_kv, S, head_dim)
  that an earlier `use_cache=True` call returned, sliced by the sampler; positions are already baked in
  by RoPE, so the cached keys may be any subset of positions (the dual cache passes prefix + suffix).
- For classifier-free guidance the sampler stacks the conditional and the unconditional copy (prompt
  positions set to the mask id) into one batch of 2B rows.

Implementations:

- `TokenDenoiser(model)`: embeds the ids with the model's own embedding (`model(input_ids=...)`).
- `EmbeddingsDenoiser(model, prompt_embeds)`: for a prompt given as input embeddings (B, P, D)
  (LLaDA-V's spliced image + text sequence). x still holds ids everywhere; prompt positions hold a
  placeholder id (never the mask id). The embeddings fed to the model are the prompt embeddings at
  prompt positions, the token embeddings elsewhere, and the mask embedding wherever x == mask id (so
  the unconditional CFG copy, whose prompt positions are masks, works for embeddings too).

A model other than `LLaDAModelLM` can be sampled by subclassing `Denoiser` (or `TokenDenoiser` /
`EmbeddingsDenoiser` and overriding `embed` / `__call__`) and passing the instance to `generate` as the
model. The cached modes need a model that accepts `past_key_values`, `position_ids`, `use_cache` as
`LLaDAModelLM` does; set `supports_cache = False` otherwise and they raise a clear error.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Optional, Sequence

import torch

KVCache = Sequence[tuple[torch.Tensor, torch.Tensor]]


@dataclass
class DenoiserOutput:
    """logits (B, L, V) of the given positions; past_key_values per layer (k, v) when use_cache=True."""

    logits: torch.Tensor
    past_key_values: Optional[KVCache] = None


def _config_id(config: Any, name: str) -> Optional[int]:
    value = getattr(config, name, None) if config is not None else None
    if isinstance(value, (list, tuple)):
        value = value[0] if value else None
    return None if value is None else int(value)


class Denoiser:
    """Base class of the model-call interface (see the module docstring).

    Attributes the sampler reads:
        mask_token_id: the mask id (from the model config).
        eos_token_id, pad_token_id: from the model config (None when absent).
        max_sequence_length: longest sequence the model accepts (None = unbounded).
        supports_cache: whether `past_key_values` / `use_cache` are accepted.
        supports_logits_slice: whether `__call__` takes `logits_slice=slice(a, b)` and then returns only the
            logits of those positions (the sampler uses the current block's logits only).
        device: where the sampler puts x.
    """

    mask_token_id: int
    eos_token_id: Optional[int] = None
    pad_token_id: Optional[int] = None
    max_sequence_length: Optional[int] = None
    supports_cache: bool = True
    supports_logits_slice: bool = False
    device: torch.device = torch.device("cpu")

    def __call__(
        self,
        x: torch.LongTensor,
        attention_mask: Optional[torch.Tensor] = None,
        *,
        start: int = 0,
        past_key_values: Optional[KVCache] = None,
        use_cache: bool = False,
    ) -> DenoiserOutput:
        raise NotImplementedError

    def with_prompt_embeds(self, prompt_embeds: torch.Tensor) -> "Denoiser":
        """A denoiser for a prompt given as embeddings (B, P, D); see `EmbeddingsDenoiser`."""
        raise NotImplementedError(f"{type(self).__name__} cannot take a prompt given as inputs_embeds")


class TokenDenoiser(Denoiser):
    """Calls a LLaDA-style model on token ids: `model(input_ids=x, attention_mask, position_ids, past_key_values, use_cache)`."""

    def __init__(self, model: torch.nn.Module):
        self.model = model
        config = getattr(model, "config", None)
        mask = _config_id(config, "mask_token_id")
        if mask is None:
            raise ValueError(
                f"{type(model).__name__}.config has no mask_token_id: the sampler needs the model's mask id"
            )
        self.mask_token_id = mask
        self.eos_token_id = _config_id(config, "eos_token_id")
        self.pad_token_id = _config_id(config, "pad_token_id")
        max_len = getattr(config, "max_sequence_length", None) or getattr(config, "max_position_embeddings", None)
        self.max_sequence_length = int(max_len) if max_len else None
        try:
            self.device = next(model.parameters()).device
        except (StopIteration, AttributeError):
            self.device = torch.device("cpu")

    supports_logits_slice = True  # the wrapped model takes `logits_to_keep`

    def _forward(self, *, input_ids=None, inputs_embeds=None, attention_mask, start, past_key_values, use_cache,
                 logits_slice=None):
        length = (input_ids if input_ids is not None else inputs_embeds).shape[1]
        kwargs: dict[str, Any] = {}
        if past_key_values is not None or use_cache or start:
            if not self.supports_cache:
                raise ValueError(f"{type(self).__name__}: this model does not support KV caching (cache='none' only)")
            device = (input_ids if input_ids is not None else inputs_embeds).device
            kwargs.update(
                position_ids=torch.arange(start, start + length, device=device),
                past_key_values=past_key_values,
                use_cache=use_cache,
            )
        if attention_mask is not None and bool(attention_mask.bool().all()):
            attention_mask = None
        if logits_slice is not None:
            kwargs["logits_to_keep"] = logits_slice
        out = self.model(input_ids=input_ids, inputs_embeds=inputs_embeds, attention_mask=attention_mask, **kwargs)
        return DenoiserOutput(logits=out.logits, past_key_values=getattr(out, "past_key_values", None) if use_cache else None)

    def __call__(self, x, attention_mask=None, *, start=0, past_key_values=None, use_cache=False,
                 logits_slice=None) -> DenoiserOutput:
        return self._forward(
            input_ids=x, attention_mask=attention_mask, start=start, past_key_values=past_key_values, use_cache=use_cache,
            logits_slice=logits_slice,
        )

    def with_prompt_embeds(self, prompt_embeds: torch.Tensor) -> "EmbeddingsDenoiser":
        return EmbeddingsDenoiser(self.model, prompt_embeds)


class EmbeddingsDenoiser(TokenDenoiser):
    """Calls the model on input embeddings, for a prompt given as embeddings (B, P, D).

    For the given slice x[:, start:start+L] the model receives, per position j = start + i:
        prompt_embeds[:, j]   if j < P and x_j != mask id   (the prompt)
        E[mask id]            if x_j == mask id            (masked, also the masked prompt of CFG's copy)
        E[x_j]                otherwise                    (generated tokens)
    where E is the model's input embedding. When x has k * B rows (CFG stacks two copies), the prompt
    embeddings are repeated k times.
    """

    def __init__(self, model: torch.nn.Module, prompt_embeds: torch.Tensor):
        super().__init__(model)
        if prompt_embeds.dim() != 3:
            raise ValueError(f"inputs_embeds must have shape (batch, prompt_length, hidden), got {tuple(prompt_embeds.shape)}")
        self.embedding = model.get_input_embeddings()
        width = self.embedding.weight.shape[1]
        if prompt_embeds.shape[-1] != width:
            raise ValueError(
                f"inputs_embeds has hidden size {prompt_embeds.shape[-1]}, the model's embeddings have {width}"
            )
        self.prompt_embeds = prompt_embeds.to(dtype=self.embedding.weight.dtype)
        self.device = prompt_embeds.device

    @property
    def prompt_length(self) -> int:
        return self.prompt_embeds.shape[1]

    def placeholder_id(self) -> int:
        """The id stored at prompt positions of x (never the mask id): pad, else EOS, else 0."""
        for candidate in (self.pad_token_id, self.eos_token_id, 0):
            if candidate is not None and candidate != self.mask_token_id:
                return candidate
        return 1 if self.mask_token_id == 0 else 0

    def embed(self, x: torch.LongTensor, start: int) -> torch.Tensor:
        emb = self.embedding(x)
        P = self.prompt_length
        if start < P:
            n = min(P - start, x.shape[1])
            rows, B = x.shape[0], self.prompt_embeds.shape[0]
            if rows % B:
                raise ValueError(f"EmbeddingsDenoiser: {rows} rows is not a multiple of the prompt batch {B}")
            prompt = self.prompt_embeds[:, start:start + n].repeat(rows // B, 1, 1)
            keep_prompt = (x[:, :n] != self.mask_token_id).unsqueeze(-1)
            emb = emb.clone()
            emb[:, :n] = torch.where(keep_prompt, prompt, emb[:, :n])
        return emb

    def __call__(self, x, attention_mask=None, *, start=0, past_key_values=None, use_cache=False,
                 logits_slice=None) -> DenoiserOutput:
        return self._forward(
            inputs_embeds=self.embed(x, start),
            attention_mask=attention_mask,
            start=start,
            past_key_values=past_key_values,
            use_cache=use_cache,
            logits_slice=logits_slice,
        )

    def with_prompt_embeds(self, prompt_embeds: torch.Tensor) -> "EmbeddingsDenoiser":
        return EmbeddingsDenoiser(self.model, prompt_embeds)


def as_denoiser(model: Any) -> Denoiser:
    """A `Denoiser` as given, or a `TokenDenoiser` wrapping a model."""
    return model if isinstance(model, Denoiser) else TokenDenoiser(model)


__all__ = ["Denoiser", "DenoiserOutput", "TokenDenoiser", "EmbeddingsDenoiser", "as_denoiser", "KVCache"]
