"""`llada generate` and `llada chat`: the sampler on the command line.

    llada generate --prompt "What is 2 + 2?" --steps 64 --gen-length 64 --block-length 32
    llada generate --model ../shared/fixtures/llada-tiny --prompt-ids 1,2,3 --steps 16 --gen-length 16 --block-length 16
    llada generate --prompt "..." --threshold 0.9 --cache dual --show-nfe      (fast decoding)
    llada chat --gen-length 128 --steps 128 --block-length 32                  (multi-turn, stdin)

Every `SamplerConfig` field is a flag (--steps, --gen-length, --block-length, --temperature, --cfg-scale,
--remasking, --logits-eos-inf, --confidence-eos-eot-inf, --suppress-tokens, --eos-token-id, --eot-token-id,
--threshold, --factor, --cache, --cache-refresh-interval, --early-stop). The model defaults to the
embedded instruct model (`llada.defaults.resolve_model`). Text prompts need a tokenizer in the model
folder; tokenizer-less checkpoints take `--prompt-ids`.
"""

from __future__ import annotations

import argparse
import json
import sys
from dataclasses import fields
from typing import Any, Optional, Sequence

from .config import CACHE_MODES, SamplerConfig
from .remasking import REMASKING_RULES

_DTYPES = ("auto", "float32", "bfloat16", "float16")
_HELP = {
    "steps": "total denoising steps (a multiple of the number of blocks, <= gen-length)",
    "gen_length": "tokens to generate",
    "block_length": "semi-autoregressive block length (gen-length must be a multiple)",
    "temperature": "0 = greedy; > 0 Gumbel-max sampling",
    "cfg_scale": "unsupervised classifier-free guidance scale (0 = off)",
    "remasking": "which masked positions to commit first",
    "logits_eos_inf": "never generate EOS",
    "confidence_eos_eot_inf": "commit EOS / EoT candidates last (LLaDA 1.5)",
    "suppress_tokens": "comma-separated ids whose logits are -inf at masked positions",
    "eos_token_id": "override the EOS id of the model config",
    "eot_token_id": "EoT id (default: from the tokenizer)",
    "threshold": "parallel decoding: commit every masked token whose confidence exceeds this",
    "factor": "parallel decoding with the factor rule",
    "cache": "approximate KV cache (Fast-dLLM)",
    "cache_refresh_interval": "recompute the cache every N steps (default: once per block)",
    "early_stop": "stop once everything after an EOS is EOS",
}


def _int_list(text: str) -> list[int]:
    try:
        return [int(t) for t in text.replace(" ", "").split(",") if t]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated integers, got {text!r}") from None


def add_sampler_arguments(parser: argparse.ArgumentParser, defaults: Optional[SamplerConfig] = None) -> None:
    """One flag per `SamplerConfig` field (`--gen-length` for `gen_length`, ...)."""
    defaults = defaults or SamplerConfig()
    group = parser.add_argument_group("sampler")
    for f in fields(SamplerConfig):
        flag = "--" + f.name.replace("_", "-")
        default = getattr(defaults, f.name)
        help_text = _HELP.get(f.name, "")
        if f.name == "remasking":
            group.add_argument(flag, choices=list(REMASKING_RULES), default=default, help=help_text)
        elif f.name == "cache":
            group.add_argument(flag, choices=list(CACHE_MODES), default=default, help=help_text)
        elif f.name == "suppress_tokens":
            group.add_argument(flag, type=_int_list, default=list(default), help=help_text)
        elif isinstance(default, bool):
            group.add_argument(flag, action=argparse.BooleanOptionalAction, default=default, help=help_text)
        elif f.name in ("temperature", "cfg_scale", "threshold", "factor"):
            group.add_argument(flag, type=float, default=default, help=help_text)
        else:
            group.add_argument(flag, type=int, default=default, help=help_text)


def sampler_config_from_args(args: argparse.Namespace) -> SamplerConfig:
    values = {f.name: getattr(args, f.name) for f in fields(SamplerConfig)}
    values["suppress_tokens"] = tuple(values["suppress_tokens"])
    return SamplerConfig(**values).validate()


def _common_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--model", default=None, help="Hub id or checkpoint folder (default: the embedded instruct model)")
    parser.add_argument("--dtype", choices=_DTYPES, default="auto", help="auto = bfloat16 on GPU, float32 on CPU")
    parser.add_argument("--device", default="auto", help="cpu, cuda, cuda:1, ... (auto = cuda when available)")
    parser.add_argument("--seed", type=int, default=None, help="seed for temperature > 0 and random remasking")
    parser.add_argument("--system", default=None, help="system prompt (chat template)")
    parser.add_argument("--progress", action=argparse.BooleanOptionalAction, default=True, help="tqdm progress bar on stderr")
    parser.add_argument("--show-nfe", action="store_true", help="print model calls and tokens/s on stderr")


