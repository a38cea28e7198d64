"""`LLaDAModelLM`: the LLaDA mask predictor as a native `transformers.PreTrainedModel`.

Module names mirror the Hub weight names, so a Hub `state_dict` loads with no renaming:

    model.transformer.wte                      token embedding (embedding_size x d_model)
    model.transformer.blocks.{i}.attn_norm     RMSNorm before attention
    model.transformer.blocks.{i}.{q,k,v}_proj  attention projections (k/v have n_kv_heads heads)
    model.transformer.blocks.{i}.attn_out      attention output projection
    model.transformer.blocks.{i}.ff_norm       RMSNorm before the MLP
    model.transformer.blocks.{i}.ff_proj       SwiGLU gate projection
    model.transformer.blocks.{i}.up_proj       SwiGLU up projection
    model.transformer.blocks.{i}.ff_out        SwiGLU down projection
    model.transformer.ln_f                     final RMSNorm
    model.transformer.ff_out                   LM head (untied)

Block (LLaDA paper, App. B; LLaMA-style pre-norm):
    h   = x + W_o Attn(RoPE(W_q n), RoPE(W_k n), W_v n),  n = RMSNorm(x)
    out = h + W_down(silu(W_gate m) * W_up m),           m = RMSNorm(h)
Attention is bidirectional: the mask predictor sees the whole (partially masked) sequence.
"""

from __future__ import annotations

import os
from pathlib import Path
from dataclasses import dataclass
from typing import Optional, Sequence, Union

import torch
import torch.nn.functional as F
from torch import nn
from transformers import PreTrainedModel
from transformers.modeling_outputs import ModelOutput

from .configuration_llada import LLaDAConfig
from .loading import (
    LLAMA_KEY_MAPPING,
    CheckpointError,
    check_local_checkpoint,
    explain_resolution_error,
    raise_on_loading_problems,
)

#: Per-layer (key, value) tensors of shape (batch, n_kv_heads, positions, head_dim), RoPE already applied.
KVCache = Sequence[tuple[torch.Tensor, torch.Tensor]]


@dataclass
class LLaDAOutput(ModelOutput):
    """Output of `LLaDAModelLM.forward`.

    logits: (batch, length, embedding_size) mask-predictor logits for every input position.
    loss: cross entropy on `labels != -100` when labels are given (plain CE, no 1/t weighting;
        the diffusion losses live in `llada.losses`).
    past_key_values: with `use_cache=True`, per-layer (key, value) over all attended positions
        (the given cache followed by the current input), for the approximate KV caches of the sampler.
    hidden_states: with `output_hidden_states=True`, the embedding output and each block's output.
    """

    loss: Optional[torch.Tensor] = None
    logits: Optional[torch.Tensor] = None
    past_key_values: Optional[tuple] = None
    hidden_states: Optional[tuple] = None


class RMSNorm(nn.Module):
    """RMSNorm computed in float32, cast back to the input dtype, then scaled by its weight."""

    def __init__(self, dim: int, eps: float):
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        dtype = x.dtype
        x32 = x.float()
        x32 = x32 * torch.rsqrt(x32.pow(2).mean(-1, keepdim=True) + self.eps)
        return self.weight * x32.to(dtype)


def rope_cos_sin(positions: torch.Tensor, head_dim: int, theta: float) -> tuple[torch.Tensor, torch.Tensor]:
    """RoPE tables in float32 for the given integer positions (shape (L,) or (B, L)).

    Inverse frequencies theta^(-2i/d), i = 0..d/2-1, duplicated over the two halves (split-halves form).
    Returns cos, sin with shape (..., L, head_dim).
    """
    inv_freq = 1.0 / (theta ** (torch.arange(0, head_dim, 2, device=positions.device, dtype=torch.float32) / head_dim))
    freqs = positions.float()[..., None] * inv_freq
    emb = torch.cat((freqs, freqs), dim=-1)
    return emb.cos(), emb.sin()


def apply_rope(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor, full_precision: bool = True) -> torch.Tensor:
    """Rotate `x` (B, H, L, D) by RoPE in split-halves form: x*cos + rotate_half(x)*sin."""
    dtype = x.dtype
    if full_precision:
        x = x.float()
    x1, x2 = x.chunk(2, dim=-1)
    rotated = torch.cat((-x2, x1), dim=-1)
    out = x * cos.to(x.dtype) + rotated * sin.to(x.dtype)
    return out.to(dtype)


def _positions(keep: Union[int, slice, torch.Tensor]) -> Union[slice, torch.Tensor]:
    """`logits_to_keep` as an index along the sequence: int k -> the last k positions (0 -> all)."""
    if isinstance(keep, int):
        return slice(-keep, None) if keep > 0 else slice(None)
    return keep


