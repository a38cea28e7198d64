"""Checkpoint loading: Hub ids or folders, the LLaMA-style key dialect, and clear errors.

Loading itself is transformers' `from_pretrained` (safetensors shards and index, `dtype`, `device_map`
through accelerate, meta-device initialisation, bitsandbytes `quantization_config`, the Hub cache and
`HF_HUB_OFFLINE`). This module adds what LLaDA users need on top:

- one mapping table from the LLaMA-style key names used by LLaDA-V's language model to the Hub
  LLaDA names (applied while loading; saving always writes the Hub LLaDA names);
- refusal of pickle checkpoints (`pytorch_model.bin`) unless `allow_pickle=True`;
- a missing tensor is an error (transformers would silently initialise it at random), as is a tensor
  of the wrong shape, both naming the tensor.
"""

from __future__ import annotations

import json
import os
import re
from pathlib import Path
from typing import Any

#: LLaMA-style key -> Hub LLaDA key, as (regex, replacement) applied in order to every checkpoint key.
#: Keys already in the LLaDA form match none of them.
LLAMA_KEY_MAPPING: dict[str, str] = {
    r"^model\.embed_tokens\.": "model.transformer.wte.",
    r"^model\.layers\.": "model.transformer.blocks.",
    r"\.self_attn\.o_proj\.": ".attn_out.",
    r"^(model\.(?:layers|transformer\.blocks)\.\d+)\.self_attn\.(?=[qkv]_proj\.)": r"\1.",
    r"\.mlp\.gate_proj\.": ".ff_proj.",
    r"\.mlp\.up_proj\.": ".up_proj.",
    r"\.mlp\.down_proj\.": ".ff_out.",
    r"\.input_layernorm\.": ".attn_norm.",
    r"\.post_attention_layernorm\.": ".ff_norm.",
    r"^model\.norm\.": "model.transformer.ln_f.",
    r"^lm_head\.": "model.transformer.ff_out.",
}
_COMPILED = [(re.compile(k), v) for k, v in LLAMA_KEY_MAPPING.items()]


def rename_llama_key(key: str) -> str:
    """Map one LLaMA-style parameter name to its Hub LLaDA name (identity for LLaDA names)."""
    for pattern, repl in _COMPILED:
        key = pattern.sub(repl, key)
    return key


def convert_llama_state_dict(state_dict: dict[str, Any]) -> dict[str, Any]:
    """Rename every key of a LLaMA-style state dict with `LLAMA_KEY_MAPPING`."""
    return {rename_llama_key(k): v for k, v in state_dict.items()}


class CheckpointError(OSError):
    """A checkpoint that cannot be loaded as it is: the message names the file or tensor at fault."""


_SAFE_WEIGHTS = ("model.safetensors", "model.safetensors.index.json")
_PICKLE_SUFFIXES = (".bin", ".pt", ".pth", ".ckpt")


def check_local_checkpoint(folder: Path, allow_pickle: bool) -> None:
    """Refuse a local folder that has no config, no weights, or only pickle weights (unless allowed)."""
    if not folder.is_dir():
        return
    if not (folder / "config.json").is_file():
        raise CheckpointError(f"{folder}: no config.json in this folder; it is not a checkpoint in the Hub layout")
    files = [p.name for p in folder.iterdir() if p.is_file()]
    safetensors = [f for f in files if f.endswith(".safetensors") or f == "model.safetensors.index.json"]
    pickles = [f for f in files if f.endswith(_PICKLE_SUFFIXES)]
    index = folder / "model.safetensors.index.json"
    if index.is_file():
        try:
            weight_map = json.loads(index.read_text())["weight_map"]
        except (json.JSONDecodeError, KeyError) as err:
            raise CheckpointError(f"{index}: malformed safetensors index ({err})") from err
        missing = sorted({f for f in weight_map.values() if not (folder / f).is_file()})
        if missing:
            raise CheckpointError(f"{index}: names shard(s) that are not in the folder: {', '.join(missing)}")
    if not safetensors:
        if pickles and not allow_pickle:
            raise CheckpointError(
                f"{folder}: only pickle weights ({', '.join(sorted(pickles))}); pickle files can run arbitrary "
                f"code when loaded. Convert them to safetensors, or pass allow_pickle=True if you trust the source"
            )
        if not pickles:
            raise CheckpointError(
                f"{folder}: no weights found (expected {' or '.join(_SAFE_WEIGHTS)}, possibly sharded)"
            )


def raise_on_loading_problems(name: str | os.PathLike, info: dict[str, Any], strict: bool) -> None:
    """Turn transformers' loading info into errors that name the tensors."""
    problems = []
    missing = sorted(info.get("missing_keys") or [])
    mismatched = info.get("mismatched_keys") or []
    if missing and strict:
        problems.append(f"missing tensor(s): {', '.join(missing[:8])}" + (" ..." if len(missing) > 8 else ""))
    if mismatched:
        shown = []
        for item in list(mismatched)[:8]:
            if isinstance(item, (tuple, list)) and len(item) == 3:
                key, ckpt_shape, model_shape = item
                shown.append(f"{key} has shape {tuple(ckpt_shape)} in the checkpoint, expected {tuple(model_shape)}")
            else:
                shown.append(str(item))
        problems.append("misshapen tensor(s): " + "; ".join(shown))
    if problems:
        raise CheckpointError(f"{name}: cannot load this checkpoint: " + " | ".join(problems))


def explain_resolution_error(name: str | os.PathLike, err: OSError) -> CheckpointError:
    """An OSError from resolving a Hub id or path, restated with the name and the offline setting."""
    offline = os.environ.get("HF_HUB_OFFLINE", "").lower() in ("1", "true", "yes", "on")
    where = "offline mode (HF_HUB_OFFLINE=1): only the local Hub cache is searched" if offline else "online"
    return CheckpointError(f"{name}: could not be resolved as a local folder or a Hub id ({where}): {err}")