def _load(args: argparse.Namespace):
    import torch

    import llada  # noqa: F401  (registers the model type)
    from llada import LLaDAModelLM
    from llada.defaults import resolve_model

    try:
        path = resolve_model(args.model, "instruct")
    except FileNotFoundError as err:
        raise SystemExit(f"llada: {err}") from None
    device = args.device
    if device == "auto":
        device = "cuda" if torch.cuda.is_available() else "cpu"
    dtype_name = args.dtype
    if dtype_name == "auto":
        dtype_name = "bfloat16" if str(device).startswith("cuda") else "float32"
    model = LLaDAModelLM.from_pretrained(path, dtype=getattr(torch, dtype_name)).to(device).eval()
    tokenizer = None
    try:
        from transformers import AutoTokenizer

        tokenizer = AutoTokenizer.from_pretrained(path)
    except Exception:  # noqa: BLE001  (no tokenizer in the folder: ids only)
        tokenizer = None
    return model, tokenizer, device


def _progress_callback(cfg: SamplerConfig, enabled: bool):
    if not enabled:
        return None, None
    from tqdm.auto import tqdm

    bar = tqdm(total=cfg.steps, desc="denoising", unit="step", file=sys.stderr, leave=False)

    def callback(event) -> None:
        bar.set_postfix(nfe=event.nfe, block=event.block, refresh=False)
        bar.update(1)

    return callback, bar


def _run_generate(model, ids, attention_mask, cfg: SamplerConfig, args, device):
    import time

    import torch

    from .generate import generate

    generator = None
    if args.seed is not None:
        torch.manual_seed(args.seed)
        generator = torch.Generator(device=device).manual_seed(args.seed)
    callback, bar = _progress_callback(cfg, args.progress)
    start = time.perf_counter()
    result = generate(model, ids, attention_mask, config=cfg, callback=callback, generator=generator, return_dict=True)
    elapsed = time.perf_counter() - start
    if bar is not None:
        bar.close()
    if args.show_nfe:
        n = result.sequences.shape[0] * cfg.gen_length
        print(f"nfe {result.nfe}  {elapsed:.2f} s  {n / max(elapsed, 1e-9):.1f} tok/s", file=sys.stderr)
    return result


def _special(tokenizer, model, cfg: SamplerConfig) -> SamplerConfig:
    """Fill the EoT id from the tokenizer when the user did not give one."""
    if tokenizer is None or cfg.eot_token_id is not None:
        return cfg
    from llada.tokenization import special_token_ids

    eot = special_token_ids(tokenizer, model.config).eot
    return cfg.replace(eot_token_id=eot) if eot is not None else cfg