class LLaDABlock(nn.Module):
    """One LLaMA-style pre-norm block with bidirectional (grouped-query) attention and a SwiGLU MLP."""

    def __init__(self, config: LLaDAConfig):
        super().__init__()
        d, h, kvh, hd = config.d_model, config.n_heads, config.num_kv_heads, config.head_dim
        self.n_heads, self.n_kv_heads, self.head_dim = h, kvh, hd
        self.rope_full_precision = config.rope_full_precision
        self.attention_dropout = config.attention_dropout
        self.attn_norm = RMSNorm(d, config.rms_norm_eps)
        self.q_proj = nn.Linear(d, h * hd, bias=False)
        self.k_proj = nn.Linear(d, kvh * hd, bias=False)
        self.v_proj = nn.Linear(d, kvh * hd, bias=False)
        self.attn_out = nn.Linear(h * hd, d, bias=False)
        self.ff_norm = RMSNorm(d, config.rms_norm_eps)
        self.ff_proj = nn.Linear(d, config.mlp_hidden_size, bias=False)
        self.up_proj = nn.Linear(d, config.mlp_hidden_size, bias=False)
        self.ff_out = nn.Linear(config.mlp_hidden_size, d, bias=False)

    def forward(
        self,
        x: torch.Tensor,
        cos: torch.Tensor,
        sin: torch.Tensor,
        attention_bias: Optional[torch.Tensor],
        past: Optional[tuple[torch.Tensor, torch.Tensor]] = None,
    ) -> tuple[torch.Tensor, tuple[torch.Tensor, torch.Tensor]]:
        B, L, _ = x.shape
        n = self.attn_norm(x)
        q = self.q_proj(n).view(B, L, self.n_heads, self.head_dim).transpose(1, 2)
        k = self.k_proj(n).view(B, L, self.n_kv_heads, self.head_dim).transpose(1, 2)
        v = self.v_proj(n).view(B, L, self.n_kv_heads, self.head_dim).transpose(1, 2)
        q = apply_rope(q, cos, sin, self.rope_full_precision)
        k = apply_rope(k, cos, sin, self.rope_full_precision)
        if past is not None:
            k = torch.cat((past[0].to(k.dtype), k), dim=2)
            v = torch.cat((past[1].to(v.dtype), v), dim=2)
        present = (k, v)
        if self.n_kv_heads != self.n_heads:
            rep = self.n_heads // self.n_kv_heads
            k = k.repeat_interleave(rep, dim=1)
            v = v.repeat_interleave(rep, dim=1)
        att = F.scaled_dot_product_attention(
            q, k, v,
            attn_mask=attention_bias,
            dropout_p=self.attention_dropout if self.training else 0.0,
            is_causal=False,
        )
        att = att.transpose(1, 2).reshape(B, L, self.n_heads * self.head_dim)
        h = x + self.attn_out(att)
        m = self.ff_norm(h)
        out = h + self.ff_out(F.silu(self.ff_proj(m)) * self.up_proj(m))
        return out, present


class LLaDAPreTrainedModel(PreTrainedModel):
    config_class = LLaDAConfig
    base_model_prefix = "model"
    supports_gradient_checkpointing = True
    _no_split_modules = ["LLaDABlock"]
    _supports_sdpa = True
    _keys_to_ignore_on_load_unexpected = [r"rotary_emb\.inv_freq"]

    @torch.no_grad()
    def _init_weights(self, module: nn.Module) -> None:
        std = self.config.init_std
        if isinstance(module, nn.Linear):
            nn.init.normal_(module.weight, mean=0.0, std=std)
        elif isinstance(module, nn.Embedding):
            nn.init.normal_(module.weight, mean=0.0, std=std)
        elif isinstance(module, RMSNorm):
            nn.init.ones_(module.weight)


