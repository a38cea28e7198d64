"""`LlavaLLaDAConfig`: the config of a LLaDA-V checkpoint (`model_type "llava_llada"`).

A LLaDA-V `config.json` is the LLaMA-dialect LLaDA config of its language model (`hidden_size`,
`num_attention_heads`, ... which `LLaDAConfig` maps to its own names) plus the LLaVA-NeXT fields of
the vision side:

    mm_vision_tower          the SigLIP tower: a Hub id ("google/siglip2-so400m-patch14-384") or a
                             folder name, resolved relative to the checkpoint folder first
    mm_vision_select_layer   which hidden state of the tower feeds the connector (-2: the last encoder
                             layer is dropped)
    mm_vision_select_feature "patch" (every token; SigLIP has no CLS token) or "cls_patch"
    mm_hidden_size           width of the tower features (1152 for SigLIP so400m)
    vision_tower_type        "siglip" (transformers' SiglipVisionModel) or "open_clip" (an open_clip ViT
                             named by open_clip_model, built at open_clip_image_size with patches of
                             open_clip_patch_size; its weights live in the LLaDA-V checkpoint)
    mm_projector_type        "mlp2x_gelu" (Linear, GELU, Linear), "mlpNx_gelu", "linear" or "identity"
    mm_patch_merge_type      "spatial_unpad" (anyres tiles unpadded, `image_newline` after each row),
                             "spatial", or "flat"
    image_aspect_ratio       "pad" (one square crop), "anyres", "anyres_max_N" (tiles, feature map
                             downscaled to about N crops), or "square" (plain resize)
    image_grid_pinpoints     the (width, height) resolutions anyres may tile to, as a list or the
                             "(1x1),...,(6x6)" range string of LLaVA-OneVision
    tokenizer_model_max_length, mm_newline_position, ... kept so that a config round-trips.

The tower's own config (a `SiglipVisionConfig`) is stored under `vision_config` when this project
saves a checkpoint. A checkpoint saved by the official code has none: it is then read from the folder
named by `mm_vision_tower` inside the checkpoint folder, or from that Hub id, or, for the two towers
LLaDA-V is released with, from the known SigLIP so400m sizes (the tower weights are always in the
LLaDA-V checkpoint itself; only their shapes are needed).
"""

from __future__ import annotations

import json
import os
import re
from pathlib import Path
from typing import Any, Optional

from transformers import SiglipVisionConfig

from llada import LLaDAConfig

#: The sizes of the SigLIP so400m/14 @ 384 towers (google/siglip-so400m-patch14-384 and
#: google/siglip2-so400m-patch14-384, identical shapes): used only when neither a `vision_config`
#: nor the tower's own config.json can be found (offline use of the official checkpoint).
KNOWN_SIGLIP_TOWERS: dict[str, dict[str, Any]] = {
    "siglip-so400m-patch14-384": dict(
        hidden_size=1152, intermediate_size=4304, num_hidden_layers=27, num_attention_heads=16,
        image_size=384, patch_size=14, hidden_act="gelu_pytorch_tanh", layer_norm_eps=1e-6,
    ),
    "siglip2-so400m-patch14-384": dict(
        hidden_size=1152, intermediate_size=4304, num_hidden_layers=27, num_attention_heads=16,
        image_size=384, patch_size=14, hidden_act="gelu_pytorch_tanh", layer_norm_eps=1e-6,
    ),
}

IMAGE_ASPECT_RATIOS = ("pad", "square", "anyres")  # plus "anyres_max_N"
PATCH_MERGE_TYPES = ("flat", "spatial", "spatial_unpad")


def _vision_config_from_dict(d: dict[str, Any]) -> SiglipVisionConfig:
    d = dict(d)
    if d.get("model_type") == "siglip":  # a full SigLIP (text + vision) config: take its vision part
        d = dict(d.get("vision_config") or {})
    d.pop("model_type", None)
    for key in ("architectures", "transformers_version", "torch_dtype", "dtype", "image_mean", "image_std"):
        d.pop(key, None)
    return SiglipVisionConfig(**d)


