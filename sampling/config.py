"""`SamplerConfig`: every setting of the reverse process, in one dataclass (the CLI and YAML fill it)."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field, fields, replace
from typing import Any, Optional, Sequence

from .remasking import REMASKING_RULES

CACHE_MODES = ("none", "prefix", "dual")


@dataclass
class SamplerConfig:
    """Settings of `sampling.generate`. Defaults are those of the reference `generate.py`.

    Reference reverse process:
        steps: total denoising steps, split evenly over the blocks (must be a multiple of the number of
            blocks and not more than gen_length).
        gen_length: tokens to generate (all start as the mask token).
        block_length: semi-autoregressive block size; gen_length must be a multiple of it.
            block_length == gen_length is a single block (pure diffusion).
        temperature: 0 = greedy; > 0 = Gumbel-max sampling of softmax(logits / T) in float64.
        cfg_scale: unsupervised classifier-free guidance w: logits = u + (w + 1)(c - u), where u are the
            logits of a copy with the prompt masked. 0 disables it.
        remasking: "low_confidence" | "random" | "topk_margin" | "entropy" (see `sampling.remasking`).

    Token controls:
        logits_eos_inf: EOS logit set to -inf before candidates are chosen (EOS never generated).
        confidence_eos_eot_inf: EOS / EoT candidates get the lowest confidence (LLaDA 1.5), so they are
            committed last; works at every temperature (see `suppress_eos_eot_confidence`).
        suppress_tokens: ids whose logits are set to -inf at masked positions before candidates are
            chosen (LLaDA-V suppresses EOS, BOS and the header ids).
        eos_token_id / eot_token_id: override the ids from the model config (EoT is not in the LLaDA
            config: pass it, e.g. from `llada.tokenization.special_token_ids(tokenizer).eot`).

    Fast decoding (Fast-dLLM; defaults keep the exact sampler):
        threshold: commit every masked position of the block whose confidence exceeds it (at least the
            exact schedule's count per step, so threshold=1.0 reproduces the exact sampler).
        factor: the factor rule instead of a fixed threshold (see `factor_count`).
        cache: "none" | "prefix" (keys/values of everything before the block reused) | "dual" (prefix and
            the suffix after the block reused: only the block is recomputed).
        cache_refresh_interval: recompute the cache every this many steps inside a block; None = once per
            block (at its first step). 1 = every step (identical to no cache).
        early_stop: stop once, after a finished block, every generated token after the first EOS is EOS;
            the remaining positions are filled with EOS.
    """

    steps: int = 128
    gen_length: int = 128
    block_length: int = 128
    temperature: float = 0.0
    cfg_scale: float = 0.0
    remasking: str = "low_confidence"
    logits_eos_inf: bool = False
    confidence_eos_eot_inf: bool = False
    suppress_tokens: Sequence[int] = field(default_factory=tuple)
    eos_token_id: Optional[int] = None
    eot_token_id: Optional[int] = None
    threshold: Optional[float] = None
    factor: Optional[float] = None
    cache: str = "none"
    cache_refresh_interval: Optional[int] = None
    early_stop: bool = False

    # ------------------------------------------------------------------ derived
    @property
    def num_blocks(self) -> int:
        return self.gen_length // self.block_length

    @property
    def steps_per_block(self) -> int:
        return self.steps // self.num_blocks

    def validate(self) -> "SamplerConfig":
        """Raise ValueError naming the first bad setting; returns self."""
        for name in ("steps", "gen_length", "block_length"):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise ValueError(f"{name} must be a positive integer, got {value!r}")
        if self.gen_length % self.block_length:
            raise ValueError(
                f"gen_length={self.gen_length} must be a multiple of block_length={self.block_length}"
            )
        if self.steps % self.num_blocks:
            raise ValueError(
                f"steps={self.steps} must be a multiple of the number of blocks "
                f"gen_length / block_length = {self.num_blocks}"
            )
        if self.steps > self.gen_length:
            raise ValueError(
                f"steps={self.steps} is more than gen_length={self.gen_length}: every step must unmask at least one token"
            )
        if self.temperature < 0:
            raise ValueError(f"temperature must be >= 0, got {self.temperature}")
        if self.cfg_scale < 0:
            raise ValueError(f"cfg_scale must be >= 0, got {self.cfg_scale}")
        if self.remasking not in REMASKING_RULES:
            raise ValueError(
                f"unknown remasking {self.remasking!r}; choose from {', '.join(REMASKING_RULES)}"
            )
        if self.threshold is not None and self.factor is not None:
            raise ValueError("threshold and factor are two parallel-decoding rules; set only one of them")
        if self.threshold is not None and not (0.0 <= self.threshold <= 1.0) and self.remasking != "entropy":
            raise ValueError(f"threshold must lie in [0, 1], got {self.threshold}")
        if self.factor is not None and self.factor <= 0:
            raise ValueError(f"factor must be > 0, got {self.factor}")
        if self.cache not in CACHE_MODES:
            raise ValueError(f"unknown cache {self.cache!r}; choose from {', '.join(CACHE_MODES)}")
        if self.cache_refresh_interval is not None and self.cache_refresh_interval < 1:
            raise ValueError(f"cache_refresh_interval must be >= 1 or None, got {self.cache_refresh_interval}")
        for t in self.suppress_tokens:
            if not isinstance(t, int) or t < 0:
                raise ValueError(f"suppress_tokens must hold non-negative token ids, got {t!r}")
        return self

    def replace(self, **changes: Any) -> "SamplerConfig":
        unknown = set(changes) - {f.name for f in fields(self)}
        if unknown:
            raise TypeError(f"unknown sampler setting(s): {', '.join(sorted(unknown))}")
        if "suppress_tokens" in changes and changes["suppress_tokens"] is not None:
            changes["suppress_tokens"] = tuple(changes["suppress_tokens"])
        return replace(self, **changes)

    @classmethod
    def from_dict(cls, values: dict[str, Any]) -> "SamplerConfig":
        """Build from a mapping (a YAML section); unknown keys are a TypeError naming them."""
        return cls().replace(**dict(values)).validate()

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["suppress_tokens"] = list(self.suppress_tokens)
        return d


__all__ = ["SamplerConfig", "CACHE_MODES"]