class LLaDAModel(LLaDAPreTrainedModel):
    """The transformer (`model.transformer.*` in the checkpoint), LM head included as the Hub keeps it."""

    def __init__(self, config: LLaDAConfig):
        super().__init__(config)
        self.transformer = nn.ModuleDict(
            dict(
                wte=nn.Embedding(config.padded_vocab_size, config.d_model),
                blocks=nn.ModuleList([LLaDABlock(config) for _ in range(config.n_layers)]),
                ln_f=RMSNorm(config.d_model, config.rms_norm_eps),
            )
        )
        if not config.weight_tying:
            self.transformer["ff_out"] = nn.Linear(config.d_model, config.padded_vocab_size, bias=False)
        self.gradient_checkpointing = False
        self.post_init()

    def get_input_embeddings(self) -> nn.Embedding:
        return self.transformer["wte"]

    def set_input_embeddings(self, value: nn.Embedding) -> None:
        self.transformer["wte"] = value

    def forward(
        self,
        input_ids: Optional[torch.LongTensor] = None,
        attention_mask: Optional[torch.Tensor] = None,
        inputs_embeds: Optional[torch.FloatTensor] = None,
        position_ids: Optional[torch.LongTensor] = None,
        past_key_values: Optional[KVCache] = None,
        use_cache: bool = False,
        output_hidden_states: bool = False,
        logits_to_keep: Union[int, slice, torch.Tensor, None] = None,
        **kwargs,
    ) -> LLaDAOutput:
        """Embeddings -> blocks -> final norm -> LM head. See `LLaDAModelLM` for the arguments."""
        if (input_ids is None) == (inputs_embeds is None):
            raise ValueError("LLaDA forward: pass exactly one of `input_ids` or `inputs_embeds`")
        t = self.transformer
        if inputs_embeds is None:
            if input_ids.dim() == 1:
                input_ids = input_ids[None]
            vocab = self.config.padded_vocab_size
            if input_ids.numel() and (int(input_ids.min()) < 0 or int(input_ids.max()) >= vocab):
                raise ValueError(
                    f"LLaDAModel.forward: input_ids must lie in [0, {vocab}); got values in "
                    f"[{int(input_ids.min())}, {int(input_ids.max())}]"
                )
            x = t["wte"](input_ids)
        else:
            x = inputs_embeds
        B, L = x.shape[:2]
        past_len = 0 if not past_key_values else past_key_values[0][0].shape[2]
        total = past_len + L
        if total > self.config.max_sequence_length:
            raise ValueError(
                f"LLaDAModel.forward: sequence of {total} positions is longer than the model's "
                f"max_sequence_length={self.config.max_sequence_length}"
            )
        if position_ids is None:
            position_ids = torch.arange(past_len, past_len + L, device=x.device)
        cos, sin = rope_cos_sin(position_ids, self.config.head_dim, self.config.rope_theta)
        if cos.dim() == 3:  # per-row positions -> (B, 1, L, D) to broadcast over heads
            cos, sin = cos[:, None], sin[:, None]

        attention_bias = None
        if attention_mask is not None:
            if attention_mask.shape != (B, total):
                raise ValueError(
                    f"LLaDAModel.forward: attention_mask has shape {tuple(attention_mask.shape)}, "
                    f"expected (batch, keys) = {(B, total)}"
                )
            if not bool(attention_mask.bool().all()):
                bias_dtype = x.dtype if x.is_floating_point() else torch.float32
                keep = attention_mask.to(device=x.device, dtype=bias_dtype)
                attention_bias = ((1.0 - keep) * torch.finfo(bias_dtype).min)[:, None, None, :]

        hidden_states = (x,) if output_hidden_states else None
        presents = [] if use_cache else None
        for i, block in enumerate(t["blocks"]):
            past = past_key_values[i] if past_key_values else None
            if self.gradient_checkpointing and self.training:
                x, present = self._gradient_checkpointing_func(block.__call__, x, cos, sin, attention_bias, past)
            else:
                x, present = block(x, cos, sin, attention_bias, past)
            if use_cache:
                presents.append(present)
            if output_hidden_states:
                hidden_states += (x,)
        x = t["ln_f"](x)
        if logits_to_keep is not None:
            x = x[:, _positions(logits_to_keep)]
        head = t["wte"].weight if self.config.weight_tying else t["ff_out"].weight
        logits = F.linear(x, head)

        return LLaDAOutput(
            logits=logits,
            past_key_values=tuple(presents) if use_cache else None,
            hidden_states=hidden_states,
        )



