"""`LlavaLLaDAModelLM`: LLaDA-V as a native transformers model (`model_type "llava_llada"`).

The language model is the suite's `LLaDAModelLM` (its weights under `model.transformer.*`; the
checkpoint's LLaMA-style names are mapped with `llada.LLAMA_KEY_MAPPING` while loading); the vision
side adds, under the names the official code saves:

    model.vision_tower.vision_tower.vision_model.*   SigLIP (transformers' SiglipVisionModel)
    model.mm_projector.{0,2}                         the mlp2x_gelu connector
    model.image_newline                              the row separator of spatial_unpad

Official call shapes:

    model(input_ids, images=[pixel_values, ...], image_sizes=[(w, h), ...]).logits
        -> logits over the spliced sequence (each -200 replaced by that image's rows)
    model.generate(input_ids, images=..., image_sizes=..., steps=..., gen_length=..., block_length=...)
        -> generated ids (see `vision.generation`)

A prompt without images runs the plain language model: exactly the text model's output.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Optional, Sequence

import torch
from torch import nn

from llada import LLAMA_KEY_MAPPING, LLaDAModelLM
from llada.loading import check_local_checkpoint, raise_on_loading_problems
from llada.modeling_llada import LLaDAModel, LLaDAOutput, LLaDAPreTrainedModel

from .configuration_llava_llada import LlavaLLaDAConfig
from .merging import SplicedBatch, merge_image_features, splice_image_features
from .tower import build_projector, build_vision_tower

def llava_llada_key_mapping() -> dict[str, str]:
    """The key renames applied while loading a LLaDA-V checkpoint: `llada.LLAMA_KEY_MAPPING` (its rules
    touch only the language model's keys; the SigLIP tower's `self_attn.{q,k,v}_proj` keep their names)."""
    return dict(LLAMA_KEY_MAPPING)


@dataclass
class LlavaLLaDAOutput(LLaDAOutput):
    """`LLaDAOutput` plus what splicing produced: the attention mask and labels over the spliced
    sequence and each row's image spans (None for text-only input)."""

    attention_mask: Optional[torch.Tensor] = None
    labels: Optional[torch.Tensor] = None
    image_spans: Optional[list] = None


class LlavaLLaDAModel(LLaDAModel):
    """`LLaDAModel` (the transformer under `model.transformer`) plus the tower, connector and newline."""

    config_class = LlavaLLaDAConfig

    def __init__(self, config: LlavaLLaDAConfig):
        super().__init__(config)
        self.vision_tower = build_vision_tower(config)
        self.mm_projector = build_projector(config)
        if "unpad" in config.mm_patch_merge_type:
            # N(0, 1/d) as the official initialize_vision_modules; overwritten when a checkpoint is loaded
            self.image_newline = nn.Parameter(torch.randn(config.d_model) * config.d_model ** -0.5)
        else:
            self.image_newline = None
        self.post_init()

    @torch.no_grad()
    def _init_weights(self, module: nn.Module) -> None:
        if module is self and self.__dict__.get("_parameters", {}).get("image_newline") is not None:
            nn.init.normal_(self.image_newline, std=self.config.d_model ** -0.5)
            return
        tower = self.__dict__.get("_modules", {}).get("vision_tower")
        if tower is not None and any(module is m for m in tower.modules()):
            return  # the tower initialises itself (SiglipVisionModel / open_clip)
        super()._init_weights(module)


