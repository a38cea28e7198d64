"""Samplers for LLaDA masked diffusion models: the reference reverse process and fast approximations.

One implementation shared by text and vision:

    import sampling
    out = sampling.generate(model, input_ids, attention_mask=None, steps=128, gen_length=128,
                            block_length=32, temperature=0.0, cfg_scale=0.0, remasking="low_confidence")
    # out: (B, P + gen_length) prompt + generated ids, as the reference generate.py returns

    # prompt given as embeddings (LLaDA-V): returns only the generated ids (B, gen_length)
    gen = sampling.generate(language_model, inputs_embeds=prompt_embeds, attention_mask=mask, ...)

    # fast decoding (Fast-dLLM): parallel commits + dual KV cache, with the NFE count
    res = sampling.generate(model, ids, steps=256, gen_length=256, block_length=32,
                            threshold=0.9, cache="dual", return_dict=True)
    res.sequences, res.nfe

    # streaming: one StepEvent per step (sequence, committed positions, their confidences)
    for event in sampling.stream(model, ids, steps=64, gen_length=64, block_length=64): ...

Settings live in one dataclass, `SamplerConfig` (pass `config=` and/or keyword overrides).

The model-call interface (`sampling.denoiser`, stable and public): the sampler holds the sequence as
ids and asks a `Denoiser` for logits,

    denoiser(x (B, L) ids, attention_mask (B, S + L) or None, *, start=0,
             past_key_values=None, use_cache=False) -> DenoiserOutput(logits (B, L, V), past_key_values)

`TokenDenoiser(model)` wraps a LLaDA model; `EmbeddingsDenoiser(model, prompt_embeds)` feeds prompt
embeddings at prompt positions, token embeddings elsewhere and the mask embedding wherever x is the
mask id (so CFG's prompt-masked copy works for embeddings too). Other models (LLaDA-V) subclass
`Denoiser` and are passed to `generate` in place of the model. See `sampling/denoiser.py`.

Paper concepts, one function each: `num_transfer_tokens` (tokens per step), `gumbel_max_sample`,
`low_confidence_remasking`, `random_remasking`, `topk_margin_remasking`, `entropy_remasking`,
`classifier_free_guidance`, `suppress_eos_eot_confidence`, `threshold_count` and `factor_count`
(Fast-dLLM parallel decoding).
"""

from .config import CACHE_MODES, SamplerConfig
from .denoiser import Denoiser, DenoiserOutput, EmbeddingsDenoiser, TokenDenoiser, as_denoiser
from .generate import GenerationResult, StepEvent, classifier_free_guidance, generate, stream
from .remasking import (
    REMASKING_RULES,
    entropy_remasking,
    factor_count,
    gumbel_max_sample,
    low_confidence_remasking,
    random_remasking,
    select_top_k,
    suppress_eos_eot_confidence,
    threshold_count,
    topk_margin_remasking,
)
from .schedule import num_transfer_tokens, scheduled_count

__all__ = [
    "generate",
    "stream",
    "SamplerConfig",
    "CACHE_MODES",
    "GenerationResult",
    "StepEvent",
    "Denoiser",
    "DenoiserOutput",
    "TokenDenoiser",
    "EmbeddingsDenoiser",
    "as_denoiser",
    "num_transfer_tokens",
    "scheduled_count",
    "gumbel_max_sample",
    "classifier_free_guidance",
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