class LLaDAModelLM(LLaDAPreTrainedModel):
    """LLaDA mask predictor: tokens (some of them `<|mdm_mask|>`) in, logits for every position out.

    `forward(input_ids | inputs_embeds, attention_mask=None, position_ids=None, past_key_values=None,
    use_cache=False, labels=None)` returns `LLaDAOutput` with `.logits` of shape
    (batch, length, embedding_size).

    - `attention_mask` (batch, keys) with 1 for real tokens and 0 for padding: padded keys get
      `finfo.min` added to their attention scores, as the Hub code does since October 2025; queries at
      padded positions still produce (ignored) logits.
    - RoPE positions are 0..L-1 for every row unless `position_ids` are given (the sampler's KV cache
      passes the absolute positions of the tokens it recomputes).
    - `past_key_values`: per-layer (key, value) of positions computed earlier (RoPE applied); the current
      tokens attend to them and to themselves. The attention mask, if given, then covers the cached keys
      followed by the current ones.
    - `logits_to_keep`: compute the LM head only where needed: an int k keeps the last k positions (0: all),
      a slice or a 1-D index tensor selects positions (the sampler asks for the current block only).
    """

    _tied_weights_keys: dict = {}

    def __init__(self, config: LLaDAConfig):
        super().__init__(config)
        self.model = LLaDAModel(config)
        self.post_init()

    # -------------------------------------------------------------- loading
    @classmethod
    def from_pretrained(
        cls,
        pretrained_model_name_or_path,
        *model_args,
        allow_pickle: bool = False,
        strict: bool = True,
        **kwargs,
    ):
        """Load a Hub id or a local folder in the Hub layout (transformers' `from_pretrained`).

        Everything transformers accepts works (`dtype`, `device_map="auto"`, `quantization_config`,
        `revision`, `cache_dir`, `local_files_only`, ...). In addition:

        - LLaMA-style key names (LLaDA-V's language model) are renamed with `llada.LLAMA_KEY_MAPPING`;
        - `allow_pickle=False` (default) refuses pickle `.bin` checkpoints;
        - `strict=True` (default) makes a missing tensor an error instead of a random initialisation;
          a tensor of the wrong shape is always an error.
        """
        folder = Path(os.fspath(pretrained_model_name_or_path)) if pretrained_model_name_or_path is not None else None
        if folder is not None and folder.is_dir():
            check_local_checkpoint(folder, allow_pickle)
        kwargs.setdefault("key_mapping", dict(LLAMA_KEY_MAPPING))
        if not allow_pickle:
            kwargs["use_safetensors"] = True
        want_info = kwargs.pop("output_loading_info", False)
        # transformers' own mismatch error does not name the tensor: collect mismatches and raise our own.
        allow_mismatch = kwargs.pop("ignore_mismatched_sizes", False)
        try:
            model, info = super().from_pretrained(
                pretrained_model_name_or_path, *model_args, output_loading_info=True, ignore_mismatched_sizes=True,
                **kwargs,
            )
        except CheckpointError:
            raise
        except OSError as err:
            raise explain_resolution_error(pretrained_model_name_or_path, err) from err
        if allow_mismatch:
            info = {**info, "mismatched_keys": []}
        raise_on_loading_problems(pretrained_model_name_or_path, info, strict)
        # Saving always writes the Hub LLaDA names, whatever dialect the weights came in.
        model._weight_conversions = None
        return (model, info) if want_info else model

    # -------------------------------------------------------------- embeddings / head
    def get_input_embeddings(self) -> nn.Embedding:
        return self.model.transformer["wte"]

    def set_input_embeddings(self, value: nn.Embedding) -> None:
        self.model.transformer["wte"] = value

    def get_output_embeddings(self) -> Optional[nn.Linear]:
        return None if self.config.weight_tying else self.model.transformer["ff_out"]

    def set_output_embeddings(self, value: nn.Linear) -> None:
        self.model.transformer["ff_out"] = value

    @property
    def mask_token_id(self) -> int:
        return self.config.mask_token_id

    # -------------------------------------------------------------- forward
    def forward(
        self,
        input_ids: Optional[torch.LongTensor] = None,
        attention_mask: Optional[torch.Tensor] = None,
        inputs_embeds: Optional[torch.FloatTensor] = None,
        position_ids: Optional[torch.LongTensor] = None,
        past_key_values: Optional[KVCache] = None,
        use_cache: bool = False,
        labels: Optional[torch.LongTensor] = None,
        output_hidden_states: bool = False,
        return_dict: Optional[bool] = None,
        logits_to_keep: Union[int, slice, torch.Tensor, None] = None,
        **kwargs,
    ) -> LLaDAOutput:
        out = self.model(
            input_ids=input_ids,
            attention_mask=attention_mask,
            inputs_embeds=inputs_embeds,
            position_ids=position_ids,
            past_key_values=past_key_values,
            use_cache=use_cache,
            output_hidden_states=output_hidden_states,
            logits_to_keep=logits_to_keep,
        )
        if labels is not None and logits_to_keep is not None:
            raise ValueError("LLaDAModelLM.forward: labels need the logits of every position; drop logits_to_keep")
        logits = out.logits
        loss = None
        if labels is not None:
            loss = F.cross_entropy(logits.float().reshape(-1, logits.shape[-1]), labels.reshape(-1), ignore_index=-100)
        return LLaDAOutput(
            loss=loss,
            logits=logits,
            past_key_values=out.past_key_values,
            hidden_states=out.hidden_states,
        )


__all__ = ["LLaDAModelLM", "LLaDAModel", "LLaDAPreTrainedModel", "LLaDAOutput", "RMSNorm", "apply_rope", "rope_cos_sin"]