class LlavaLLaDAModelLM(LLaDAModelLM):
    """LLaDA-V: images through SigLIP and the connector, spliced at `<image>`, into LLaDA."""

    config_class = LlavaLLaDAConfig
    _no_split_modules = ["LLaDABlock", "SiglipEncoderLayer"]

    def __init__(self, config: LlavaLLaDAConfig):
        LLaDAPreTrainedModel.__init__(self, config)
        self.model = LlavaLLaDAModel(config)
        self.post_init()

    @torch.no_grad()
    def _init_weights(self, module: nn.Module) -> None:
        inner = self.__dict__.get("_modules", {}).get("model")
        if isinstance(inner, LlavaLLaDAModel):
            inner._init_weights(module)
        else:
            super()._init_weights(module)

    # -------------------------------------------------------------- loading
    @classmethod
    def from_pretrained(cls, pretrained_model_name_or_path, *model_args, allow_pickle: bool = False,
                        strict: bool = True, **kwargs):
        """Load a LLaDA-V checkpoint (official layout or this project's); see `LLaDAModelLM.from_pretrained`.

        The language model's LLaMA-style names are mapped with `llada.LLAMA_KEY_MAPPING`; the tower's
        `vision_model.` level is handled by transformers. A missing tensor is an error (`strict`).
        """
        kwargs.setdefault("key_mapping", llava_llada_key_mapping())
        return super().from_pretrained(
            pretrained_model_name_or_path, *model_args, allow_pickle=allow_pickle, strict=strict, **kwargs
        )

    # -------------------------------------------------------------- parts
    def get_vision_tower(self) -> nn.Module:
        return self.model.vision_tower

    @property
    def image_token_index(self) -> int:
        return self.config.image_token_index

    def embed_tokens(self, ids: torch.Tensor) -> torch.Tensor:
        return self.get_input_embeddings()(ids)

    def encode_images(self, pixel_values: torch.Tensor) -> torch.Tensor:
        """(crops, 3, S, S) -> projected features (crops, T^2, d_model): connector(tower(x))."""
        features = self.model.vision_tower(pixel_values)
        projector_dtype = next(self.model.mm_projector.parameters(), features).dtype
        return self.model.mm_projector(features.to(projector_dtype))

    def image_rows(self, images: Sequence[torch.Tensor], image_sizes: Sequence[Sequence[int]]) -> list[torch.Tensor]:
        """The rows each image contributes to the sequence (tower, connector, spatial merge)."""
        images = [im[None] if im.dim() == 3 else im for im in images]
        for i, im in enumerate(images):
            if im.dim() != 4:
                raise ValueError(f"images[{i}] must be (crops, 3, H, W) or (3, H, W), got shape {tuple(im.shape)}")
        if image_sizes is None or len(image_sizes) != len(images):
            raise ValueError(
                f"image_sizes must give the original (width, height) of each of the {len(images)} image(s), "
                f"got {None if image_sizes is None else len(image_sizes)}"
            )
        sizes = [(int(s[0]), int(s[1])) for s in image_sizes]
        device = self.get_input_embeddings().weight.device
        counts = [im.shape[0] for im in images]
        encoded = self.encode_images(torch.cat(images).to(device))
        per_image = list(torch.split(encoded, counts))
        return merge_image_features(per_image, sizes, self.config, self.model.image_newline)

    def prepare_inputs_embeds(
        self,
        input_ids: torch.Tensor,
        images: Optional[Sequence[torch.Tensor]] = None,
        image_sizes: Optional[Sequence[Sequence[int]]] = None,
        *,
        attention_mask: Optional[torch.Tensor] = None,
        labels: Optional[torch.Tensor] = None,
        padding_side: str = "left",
        max_length: Optional[int] = None,
        limit_reason: str = "the model's context",
    ) -> SplicedBatch:
        """Token ids with `-200` placeholders + images -> spliced embeddings (see `vision.merging`)."""
        if isinstance(images, torch.Tensor):
            images = list(images) if images.dim() == 5 else [images]
        images = list(images or [])
        features = self.image_rows(images, image_sizes) if images else []
        return splice_image_features(
            input_ids,
            features,
            self.embed_tokens,
            image_token_index=self.image_token_index,
            pad_token_id=self.config.pad_token_id if self.config.pad_token_id is not None else self.config.eos_token_id,
            attention_mask=attention_mask,
            labels=labels,
            padding_side=padding_side,
            max_length=self.config.context_length if max_length is None else max_length,
            limit_reason=limit_reason,
        )

    # -------------------------------------------------------------- forward
    def forward(
        self,
        input_ids: Optional[torch.LongTensor] = None,
        attention_mask: Optional[torch.Tensor] = None,
        inputs_embeds: Optional[torch.FloatTensor] = None,
        position_ids: Optional[torch.LongTensor] = None,
        past_key_values=None,
        use_cache: bool = False,
        labels: Optional[torch.LongTensor] = None,
        output_hidden_states: bool = False,
        return_dict: Optional[bool] = None,
        images: Optional[Sequence[torch.Tensor]] = None,
        image_sizes: Optional[Sequence[Sequence[int]]] = None,
        **kwargs,
    ) -> LlavaLLaDAOutput:
        """Logits over the spliced sequence.

        With `images`, `input_ids` carries one `-200` per image; the output's `attention_mask`,
        `labels` (image rows -100) and `image_spans` describe the spliced sequence the logits cover.
        Without images this is exactly `LLaDAModelLM.forward`.
        """
        spans = None
        has_placeholder = input_ids is not None and bool((input_ids == self.image_token_index).any())
        if images is not None or has_placeholder:
            if inputs_embeds is not None:
                raise ValueError("pass either input_ids with images or inputs_embeds, not both")
            spliced = self.prepare_inputs_embeds(
                input_ids, images, image_sizes, attention_mask=attention_mask, labels=labels,
                padding_side=kwargs.pop("padding_side", "left"),
            )
            input_ids, inputs_embeds, labels, spans = None, spliced.inputs_embeds, spliced.labels, spliced.image_spans
            attention_mask = spliced.attention_mask
        out = super().forward(
            input_ids=input_ids,
            attention_mask=attention_mask,
            inputs_embeds=inputs_embeds,
            position_ids=position_ids,
            past_key_values=past_key_values,
            use_cache=use_cache,
            labels=labels,
            output_hidden_states=output_hidden_states,
        )
        return LlavaLLaDAOutput(
            loss=out.loss,
            logits=out.logits,
            past_key_values=out.past_key_values,
            hidden_states=out.hidden_states,
            attention_mask=attention_mask,
            labels=labels,
            image_spans=spans,
        )

    # -------------------------------------------------------------- generation
    @torch.no_grad()
    def generate(self, input_ids: Optional[torch.Tensor] = None, images=None, image_sizes=None, **kwargs):
        """LLaDA-V generation (official behaviour); see `vision.generation.generate`."""
        from .generation import generate

        return generate(self, input_ids, images=images, image_sizes=image_sizes, **kwargs)


__all__ = ["LlavaLLaDAModel", "LlavaLLaDAModelLM", "LlavaLLaDAOutput", "llava_llada_key_mapping"]