def generate_main(argv: Optional[Sequence[str]] = None) -> int:
    """`llada generate`: sample completions for one or more prompts (a left-padded batch).

    With `--image FILE` the request goes to the LLaDA-V command (`vision.cli.generate_main`), which takes the
    same sampler flags plus the image options.
    """
    args_list = list(sys.argv[1:] if argv is None else argv)
    if any(a == "--image" or a.startswith("--image=") for a in args_list):
        from vision.cli import generate_main as vision_generate_main

        return vision_generate_main(args_list)
    parser = argparse.ArgumentParser(prog="llada generate", description="Sample from a LLaDA model.",
                                     formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    _common_arguments(parser)
    parser.add_argument("--prompt", action="append", default=[], help="prompt text (repeat for a batch)")
    parser.add_argument("--prompt-ids", action="append", type=_int_list, default=[],
                        help="prompt as comma-separated token ids (repeat for a batch; no tokenizer needed)")
    parser.add_argument("--chat", action=argparse.BooleanOptionalAction, default=True,
                        help="wrap text prompts in the chat template")
    parser.add_argument("--output", choices=("text", "ids", "json"), default=None,
                        help="text (default with a tokenizer), ids (comma-separated generated ids), or json")
    parser.add_argument("--include-prompt", action="store_true", help="print the prompt ids/text too")
    add_sampler_arguments(parser)
    args = parser.parse_args(argv)
    if not args.prompt and not args.prompt_ids:
        parser.error("give --prompt TEXT or --prompt-ids 1,2,3")
    if args.prompt and args.prompt_ids:
        parser.error("give either --prompt or --prompt-ids, not both")
    try:
        cfg = sampler_config_from_args(args)
    except ValueError as err:
        parser.error(str(err))

    import torch

    from llada.tokenization import apply_chat_template, left_pad, special_token_ids

    model, tokenizer, device = _load(args)
    if args.prompt and tokenizer is None:
        parser.error(f"--prompt needs a tokenizer in the model folder; this checkpoint has none: use --prompt-ids")
    cfg = _special(tokenizer, model, cfg)
    if args.prompt:
        seqs = []
        for text in args.prompt:
            if args.chat:
                messages = ([{"role": "system", "content": args.system}] if args.system else []) + [
                    {"role": "user", "content": text}
                ]
                seqs.append(apply_chat_template(tokenizer, messages))
            else:
                seqs.append(tokenizer(text, add_special_tokens=False)["input_ids"])
    else:
        seqs = args.prompt_ids
    pad = special_token_ids(tokenizer, model.config).pad
    ids, attention_mask = left_pad(seqs, pad, device=device)
    if bool(attention_mask.bool().all()):
        attention_mask = None
    try:
        result = _run_generate(model, ids, attention_mask, cfg, args, device)
    except ValueError as err:
        print(f"llada generate: {err}", file=sys.stderr)
        return 2
    P = ids.shape[1]
    output = args.output or ("text" if tokenizer is not None else "ids")
    rows = []
    for row, seq in enumerate(seqs):
        generated = result.sequences[row, P:].tolist()
        shown = (list(seq) + generated) if args.include_prompt else generated
        rows.append(shown)
    if output == "json":
        print(json.dumps({"sequences": rows, "nfe": result.nfe, "config": cfg.to_dict()}))
    elif output == "ids":
        for shown in rows:
            print(",".join(str(t) for t in shown))
    else:
        if tokenizer is None:
            parser.error("--output text needs a tokenizer")
        for shown in rows:
            print(tokenizer.decode(shown, skip_special_tokens=True))
    return 0


def chat_main(argv: Optional[Sequence[str]] = None) -> int:
    """`llada chat`: multi-turn chat on stdin/stdout; history kept as the reference chat.py keeps it."""
    parser = argparse.ArgumentParser(prog="llada chat", description="Chat with a LLaDA instruct model.",
                                     formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    _common_arguments(parser)
    parser.add_argument("--print-prompt-ids", action="store_true",
                        help="print each turn's prompt ids on stderr (to inspect the kept history)")
    # the reference chat.py settings
    add_sampler_arguments(parser, SamplerConfig(steps=128, gen_length=128, block_length=32))
    args = parser.parse_args(argv)
    try:
        cfg = sampler_config_from_args(args)
    except ValueError as err:
        parser.error(str(err))

    import torch

    from llada.tokenization import apply_chat_template, next_turn_prompt, special_token_ids

    model, tokenizer, device = _load(args)
    if tokenizer is None:
        raise SystemExit("llada chat: the model folder has no tokenizer")
    cfg = _special(tokenizer, model, cfg)
    eos = cfg.eos_token_id if cfg.eos_token_id is not None else special_token_ids(tokenizer, model.config).eos
    interactive = sys.stdin.isatty()
    prompt: Optional[list[int]] = None
    answer: list[int] = []
    while True:
        if interactive:
            print("user> ", end="", file=sys.stderr, flush=True)
        line = sys.stdin.readline()
        if not line:
            break
        message = line.strip()
        if message in ("exit", "quit"):
            break
        if not message:
            continue
        if prompt is None:
            messages = ([{"role": "system", "content": args.system}] if args.system else []) + [
                {"role": "user", "content": message}
            ]
            candidate = apply_chat_template(tokenizer, messages)
        else:
            candidate = next_turn_prompt(tokenizer, prompt, answer, message, eos_id=eos)
        if args.print_prompt_ids:
            print("prompt_ids " + ",".join(map(str, candidate)), file=sys.stderr, flush=True)
        ids = torch.tensor([candidate], dtype=torch.long, device=device)
        try:
            result = _run_generate(model, ids, None, cfg, args, device)
        except ValueError as err:  # e.g. the history outgrew the model: keep the previous state
            print(f"llada chat: {err}", file=sys.stderr, flush=True)
            continue
        prompt = candidate
        answer = result.sequences[0, len(candidate):].tolist()
        print(tokenizer.decode(answer, skip_special_tokens=True).strip(), flush=True)
    return 0


__all__ = ["generate_main", "chat_main", "add_sampler_arguments", "sampler_config_from_args"]