def resolve_vision_config(mm_vision_tower: Optional[str], checkpoint: Optional[str]) -> Optional[SiglipVisionConfig]:
    """Find the config of the vision tower named by `mm_vision_tower` (see the module docstring).

    Order: `<checkpoint folder>/<mm_vision_tower>/config.json`, a local folder `mm_vision_tower`, the
    Hub id's config.json in the Hub cache, the known so400m sizes (no network needed for the towers
    LLaDA-V is released with), the Hub id online. Returns None when `mm_vision_tower` is not set.
    """
    if not mm_vision_tower:
        return None
    candidates = []
    if checkpoint and os.path.isdir(checkpoint):
        candidates.append(Path(checkpoint) / mm_vision_tower / "config.json")
    candidates.append(Path(mm_vision_tower) / "config.json")
    for path in candidates:
        if path.is_file():
            return _vision_config_from_dict(json.loads(path.read_text()))
    is_hub_id = bool(re.fullmatch(r"[\w.-]+/[\w.-]+", mm_vision_tower)) and not os.path.exists(mm_vision_tower)
    name = mm_vision_tower.rstrip("/").split("/")[-1]
    if is_hub_id:  # the Hub cache first (no network), then the known sizes, then the Hub itself
        for local_only in (True, False):
            if not local_only and name in KNOWN_SIGLIP_TOWERS:
                break
            try:
                from huggingface_hub import hf_hub_download

                path = hf_hub_download(mm_vision_tower, "config.json", local_files_only=local_only)
                return _vision_config_from_dict(json.loads(Path(path).read_text()))
            except Exception:  # not cached / offline / unreachable
                continue
    if name in KNOWN_SIGLIP_TOWERS:
        return SiglipVisionConfig(**KNOWN_SIGLIP_TOWERS[name])
    raise ValueError(
        f"LlavaLLaDAConfig: cannot find the config of the vision tower mm_vision_tower={mm_vision_tower!r}: "
        f"no {mm_vision_tower}/config.json in the checkpoint folder ({checkpoint}), no such local folder, "
        f"and the Hub id is not reachable; add a `vision_config` to config.json"
    )


def parse_anyres_max(image_aspect_ratio: str) -> Optional[int]:
    """N of "anyres_max_N" (the feature-map budget in crops), None for any other mode."""
    m = re.fullmatch(r"anyres_max_(\d+)", image_aspect_ratio or "")
    return int(m.group(1)) if m else None


