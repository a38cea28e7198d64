"""LLaDA-V: the vision-language model of the LLaDA family.

`import vision` registers `model_type "llava_llada"` with transformers, so that
`transformers.AutoModel.from_pretrained(<LLaDA-V checkpoint>)` loads the native `LlavaLLaDAModelLM`
(official layout: LLaMA-style language-model names, SigLIP under `model.vision_tower.vision_tower`).

    import vision
    from transformers import AutoModel, AutoTokenizer
    model = AutoModel.from_pretrained("GSAI-ML/LLaDA-V", dtype=torch.bfloat16).cuda()
    tok = AutoTokenizer.from_pretrained("GSAI-ML/LLaDA-V")

    # text in, text out (template, image tokens, stop at <|eot_id|>; official demo settings 128/128/128)
    from vision.cli import answer
    print(answer(model, tok, "Describe the image.", ["photo.jpg"]))

    # the official call shapes, -200 at each image placeholder
    ids = vision.conversation.encode_prompt(tok, vision.conversation.build_messages("Describe the image."))
    pixel_values, sizes = vision.process_images(["photo.jpg"], vision.ImageProcessingConfig.from_model_config(model.config))
    logits = model(torch.tensor([ids]), images=pixel_values, image_sizes=sizes).logits   # over the spliced sequence
    out = model.generate(torch.tensor([ids]), images=pixel_values, image_sizes=sizes, tokenizer=tok,
                         steps=128, gen_length=128, block_length=128, stop_sequences=["<|eot_id|>"])

Modules: `configuration_llava_llada` (config), `tower` (SigLIP / open_clip towers, connector),
`image_processing` (pad / anyres), `merging` (spatial unpad, newlines, splicing), `modeling_llava_llada`
(the model), `generation` (the shared sampler on embeddings, suppression, stop sequences, prompt cache),
`conversation` (template, image tokenisation), `data` / `losses` / `train` (training stages), `cli`.
"""

from __future__ import annotations

from transformers import AutoConfig, AutoModel, AutoModelForCausalLM, AutoModelForMaskedLM

import llada  # noqa: F401  (registers the text model first)

from . import conversation  # noqa: F401  (vision.conversation.encode_prompt, build_messages)
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
