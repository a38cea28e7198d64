"""Image + question -> answer on the command line, and the function behind it.

    python -m vision.cli --image photo.png --prompt "What is in the picture?" [sampler flags]
    python -m vision.cli --model PATH --image a.png --image b.png --prompt "Compare them." --prompt-cache

`llada generate --image FILE ...` is meant to delegate here (`vision.cli.generate_main(argv)`): every
`SamplerConfig` flag of `llada generate` is accepted (the sampling CLI's own flag builder is reused),
plus --image (repeatable), --system, --stop (default `<|eot_id|>`, the official demo's stop string)
and --prompt-cache. Defaults are the official demo's: steps 128, gen-length 128, block-length 128.
The model defaults to the embedded LLaDA-V (`llada.defaults.resolve_model(None, "vision")`).
"""

from __future__ import annotations

import argparse
import sys
from typing import Any, Optional, Sequence

from sampling import SamplerConfig

OFFICIAL_DEMO = SamplerConfig(steps=128, gen_length=128, block_length=128)


def answer(
    model: Any,
    tokenizer: Any,
    question: str,
    images: Sequence[Any],
    *,
    config: SamplerConfig = OFFICIAL_DEMO,
    system: Optional[str] = None,
    history: Sequence[dict] = (),
    stop_sequences: Sequence[str] = ("<|eot_id|>",),
    prompt_cache: Any = False,
    callback=None,
    generator=None,
    return_result: bool = False,
):
    """Answer `question` about `images` (paths, bytes or PIL images) with a LLaDA-V model; returns the text.

    The prompt is the llava_llada template (system prompt, one `<image>` per image before the question,
    or where the question puts them), tokenised as the official code does.
    """
    from .conversation import LLAVA_LLADA_SYSTEM_PROMPT, build_messages, encode_prompt
    from .generation import generate

    messages = build_messages(question, num_images=len(images), history=history,
                              system=LLAVA_LLADA_SYSTEM_PROMPT if system is None else system)
    ids = encode_prompt(tokenizer, messages, image_token_index=model.config.image_token_index)
    import torch

    input_ids = torch.tensor(ids, dtype=torch.long, device=model.get_input_embeddings().weight.device)
    result = generate(model, input_ids, list(images) or None, attention_mask=None, config=config,
                      stop_sequences=list(stop_sequences), tokenizer=tokenizer, callback=callback,
                      generator=generator, return_dict=True, prompt_cache=prompt_cache)
    text = tokenizer.decode(result.sequences[0, : int(result.lengths[0])].tolist(), skip_special_tokens=True)
    return (text, result) if return_result else text


def load(model_name: Optional[str], device: str = "auto", dtype: str = "auto"):
    """(model, tokenizer, device) for a LLaDA-V checkpoint (default: the embedded one)."""
    import torch
    from transformers import AutoTokenizer

    from llada.defaults import resolve_model
    from llada.tokenization import LLADA_CHAT_TEMPLATE

    from .modeling_llava_llada import LlavaLLaDAModelLM

    path = resolve_model(model_name, "vision")
    if device == "auto":
        device = "cuda" if torch.cuda.is_available() else "cpu"
    if dtype == "auto":
        dtype = "bfloat16" if str(device).startswith("cuda") else "float32"
    model = LlavaLLaDAModelLM.from_pretrained(path, dtype=getattr(torch, dtype)).to(device).eval()
    try:
        tokenizer = AutoTokenizer.from_pretrained(path)
    except Exception as err:  # noqa: BLE001
        raise SystemExit(f"vision: {path} has no tokenizer ({err}); text prompts need one") from None
    if getattr(tokenizer, "chat_template", None) is None:
        tokenizer.chat_template = LLADA_CHAT_TEMPLATE
    return model, tokenizer, device


def generate_main(argv: Optional[Sequence[str]] = None) -> int:
    """`python -m vision.cli` / `llada generate --image ...`: answer a question about images."""
    from sampling.cli import add_sampler_arguments, sampler_config_from_args

    from .image_processing import ImageError

    parser = argparse.ArgumentParser(prog="llada generate --image", description="Answer a question about images "
                                     "with LLaDA-V.", formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    parser.add_argument("--model", default=None, help="LLaDA-V checkpoint (default: the embedded LLaDA-V)")
    parser.add_argument("--image", action="append", default=[], help="image file (repeat for several)")
    parser.add_argument("--prompt", required=True, help="the question")
    parser.add_argument("--system", default=None, help="system prompt (default: the llava_llada one)")
    parser.add_argument("--stop", action="append", default=None, help="stop string (default <|eot_id|>)")
    parser.add_argument("--prompt-cache", action="store_true", help="compute the image rows' keys/values once")
    parser.add_argument("--device", default="auto")
    parser.add_argument("--dtype", default="auto", choices=("auto", "float32", "bfloat16", "float16"))
    parser.add_argument("--seed", type=int, default=None)
    parser.add_argument("--show-nfe", action="store_true", help="print model calls and seconds on stderr")
    add_sampler_arguments(parser, OFFICIAL_DEMO)
    args = parser.parse_args(argv)
    try:
        cfg = sampler_config_from_args(args)
    except ValueError as err:
        parser.error(str(err))
    import time

    import torch

    model, tokenizer, device = load(args.model, args.device, args.dtype)
    generator = torch.Generator(device=device).manual_seed(args.seed) if args.seed is not None else None
    start = time.perf_counter()
    try:
        text, result = answer(model, tokenizer, args.prompt, args.image, config=cfg, system=args.system,
                              stop_sequences=args.stop if args.stop is not None else ("<|eot_id|>",),
                              prompt_cache=args.prompt_cache, generator=generator, return_result=True)
    except (ImageError, ValueError) as err:
        print(f"llada generate: error: {err}", file=sys.stderr)
        return 2
    print(text)
    if args.show_nfe:
        print(f"nfe {result.nfe}  {time.perf_counter() - start:.2f} s  prompt {result.prompt_length} positions",
              file=sys.stderr)
    return 0


if __name__ == "__main__":
    raise SystemExit(generate_main())