class LlavaLLaDAConfig(LLaDAConfig):
    r"""Configuration of LLaDA-V: a LLaDA language model, a SigLIP tower and an MLP connector.

    Every `LLaDAConfig` field (either dialect) configures the language model; the vision fields are
    described in the module docstring. `vision_config` is a `SiglipVisionConfig` of the full tower
    (all its layers, as on the Hub); the model keeps the layers up to `mm_vision_select_layer`.
    """

    model_type = "llava_llada"
    sub_configs = {"vision_config": SiglipVisionConfig}

    def __init__(
        self,
        vision_config: Optional[dict | SiglipVisionConfig] = None,
        mm_vision_tower: Optional[str] = None,
        mm_vision_select_layer: int = -2,
        mm_vision_select_feature: str = "patch",
        mm_hidden_size: Optional[int] = None,
        mm_projector_type: str = "mlp2x_gelu",
        mm_patch_merge_type: str = "spatial_unpad",
        image_aspect_ratio: str = "anyres_max_4",
        image_grid_pinpoints: Any = "(1x1),...,(6x6)",
        mm_newline_position: str = "grid",
        tokenizer_model_max_length: Optional[int] = None,
        image_token_index: int = -200,
        vision_tower_type: str = "siglip",
        open_clip_model: Optional[str] = None,
        open_clip_image_size: Optional[int] = None,
        open_clip_patch_size: Optional[int] = None,
        **kwargs: Any,
    ):
        checkpoint = kwargs.get("name_or_path")
        if kwargs.get("rope_scaling") is not None:
            raise ValueError(f"LlavaLLaDAConfig: rope_scaling={kwargs['rope_scaling']!r} is not supported (LLaDA uses plain RoPE)")
        kwargs.pop("rope_scaling", None)
        if isinstance(vision_config, dict):
            vision_config = _vision_config_from_dict(vision_config)
        if vision_config is None and vision_tower_type == "siglip":
            vision_config = resolve_vision_config(mm_vision_tower, checkpoint)
        self.vision_config = vision_config
        self.mm_vision_tower = mm_vision_tower
        self.mm_vision_select_layer = mm_vision_select_layer
        self.mm_vision_select_feature = mm_vision_select_feature
        if mm_hidden_size is None and vision_config is not None:
            mm_hidden_size = vision_config.hidden_size
        self.mm_hidden_size = mm_hidden_size
        self.mm_projector_type = mm_projector_type
        self.mm_patch_merge_type = mm_patch_merge_type
        self.image_aspect_ratio = image_aspect_ratio
        self.image_grid_pinpoints = image_grid_pinpoints
        self.mm_newline_position = mm_newline_position
        self.tokenizer_model_max_length = tokenizer_model_max_length
        self.image_token_index = image_token_index
        self.vision_tower_type = vision_tower_type
        self.open_clip_model = open_clip_model
        self.open_clip_image_size = open_clip_image_size
        self.open_clip_patch_size = open_clip_patch_size
        super().__init__(**kwargs)
        self.validate_vision()

    def validate_vision(self) -> None:
        """Refuse vision settings this implementation does not have, naming the field."""
        problems = []
        if self.image_aspect_ratio not in IMAGE_ASPECT_RATIOS and parse_anyres_max(self.image_aspect_ratio) is None:
            problems.append(f"image_aspect_ratio={self.image_aspect_ratio!r} (expected pad, square, anyres or anyres_max_N)")
        if self.mm_patch_merge_type not in PATCH_MERGE_TYPES:
            problems.append(f"mm_patch_merge_type={self.mm_patch_merge_type!r} (expected one of {PATCH_MERGE_TYPES})")
        if self.mm_vision_select_feature not in ("patch", "cls_patch"):
            problems.append(f"mm_vision_select_feature={self.mm_vision_select_feature!r} (expected patch or cls_patch)")
        if not re.fullmatch(r"linear|identity|mlp\d+x_gelu", self.mm_projector_type or ""):
            problems.append(f"mm_projector_type={self.mm_projector_type!r} (expected linear, identity or mlpNx_gelu)")
        if self.vision_tower_type not in ("siglip", "open_clip"):
            problems.append(f"vision_tower_type={self.vision_tower_type!r} (expected siglip or open_clip)")
        if self.vision_tower_type == "siglip" and self.vision_config is None:
            problems.append("no vision tower: set mm_vision_tower or vision_config")
        if self.vision_tower_type == "open_clip" and not (
                self.open_clip_model and self.open_clip_image_size and self.open_clip_patch_size):
            problems.append("vision_tower_type='open_clip' needs open_clip_model (e.g. 'ViT-B-16'), "
                            "open_clip_image_size and open_clip_patch_size")
        if self.mm_hidden_size is None:
            problems.append("mm_hidden_size is not set and cannot be read from the vision config")
        if problems:
            raise ValueError("LlavaLLaDAConfig: unsupported configuration: " + "; ".join(problems))

    # ------------------------------------------------------------------ derived
    @property
    def anyres_max_crops(self) -> Optional[int]:
        return parse_anyres_max(self.image_aspect_ratio)

    @property
    def vision_image_size(self) -> int:
        if self.vision_tower_type == "open_clip":
            return int(self.open_clip_image_size)
        return int(self.vision_config.image_size)

    @property
    def vision_patch_size(self) -> int:
        if self.vision_tower_type == "open_clip":
            return int(self.open_clip_patch_size)
        return int(self.vision_config.patch_size)

    @property
    def tokens_per_side(self) -> int:
        """Feature-map side of one crop: image_size // patch_size (27 for SigLIP at 384 / 14)."""
        return self.vision_image_size // self.vision_patch_size

    @property
    def context_length(self) -> int:
        """The longest spliced sequence the model takes (its max_sequence_length)."""
        return int(self.max_sequence_length)

    def to_dict(self) -> dict[str, Any]:
        out = super().to_dict()
        if isinstance(self.vision_config, SiglipVisionConfig):
            out["vision_config"] = self.vision_config.to_dict()
        return out


__all__ = ["LlavaLLaDAConfig", "KNOWN_SIGLIP_TOWERS", "resolve_vision_config", "parse_anyres_max"]
