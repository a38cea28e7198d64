"""`LLaDAConfig`: every field of the Hub `config.json` of the LLaDA checkpoints.

The Hub checkpoints (GSAI-ML/LLaDA-8B-Base, -Instruct, LLaDA-1.5) use OLMo-style field names
(`d_model`, `n_heads`, `n_layers`, ...). LLaDA-V's language model uses the LLaMA dialect of the same
model (`hidden_size`, `num_attention_heads`, ...); both are accepted and the LLaMA names are also
readable as attributes (`config.hidden_size is config.d_model`).
"""

from __future__ import annotations

from typing import Any

from transformers import PretrainedConfig

#: The mask id of the LLaDA family. Used only when a config carries no `mask_token_id` (LLaDA-V's
#: LLaMA-dialect config omits it); everything else reads the id from the config.
LLADA_FAMILY_MASK_TOKEN_ID = 126336

#: LLaMA-dialect field -> LLaDA (OLMo-style) field. One table, used by the config and the loader.
LLAMA_DIALECT_FIELDS = {
    "hidden_size": "d_model",
    "num_attention_heads": "n_heads",
    "num_key_value_heads": "n_kv_heads",
    "num_hidden_layers": "n_layers",
    "intermediate_size": "mlp_hidden_size",
    "max_position_embeddings": "max_sequence_length",
    "tie_word_embeddings": "weight_tying",
    "hidden_act": "activation_type",
}


