"""Vision towers and the connector (`model.vision_tower`, `model.mm_projector`).

`SiglipVisionTower` holds a transformers `SiglipVisionModel` as `vision_tower` (so the checkpoint keys
are `model.vision_tower.vision_tower.vision_model.*`, as the official code saves them) built from the
full tower's config with the layers after `mm_vision_select_layer` removed and no pooling head, as the
official tower does. Its output is the hidden state of the last kept layer, without post-layernorm:

    features = h_{L + 1 + select_layer}   (select_layer = -2: h_{L-1} of an L-layer tower)

`OpenClipVisionTower` offers the same interface over an open_clip ViT, for users who bring open_clip
models. `build_projector` builds the connector, e.g. mlp2x_gelu: Linear(mm_hidden, d), GELU, Linear(d, d).
"""

from __future__ import annotations

import copy
import re
from typing import Any

import torch
from torch import nn
from transformers import SiglipVisionConfig, SiglipVisionModel


def kept_vision_layers(num_layers: int, select_layer: int) -> int:
    """Encoder layers needed for hidden state `select_layer` (negative counts from the output, 0 =
    the patch embeddings): L + 1 + select_layer for negative values, select_layer otherwise."""
    kept = num_layers + 1 + select_layer if select_layer < 0 else select_layer
    if not 0 <= kept <= num_layers:
        raise ValueError(
            f"mm_vision_select_layer={select_layer} is outside a tower of {num_layers} layers "
            f"(valid: {-num_layers - 1}..{num_layers})"
        )
    return kept


class SiglipVisionTower(nn.Module):
    """SigLIP features of each crop: (crops, 3, S, S) -> (crops, (S/14)^2, width)."""

    def __init__(self, vision_config: SiglipVisionConfig, select_layer: int = -2, select_feature: str = "patch"):
        super().__init__()
        cfg = copy.deepcopy(vision_config)
        cfg.num_hidden_layers = kept_vision_layers(vision_config.num_hidden_layers, select_layer)
        cfg.vision_use_head = False
        self.select_feature = select_feature
        self.vision_tower = SiglipVisionModel(cfg)
        self.image_size = cfg.image_size
        self.patch_size = cfg.patch_size
        self.hidden_size = cfg.hidden_size

    @property
    def num_patches_per_side(self) -> int:
        return self.image_size // self.patch_size

    @property
    def dtype(self) -> torch.dtype:
        return self.vision_tower.embeddings.patch_embedding.weight.dtype

    def unused_parameters(self) -> list:
        """Parameters the features never pass through (post-layernorm: kept only so checkpoints round-trip)."""
        return list(self.vision_tower.post_layernorm.parameters())

    def forward(self, pixel_values: torch.Tensor) -> torch.Tensor:
        tower = self.vision_tower
        if pixel_values.dim() != 4 or pixel_values.shape[1:] != (3, self.image_size, self.image_size):
            raise ValueError(
                f"vision tower: pixel values must be (crops, 3, {self.image_size}, {self.image_size}), "
                f"got {tuple(pixel_values.shape)}"
            )
        hidden = tower.embeddings(pixel_values.to(self.dtype))
        # SigLIP has no CLS token: "patch" and "cls_patch" both keep every token.
        return tower.encoder(inputs_embeds=hidden).last_hidden_state


