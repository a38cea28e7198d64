"""LLaDA-V generation: the shared sampler (`sampling`) on the spliced prompt embeddings.

The official LLaDA-V `generate_with_embeds` is LLaDA's reverse process on input embeddings plus:

1. Suppression: at masked positions the logits of EOS, BOS, `<|start_header_id|>` and
   `<|end_header_id|>` are set to -inf before candidates are chosen (`suppress_tokens` of the sampler).
2. Classifier-free guidance masks the whole prompt, image rows included (the sampler's embeddings
   denoiser does this: the unconditional copy holds the mask id at every prompt position).
3. Stop sequences (`stop_on_sequences`): after every step the generated region is searched for the
   stop sequences; once one occurs at position p, positions >= p are no longer decoded (their
   confidence is -inf), generation ends when no masked position is left before p, and the output is
   the generated ids before p. The per-step counts stay those of the block's schedule.

Points 1 and 2 are sampler options. Point 3 is done here through the sampler's `Denoiser` interface:
`StopRegionDenoiser` gives every position at or after a row's stop position flat logits, so its
candidate's confidence 1 / V' is below that of any position before the stop (whose most likely token
has probability >= 1 / V' at temperature 0); the sampler's counts then commit exactly the positions
the official code commits before the stop, and `generate` stops the run as soon as none is left.

Prompt (image) caching (`prompt_cache=True`): the keys and values of the spliced prompt are computed
once, at the first model call, and every later call computes only the generation region against them
(`PromptCachingDenoiser`). Attention is bidirectional, so this is an approximation, like the prefix
caches of Fast-dLLM / dLLM-Cache: the prompt's keys are those it had when the whole answer was still
masked. It composes with the sampler's own `cache="prefix" | "dual"`, and a `PromptCache` returned by
one chat turn (`return_dict=True`) is reused by the next when the new prompt starts with the old one
(the previous prompt's positions are not recomputed at all).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable, Optional, Sequence

import torch

import sampling
from sampling import Denoiser, DenoiserOutput, SamplerConfig, TokenDenoiser

from .image_processing import ImageProcessingConfig, process_images


@dataclass
class VisionGenerationResult:
    """`generate(..., return_dict=True)`.

    sequences: (B, n) generated ids; rows cut at their stop sequence are right-padded with EOS
        (n = the longest kept row; for one row exactly the official output).
    lengths: (B,) generated ids kept per row (before the stop sequence).
    stopped: (B,) bool, whether a stop sequence was found.
    nfe: model calls.
    prompt_length: length of the spliced prompt (text + image rows).
    prompt_cache: with `prompt_cache=True`, the prompt's keys / values (pass it to the next chat turn).
    """

    sequences: torch.Tensor
    lengths: torch.Tensor
    stopped: torch.Tensor
    nfe: int
    prompt_length: int
    config: SamplerConfig = field(repr=False, default=None)
    prompt_cache: Optional[PromptCache] = field(repr=False, default=None)


@dataclass
class PromptCache:
    """Keys / values of a spliced prompt, reusable by a later call whose prompt starts with it.

    prompt_embeds: (B, P, D) the prompt the keys belong to; attention_mask: (B, P) or None;
    past_key_values: per layer (k, v) of shape (rows, n_kv, P, head_dim) (rows = 2B with CFG).
    """

    prompt_embeds: torch.Tensor
    attention_mask: Optional[torch.Tensor]
    past_key_values: tuple

    @property
    def length(self) -> int:
        return self.prompt_embeds.shape[1]

    @property
    def rows(self) -> int:
        return self.past_key_values[0][0].shape[0]

    def usable_for(self, prompt_embeds: torch.Tensor, attention_mask: Optional[torch.Tensor], rows: int) -> int:
        """How many leading prompt positions this cache covers for a new prompt (0: none)."""
        P = self.length
        if rows != self.rows or prompt_embeds.shape[0] != self.prompt_embeds.shape[0] or prompt_embeds.shape[1] < P:
            return 0
        if not torch.equal(prompt_embeds[:, :P].to(self.prompt_embeds.dtype), self.prompt_embeds):
            return 0
        old = None if self.attention_mask is None else self.attention_mask.bool()
        new = None if attention_mask is None else attention_mask[:, :P].bool()
        same_mask = (old is None or bool(old.all())) and (new is None or bool(new.all())) or (
            old is not None and new is not None and torch.equal(old, new))
        return P if same_mask else 0


class PromptCachingDenoiser(Denoiser):
    """Wraps an embeddings denoiser: the prompt's keys / values are computed once and reused.

    A call on the full sequence (start 0, no cache given) runs only x[:, P:] against the cached prompt
    keys; the prompt positions' logits are left uninitialised (the sampler only reads the generation
    region). Calls that already carry the sampler's own cache are passed through unchanged.
    """

    def __init__(self, inner: Denoiser, reuse: Optional[PromptCache] = None, slot: Optional[dict] = None):
        self.inner = inner
        self.reuse = reuse
        self.slot = slot if slot is not None else {}  # shared with copies: slot["cache"] is the PromptCache
        for name in ("mask_token_id", "eos_token_id", "pad_token_id", "max_sequence_length", "device"):
            setattr(self, name, getattr(inner, name))
        self.supports_cache = True

    def __getattr__(self, name: str):
        if name in ("inner", "reuse", "slot"):
            raise AttributeError(name)
        return getattr(self.inner, name)

    @property
    def cache(self) -> Optional[PromptCache]:
        return self.slot.get("cache")

    def with_prompt_embeds(self, prompt_embeds: torch.Tensor) -> "PromptCachingDenoiser":
        return PromptCachingDenoiser(self.inner.with_prompt_embeds(prompt_embeds), self.reuse, self.slot)

    def _prompt_mask(self, attention_mask):
        return None if attention_mask is None else attention_mask[: self.inner.prompt_embeds.shape[0], : self.P]

    @property
    def P(self) -> int:
        return self.inner.prompt_length

    def __call__(self, x, attention_mask=None, *, start=0, past_key_values=None, use_cache=False) -> DenoiserOutput:
        P = self.P
        if past_key_values is not None or start > 0:
            return self.inner(x, attention_mask, start=start, past_key_values=past_key_values, use_cache=use_cache)
        rows, L = x.shape
        if self.cache is None:
            covered = self.reuse.usable_for(self.inner.prompt_embeds, self._prompt_mask(attention_mask), rows) \
                if self.reuse is not None else 0
            if covered:
                out = self.inner(x[:, covered:], attention_mask, start=covered, use_cache=True,
                                 past_key_values=self.reuse.past_key_values)
                logits = _pad_prompt_logits(out.logits, covered)
            else:
                out = self.inner(x, attention_mask, use_cache=True)
                logits = out.logits
            kv = out.past_key_values
            self.slot["cache"] = PromptCache(self.inner.prompt_embeds, self._prompt_mask(attention_mask),
                                     tuple((k[:, :, :P], v[:, :, :P]) for k, v in kv))
            return DenoiserOutput(logits, kv if use_cache else None)
        out = self.inner(x[:, P:], attention_mask, start=P, past_key_values=self.cache.past_key_values,
                         use_cache=use_cache)
        return DenoiserOutput(_pad_prompt_logits(out.logits, P), out.past_key_values if use_cache else None)


def _pad_prompt_logits(logits: torch.Tensor, prompt_length: int) -> torch.Tensor:
    """(rows, L - P, V) -> (rows, L, V); the P prompt positions are left uninitialised.

    The sampler reads only the generation region's logits; allocating without writing the prompt part
    keeps the saving (a prompt of ~800 image rows times a 126K vocabulary is ~400 MB per call).
    """
    out = logits.new_empty((logits.shape[0], prompt_length + logits.shape[1], logits.shape[2]))
    out[:, prompt_length:] = logits
    return out


class _StopState:
    """Per-row stop positions (absolute, in the sampler's x), shared by the denoiser and the driver."""

    def __init__(self) -> None:
        self.stop_at: Optional[torch.Tensor] = None  # (B,) long; total length where no stop was found


class StopRegionDenoiser(Denoiser):
    """Wraps a denoiser; positions at or after a row's stop position get flat (all-zero) logits."""

    def __init__(self, inner: Denoiser, state: _StopState):
        self.inner = inner
        self.state = state
        for name in ("mask_token_id", "eos_token_id", "pad_token_id", "max_sequence_length", "supports_cache", "device"):
            setattr(self, name, getattr(inner, name))

    def __call__(self, x, attention_mask=None, *, start=0, past_key_values=None, use_cache=False) -> DenoiserOutput:
        out = self.inner(x, attention_mask, start=start, past_key_values=past_key_values, use_cache=use_cache)
        stop_at = self.state.stop_at
        if stop_at is None:
            return out
        rows, length = x.shape
        stop_at = stop_at.to(x.device).repeat(rows // stop_at.shape[0])  # CFG stacks copies of the batch
        positions = torch.arange(start, start + length, device=x.device)
        after = positions[None, :] >= stop_at[:, None]
        if bool(after.any()):
            logits = out.logits.masked_fill(after[..., None], 0.0)
            out = DenoiserOutput(logits=logits, past_key_values=out.past_key_values)
        return out

    def __getattr__(self, name: str):  # anything else (placeholder_id, prompt_length, ...) is the inner one's
        if name in ("inner", "state"):
            raise AttributeError(name)
        return getattr(self.inner, name)

    def with_prompt_embeds(self, prompt_embeds: torch.Tensor) -> "StopRegionDenoiser":
        return StopRegionDenoiser(self.inner.with_prompt_embeds(prompt_embeds), self.state)


def find_stop_positions(generated: torch.Tensor, stop_sequences: Sequence[Sequence[int]]) -> torch.Tensor:
    """Index (in `generated`, (B, G)) of the earliest occurrence of any stop sequence per row; G if none.

    The official code scans its stop sequences in order and keeps the first occurrence of the first
    one found; with one stop sequence (the usual `<|eot_id|>`) both are the same.
    """
    B, G = generated.shape
    best = torch.full((B,), G, dtype=torch.long, device=generated.device)
    for seq in stop_sequences:
        n = len(seq)
        if n == 0 or n > G:
            continue
        pattern = torch.as_tensor(list(seq), dtype=generated.dtype, device=generated.device)
        windows = generated.unfold(1, n, 1)  # (B, G - n + 1, n)
        hit = (windows == pattern).all(-1)
        first = torch.where(hit.any(-1), hit.to(torch.int64).argmax(-1), torch.full_like(best, G))
        best = torch.minimum(best, first)
    return best


def default_suppress_tokens(model: Any, tokenizer: Any = None) -> list[int]:
    """EOS, BOS, `<|start_header_id|>`, `<|end_header_id|>` ids: what LLaDA-V suppresses at masked positions.

    Read from `tokenizer` (or the tokenizer in the checkpoint folder); raises ValueError when they
    cannot be found (pass `suppress_tokens=[...]` explicitly then).
    """
    from llada.tokenization import special_token_ids

    if tokenizer is None:
        tokenizer = _checkpoint_tokenizer(model)
    if tokenizer is None:
        raise ValueError(
            "LLaDA-V generation suppresses EOS, BOS and the header tokens at masked positions; no tokenizer was "
            "given and none is in the checkpoint folder: pass tokenizer=... or suppress_tokens=[...]"
        )
    ids = special_token_ids(tokenizer, model.config)
    found = [ids.eos, ids.bos, ids.start_header, ids.end_header]
    missing = [n for n, v in zip(("eos", "bos", "start_header", "end_header"), found) if v is None]
    if missing:
        raise ValueError(f"the tokenizer lacks the special token(s) {', '.join(missing)}; pass suppress_tokens=[...]")
    return [int(v) for v in found]


def _checkpoint_tokenizer(model: Any):
    cached = getattr(model, "_llada_v_tokenizer", False)
    if cached is not False:
        return cached
    tok = None
    path = getattr(model.config, "_name_or_path", None) or getattr(model.config, "name_or_path", None)
    if path:
        try:
            from transformers import AutoTokenizer

            tok = AutoTokenizer.from_pretrained(path, local_files_only=True)
        except Exception:
            tok = None
    try:
        model._llada_v_tokenizer = tok
    except Exception:
        pass
    return tok


def _encode_stop_sequences(stop_sequences, tokenizer) -> list[list[int]]:
    out = []
    for s in stop_sequences or []:
        if isinstance(s, str):
            if tokenizer is None:
                raise ValueError(f"stop sequence {s!r} is text: pass tokenizer=... (or give it as token ids)")
            ids = tokenizer(s, add_special_tokens=False)["input_ids"]
            if not ids:
                raise ValueError(f"stop sequence {s!r} tokenizes to nothing")
            out.append(list(ids))
        elif isinstance(s, int):
            out.append([int(s)])
        else:
            out.append([int(t) for t in s])
    return out


def _to_pixel_values(model, images, image_sizes):
    """Accept pixel tensors (official) or images (paths, bytes, PIL): returns (pixel list, sizes)."""
    if images is None:
        return None, image_sizes
    if isinstance(images, torch.Tensor):
        images = list(images) if images.dim() == 5 else [images]
    images = list(images)
    if images and all(isinstance(im, torch.Tensor) for im in images):
        return images, image_sizes
    if any(isinstance(im, torch.Tensor) for im in images):
        raise ValueError("images: pass either pixel-value tensors or images (paths, bytes, PIL), not a mix")
    pixel_values, sizes = process_images(images, ImageProcessingConfig.from_model_config(model.config))
    if image_sizes is not None and [tuple(map(int, s)) for s in image_sizes] != sizes:
        raise ValueError(f"image_sizes {image_sizes} disagree with the images' own sizes {sizes}")
    return pixel_values, sizes


@torch.no_grad()
def generate(
    model: Any,
    input_ids: torch.Tensor,
    images: Optional[Sequence[Any]] = None,
    image_sizes: Optional[Sequence[Sequence[int]]] = None,
    attention_mask: Optional[torch.Tensor] = None,
    *,
    config: Optional[SamplerConfig] = None,
    stop_sequences: Optional[Sequence[Any]] = None,
    suppress_tokens: Optional[Sequence[int]] = None,
    tokenizer: Any = None,
    callback: Optional[Callable[[Any], Any]] = None,
    generator: Optional[torch.Generator] = None,
    return_dict: bool = False,
    prompt_cache: Any = False,
    **settings: Any,
):
    """Generate with LLaDA-V: splice the images into the prompt and run `sampling.stream` on the embeddings.

    Args:
        model: a `LlavaLLaDAModelLM`.
        input_ids: (P,) or (B, P) prompt ids, `-200` at each image; batches left-padded with `attention_mask`.
        images: one per placeholder, in order: pixel tensors (crops, 3, S, S) as the official code takes
            them, or images (paths, bytes, PIL) which are preprocessed with the model's settings.
        image_sizes: original (width, height) of each image (needed with pixel tensors).
        config / settings: `SamplerConfig` and overrides (steps, gen_length, block_length, temperature,
            cfg_scale, remasking, cache, threshold, ...). Official demo: 128 / 128 / 128.
        stop_sequences: strings (need `tokenizer`) or id lists, e.g. ["<|eot_id|>"]; None = no stop.
        suppress_tokens: ids set to -inf at masked positions; default EOS, BOS and the two header ids from
            the tokenizer (see `default_suppress_tokens`); [] disables.
        callback: called with each `sampling.StepEvent`.
        return_dict: return a `VisionGenerationResult`.
        prompt_cache: False (exact), True (compute the prompt's keys / values once), or the `PromptCache`
            of an earlier turn whose prompt this one extends (see the module docstring).

    Returns:
        LongTensor (B, n) of generated ids (without the prompt), cut at the stop sequence.
    """
    if input_ids.dim() == 1:
        input_ids = input_ids[None]
        attention_mask = None if attention_mask is None else attention_mask.reshape(1, -1)
    pixel_values, image_sizes = _to_pixel_values(model, images, image_sizes)
    if suppress_tokens is None:
        suppress_tokens = default_suppress_tokens(model, tokenizer)
    stops = _encode_stop_sequences(stop_sequences, tokenizer)
    base = config if config is not None else SamplerConfig()
    cfg = base.replace(**settings) if settings else base
    cfg = cfg.replace(suppress_tokens=tuple(sorted({*cfg.suppress_tokens, *map(int, suppress_tokens)}))).validate()

    device = model.get_input_embeddings().weight.device
    input_ids = input_ids.to(device)
    state = _StopState()
    inner: Denoiser = TokenDenoiser(model)
    caching = None
    if prompt_cache is not False and prompt_cache is not None:
        caching = PromptCachingDenoiser(inner, prompt_cache if isinstance(prompt_cache, PromptCache) else None)
        inner = caching
    denoiser = StopRegionDenoiser(inner, state)
    has_images = bool((input_ids == model.config.image_token_index).any()) or bool(pixel_values)
    if has_images or caching is not None:
        spliced = model.prepare_inputs_embeds(  # (text-only prompts too when caching: the cache lives on embeddings)
            input_ids, pixel_values, image_sizes, attention_mask=attention_mask, padding_side="left",
            max_length=model.config.context_length - cfg.gen_length,
            limit_reason=f"the model's context ({model.config.context_length}) minus gen_length ({cfg.gen_length})",
        )
        prompt_kwargs = dict(inputs_embeds=spliced.inputs_embeds, attention_mask=spliced.attention_mask)
        P = spliced.inputs_embeds.shape[1]
    else:
        prompt_kwargs = dict(input_ids=input_ids, attention_mask=attention_mask)
        P = input_ids.shape[1]
    B = input_ids.shape[0]
    total = P + cfg.gen_length
    state.stop_at = torch.full((B,), total, dtype=torch.long, device=device)

    nfe, x = 0, None
    for event in sampling.stream(denoiser, config=cfg, generator=generator, **prompt_kwargs):
        nfe, x = event.nfe, event.x
        if callback is not None:
            callback(event)
        if stops:
            found = find_stop_positions(x[:, P:], stops) + P
            state.stop_at = torch.minimum(state.stop_at, found)
            before_stop = torch.arange(total, device=device)[None, :] < state.stop_at[:, None]
            still_masked = (x == denoiser.mask_token_id) & before_stop
            still_masked[:, :P] = False
            if not bool(still_masked.any()):
                break  # every row is complete up to its stop: the official loop ends here
    if x is None:  # nothing to do (no masked position)
        raise ValueError("generate: the sampler took no step (gen_length must be >= 1)")
    lengths = (state.stop_at - P).clamp(max=cfg.gen_length)
    stopped = state.stop_at < total
    width = int(lengths.max())
    eos = model.config.eos_token_id if model.config.eos_token_id is not None else model.config.pad_token_id
    sequences = x[:, P:P + width].clone()
    keep = torch.arange(width, device=device)[None, :] < lengths[:, None]
    sequences = torch.where(keep, sequences, torch.full_like(sequences, int(eos)))
    if return_dict:
        return VisionGenerationResult(sequences, lengths, stopped, nfe, P, cfg,
                                      prompt_cache=caching.cache if caching is not None else None)
    return sequences


__all__ = [
    "generate", "VisionGenerationResult", "StopRegionDenoiser", "PromptCachingDenoiser", "PromptCache",
    "find_stop_positions", "default_suppress_tokens",
]