class LLaDAConfig(PretrainedConfig):
    r"""Configuration of a LLaDA masked diffusion language model.

    Architecture fields (the ones the model reads):
        d_model: width of the residual stream (4096 for LLaDA-8B).
        n_heads: attention heads; head_dim = d_model // n_heads.
        n_kv_heads: key/value heads; fewer than `n_heads` means grouped-query attention. `None` means `n_heads`.
        n_layers: transformer blocks.
        mlp_hidden_size: SwiGLU hidden width (12288 for LLaDA-8B).
        vocab_size / embedding_size: tokenizer vocabulary and embedding rows (the LM head has
            `embedding_size` outputs).
        max_sequence_length: longest sequence the model accepts.
        rope_theta: RoPE base; rope_full_precision: RoPE computed in float32.
        rms_norm_eps: epsilon of the RMSNorms.
        mask_token_id: id of `<|mdm_mask|>`; eos_token_id / pad_token_id: `<|endoftext|>`.
        weight_tying: tie the LM head to the embedding (false for every LLaDA checkpoint).

    The remaining OLMo fields (alibi, block_group_size, init_*, dropouts, flash_attention, precision, ...)
    are kept so a config round-trips unchanged; the ones that select an architecture this
    implementation does not have (alibi, non-llama blocks, biases, non-RMS norms, qk layer norm,
    logit scaling) are refused with a clear error rather than silently ignored.
    """

    model_type = "llada"
    keys_to_ignore_at_inference = ["past_key_values"]
    attribute_map = {v_llama: v_llada for v_llama, v_llada in LLAMA_DIALECT_FIELDS.items()
                     if v_llama not in ("tie_word_embeddings", "hidden_act")}

    def __init__(
        self,
        d_model: int = 4096,
        n_heads: int = 32,
        n_kv_heads: int | None = None,
        n_layers: int = 32,
        mlp_hidden_size: int = 12288,
        mlp_ratio: int = 4,
        vocab_size: int = 126464,
        embedding_size: int | None = 126464,
        max_sequence_length: int = 4096,
        rope: bool = True,
        rope_theta: float = 500000.0,
        rope_full_precision: bool = True,
        rms_norm_eps: float = 1e-5,
        layer_norm_type: str = "rms",
        layer_norm_with_affine: bool = True,
        bias_for_layer_norm: bool = False,
        attention_layer_norm: bool = False,
        attention_layer_norm_with_affine: bool = True,
        activation_type: str = "silu",
        block_type: str = "llama",
        block_group_size: int = 1,
        alibi: bool = False,
        alibi_bias_max: float = 8.0,
        include_bias: bool = False,
        include_qkv_bias: bool = False,
        multi_query_attention: bool | None = None,
        attention_dropout: float = 0.0,
        residual_dropout: float = 0.0,
        embedding_dropout: float = 0.0,
        input_emb_norm: bool = False,
        scale_logits: bool = False,
        flash_attention: bool = False,
        init_device: str | None = "meta",
        init_fn: str = "mitchell",
        init_std: float = 0.02,
        init_cutoff_factor: float | None = None,
        precision: str | None = "amp_bf16",
        weight_tying: bool = False,
        mask_token_id: int | None = LLADA_FAMILY_MASK_TOKEN_ID,
        eos_token_id: int | None = 126081,
        pad_token_id: int | None = 126081,
        bos_token_id: int | None = None,
        use_cache: bool = False,
        **kwargs: Any,
    ):
        # LLaMA-dialect names (LLaDA-V's language model) override the OLMo defaults.
        dialect = {llada: kwargs.pop(llama) for llama, llada in LLAMA_DIALECT_FIELDS.items() if llama in kwargs}
        for dropped in ("attention_bias", "mlp_bias"):
            if kwargs.get(dropped):
                raise ValueError(f"LLaDAConfig: `{dropped}=True` is not supported (LLaDA has no biases)")
            kwargs.pop(dropped, None)
        d_model = dialect.get("d_model", d_model)
        n_heads = dialect.get("n_heads", n_heads)
        n_kv_heads = dialect.get("n_kv_heads", n_kv_heads)
        n_layers = dialect.get("n_layers", n_layers)
        mlp_hidden_size = dialect.get("mlp_hidden_size", mlp_hidden_size)
        max_sequence_length = dialect.get("max_sequence_length", max_sequence_length)
        weight_tying = dialect.get("weight_tying", weight_tying)
        activation_type = dialect.get("activation_type", activation_type)

        self.d_model = d_model
        self.n_heads = n_heads
        self.n_kv_heads = n_kv_heads
        self.n_layers = n_layers
        self.mlp_hidden_size = mlp_hidden_size
        self.mlp_ratio = mlp_ratio
        self.vocab_size = vocab_size
        self.embedding_size = embedding_size
        self.max_sequence_length = max_sequence_length
        self.rope = rope
        self.rope_theta = rope_theta
        self.rope_full_precision = rope_full_precision
        self.rms_norm_eps = rms_norm_eps
        self.layer_norm_type = layer_norm_type
        self.layer_norm_with_affine = layer_norm_with_affine
        self.bias_for_layer_norm = bias_for_layer_norm
        self.attention_layer_norm = attention_layer_norm
        self.attention_layer_norm_with_affine = attention_layer_norm_with_affine
        self.activation_type = activation_type
        self.block_type = block_type
        self.block_group_size = block_group_size
        self.alibi = alibi
        self.alibi_bias_max = alibi_bias_max
        self.include_bias = include_bias
        self.include_qkv_bias = include_qkv_bias
        self.multi_query_attention = multi_query_attention
        self.attention_dropout = attention_dropout
        self.residual_dropout = residual_dropout
        self.embedding_dropout = embedding_dropout
        self.input_emb_norm = input_emb_norm
        self.scale_logits = scale_logits
        self.flash_attention = flash_attention
        self.init_device = init_device
        self.init_fn = init_fn
        self.init_std = init_std
        self.init_cutoff_factor = init_cutoff_factor
        self.precision = precision
        self.weight_tying = weight_tying
        self.mask_token_id = mask_token_id if mask_token_id is not None else LLADA_FAMILY_MASK_TOKEN_ID
        self.use_cache = use_cache
        kwargs.setdefault("tie_word_embeddings", weight_tying)
        super().__init__(
            eos_token_id=eos_token_id, pad_token_id=pad_token_id, bos_token_id=bos_token_id, **kwargs
        )
        self.validate_architecture()

    # ------------------------------------------------------------------ derived sizes
    @property
    def num_kv_heads(self) -> int:
        if self.multi_query_attention:
            return 1
        return self.n_kv_heads if self.n_kv_heads is not None else self.n_heads

    @property
    def head_dim(self) -> int:
        return self.d_model // self.n_heads

    @property
    def padded_vocab_size(self) -> int:
        return self.embedding_size if self.embedding_size is not None else self.vocab_size

    def validate_architecture(self) -> None:
        """Refuse configurations that select an architecture this implementation does not have."""
        problems = []
        if self.d_model % self.n_heads:
            problems.append(f"d_model={self.d_model} is not divisible by n_heads={self.n_heads}")
        if self.n_heads % self.num_kv_heads:
            problems.append(f"n_heads={self.n_heads} is not divisible by n_kv_heads={self.num_kv_heads}")
        if self.head_dim % 2:
            problems.append(f"head_dim={self.head_dim} must be even for RoPE")
        if self.block_type not in ("llama", "sequential"):
            problems.append(f"block_type={self.block_type!r} (only 'llama' blocks are implemented)")
        if self.alibi:
            problems.append("alibi=True (LLaDA uses RoPE)")
        if not self.rope:
            problems.append("rope=False (LLaDA uses RoPE)")
        if self.layer_norm_type not in ("rms",):
            problems.append(f"layer_norm_type={self.layer_norm_type!r} (only 'rms')")
        if self.include_bias or self.include_qkv_bias or self.bias_for_layer_norm:
            problems.append("biases (include_bias / include_qkv_bias / bias_for_layer_norm)")
        if self.attention_layer_norm:
            problems.append("attention_layer_norm=True (qk-norm)")
        if self.scale_logits:
            problems.append("scale_logits=True")
        if self.activation_type not in ("silu", "swiglu"):
            problems.append(f"activation_type={self.activation_type!r} (only silu / SwiGLU)")
        if self.mask_token_id is not None and not (0 <= self.mask_token_id < self.padded_vocab_size):
            problems.append(f"mask_token_id={self.mask_token_id} outside the vocabulary ({self.padded_vocab_size})")
        if problems:
            raise ValueError("LLaDAConfig: unsupported configuration: " + "; ".join(problems))

    @classmethod
    def from_dict(cls, config_dict: dict[str, Any], **kwargs: Any):
        model_type = config_dict.get("model_type")
        if model_type is not None and model_type != cls.model_type:
            raise ValueError(
                f"LLaDAConfig: the checkpoint's config.json has model_type={model_type!r}, expected "
                f"{cls.model_type!r}; this is not a LLaDA checkpoint (load it with its own class)"
            )
        return super().from_dict(config_dict, **kwargs)
