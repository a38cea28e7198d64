"""LLaDA-V: the vision-language model of the LLaDA family.

`import vision` registers `model_type "llava_llada"` with transformers, so that
`transformers.AutoModel.from_pretrained(<LLaDA-V checkpoint>)` loads the native `LlavaLLaDAModelLM`.

    model(input_ids, images=[pixel_values], image_sizes=[(w, h)]).logits   # -200 marks each image
    vision.generate(model, input_ids, images=..., image_sizes=..., steps=..., gen_length=..., block_length=...)
"""

from __future__ import annotations

from transformers import AutoConfig, AutoModel, AutoModelForCausalLM, AutoModelForMaskedLM

import llada  # noqa: F401  (registers the text model first)

from .configuration_llava_llada import LlavaLLaDAConfig
from .image_processing import ImageError, ImageProcessingConfig, load_image, process_image, process_images
from .merging import merge_image_features, num_image_tokens, splice_image_features
from .modeling_llava_llada import LlavaLLaDAModel, LlavaLLaDAModelLM, LlavaLLaDAOutput


def _register() -> None:
    AutoConfig.register(LlavaLLaDAConfig.model_type, LlavaLLaDAConfig, exist_ok=True)
    for auto in (AutoModel, AutoModelForCausalLM, AutoModelForMaskedLM):
        auto.register(LlavaLLaDAConfig, LlavaLLaDAModelLM, exist_ok=True)


_register()


def __getattr__(name: str):
    if name in ("generate", "VisionGenerationResult", "PromptCache"):
        from . import generation

        return getattr(generation, name)
    raise AttributeError(f"module 'vision' has no attribute {name!r}")


__all__ = [
    "LlavaLLaDAConfig",
    "LlavaLLaDAModel",
    "LlavaLLaDAModelLM",
    "LlavaLLaDAOutput",
    "ImageError",
    "ImageProcessingConfig",
    "load_image",
    "process_image",
    "process_images",
    "merge_image_features",
    "num_image_tokens",
    "splice_image_features",
]