class OpenClipVisionTower(nn.Module):
    """An open_clip ViT as the tower: patch tokens of the hidden state `select_layer`.

    `open_clip_model` names an open_clip architecture (e.g. "ViT-B-16"); weights come from the LLaDA-V
    checkpoint (`model.vision_tower.vision_tower.*`), or from `pretrained` when building a new model.
    """

    def __init__(self, open_clip_model: str, select_layer: int = -2, select_feature: str = "patch",
                 pretrained: str | None = None, image_size: int | None = None, patch_size: int | None = None):
        super().__init__()
        try:
            import open_clip
        except ModuleNotFoundError as err:  # pragma: no cover - optional dependency
            raise ModuleNotFoundError("the open_clip tower needs `open_clip_torch` (pip install 'llada-suite[vision]')") from err
        model = open_clip.create_model(open_clip_model, pretrained=pretrained, force_image_size=image_size)
        self.vision_tower = model.visual  # the text tower is dropped
        self.select_layer = select_layer
        self.select_feature = select_feature
        size = self.vision_tower.image_size
        self.image_size = size[0] if isinstance(size, (tuple, list)) else int(size)
        patch = self.vision_tower.patch_size
        self.patch_size = patch[0] if isinstance(patch, (tuple, list)) else int(patch)
        self.hidden_size = self.vision_tower.transformer.width
        self.num_layers = len(self.vision_tower.transformer.resblocks)
        kept_vision_layers(self.num_layers, select_layer)
        if patch_size is not None and patch_size != self.patch_size:
            raise ValueError(f"open_clip_patch_size={patch_size} but {open_clip_model} has patches of {self.patch_size}")

    @property
    def num_patches_per_side(self) -> int:
        return self.image_size // self.patch_size

    @property
    def dtype(self) -> torch.dtype:
        return self.vision_tower.conv1.weight.dtype

    def unused_parameters(self) -> list:
        """Parameters after the selected layer (later blocks, final norm, pooling, projection)."""
        tower, kept = self.vision_tower, kept_vision_layers(self.num_layers, self.select_layer)
        used = {id(p) for p in tower.conv1.parameters()}
        for name in ("class_embedding", "positional_embedding"):
            if getattr(tower, name, None) is not None:
                used.add(id(getattr(tower, name)))
        for module in (getattr(tower, "ln_pre", None), *tower.transformer.resblocks[:kept]):
            if module is not None:
                used.update(id(p) for p in module.parameters())
        return [p for p in tower.parameters() if id(p) not in used]

    def forward(self, pixel_values: torch.Tensor) -> torch.Tensor:
        index = kept_vision_layers(self.num_layers, self.select_layer) - 1
        out = self.vision_tower.forward_intermediates(
            pixel_values.to(self.dtype), indices=[index], output_fmt="NLC", intermediates_only=True,
            output_extra_tokens=True,
        )
        tokens = out["image_intermediates"][0]
        if self.select_feature == "cls_patch":
            prefix = out["image_intermediates_prefix"][0]
            return torch.cat([prefix, tokens], dim=1)
        return tokens


def build_vision_tower(config: Any) -> nn.Module:
    """The tower a `LlavaLLaDAConfig` describes."""
    if config.vision_tower_type == "open_clip":
        return OpenClipVisionTower(config.open_clip_model, config.mm_vision_select_layer, config.mm_vision_select_feature,
                                   image_size=config.open_clip_image_size, patch_size=config.open_clip_patch_size)
    return SiglipVisionTower(config.vision_config, config.mm_vision_select_layer, config.mm_vision_select_feature)


def build_projector(config: Any) -> nn.Module:
    """The connector `model.mm_projector` from `mm_projector_type`:

    mlpNx_gelu: Linear(mm_hidden, d), then N-1 times (GELU, Linear(d, d))  — mlp2x_gelu is LLaDA-V's;
    linear: Linear(mm_hidden, d); identity: no change (mm_hidden must equal d).
    """
    kind, d_in, d = config.mm_projector_type, config.mm_hidden_size, config.d_model
    if kind == "linear":
        return nn.Linear(d_in, d)
    if kind == "identity":
        if d_in != d:
            raise ValueError(f"mm_projector_type='identity' needs mm_hidden_size ({d_in}) == hidden size ({d})")
        return nn.Identity()
    m = re.fullmatch(r"mlp(\d+)x_gelu", kind)
    if not m:
        raise ValueError(f"unknown mm_projector_type {kind!r}")
    layers: list[nn.Module] = [nn.Linear(d_in, d)]
    for _ in range(1, int(m.group(1))):
        layers += [nn.GELU(), nn.Linear(d, d)]
    return nn.Sequential(*layers)


__all__ = ["SiglipVisionTower", "OpenClipVisionTower", "build_vision_tower", "build_projector", "kept_vision_layers"]
