"""LLaDA-V inference cost: seconds per image and peak memory, with and without prompt / prefix caching.

    python bench/vision.py                               # the embedded LLaDA-V if installed, else the fixture
    python bench/vision.py --model PATH --image a.png --steps 64 --gen-length 64 --block-length 32
    python bench/vision.py --random 8b --device cuda --dtype bfloat16   # LLaDA-V-8B shapes, random weights (GPU)

One image through the whole pipeline per run (load + preprocess + tower + connector + splice +
generation), timed after one warm-up run. Each variant runs in its own process so that its peak
memory (CPU: max RSS of the process; CUDA: torch.cuda.max_memory_allocated) is its own.

Variants:
  exact           the official algorithm, every step a full forward over prompt + answer
  prompt_cache    the prompt's (image rows') keys / values computed once (`prompt_cache=True`)
  prefix          the sampler's prefix cache (`cache="prefix"`: refreshed at each block)
  prompt+prefix   both
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import statistics
import subprocess
import sys
import time
from datetime import date
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
FIXTURE = ROOT.parent / "shared" / "fixtures" / "llada-v-tiny"
VARIANTS = {
    "exact": dict(prompt_cache=False, cache="none"),
    "prompt_cache": dict(prompt_cache=True, cache="none"),
    "prefix": dict(prompt_cache=False, cache="prefix"),
    "prompt+prefix": dict(prompt_cache=True, cache="prefix"),
}

#: LLaDA-V 8B shapes (REFERENCE.md 1 and 6): LLaDA-8B language model, SigLIP so400m/14 @ 384 tower.
SHAPES = {
    "8b": dict(lm=dict(d_model=4096, n_heads=32, n_kv_heads=32, n_layers=32, mlp_hidden_size=12288),
               tower=dict(hidden_size=1152, intermediate_size=4304, num_hidden_layers=27, num_attention_heads=16)),
    "small": dict(lm=dict(d_model=256, n_heads=4, n_kv_heads=4, n_layers=4, mlp_hidden_size=768),
                  tower=dict(hidden_size=64, intermediate_size=128, num_hidden_layers=3, num_attention_heads=2)),
}


def default_model() -> str:
    try:
        from llada.defaults import embedded_model_path

        path = embedded_model_path("vision")
        if (path / "config.json").is_file():
            return str(path)
    except Exception:
        pass
    return str(FIXTURE)


def build_random(shape: str, dtype, device):
    import torch
    from transformers import SiglipVisionConfig

    from vision import LlavaLLaDAConfig, LlavaLLaDAModelLM

    s = SHAPES[shape]
    config = LlavaLLaDAConfig(
        vision_config=SiglipVisionConfig(image_size=384, patch_size=14, **s["tower"]),
        image_aspect_ratio="pad", mm_patch_merge_type="spatial_unpad", max_sequence_length=16384,
        vocab_size=126464, embedding_size=126464, **s["lm"],
    )
    torch.manual_seed(0)
    with torch.device(device):
        model = LlavaLLaDAModelLM(config)
    return model.to(dtype).eval()


def run_variant(args) -> dict:
    """One process, one variant: warm-up, then `repeats` timed runs."""
    import torch

    import vision

    torch.set_num_threads(args.threads)
    dtype = getattr(torch, args.dtype)
    device = torch.device(args.device)
    if args.random:
        model = build_random(args.random, dtype, device)
        suppress = [126081, 126080, 126346, 126347]  # the LLaDA tokenizer's EOS, BOS, header ids (random model)
        prompt = torch.tensor([126080, 126346, 3840, 126347, 198, 198, -200, 70468, 44766, 126348,
                               126346, 598, 10450, 126347, 198, 198])
    elif Path(args.model).resolve() == FIXTURE.resolve():  # the fixture's prompt ids (it has no tokenizer)
        from safetensors.torch import load_file
        from transformers import AutoModel

        model = AutoModel.from_pretrained(args.model, dtype=dtype).to(device).eval()
        expected = json.loads((FIXTURE / "expected.json").read_text())
        suppress = expected["ids"]["suppressed_at_masked_positions_in_generate"]
        prompt = load_file(str(FIXTURE / "expected.safetensors"))["generate.input_ids"]
    else:  # a checkpoint with a tokenizer: the llava_llada prompt of --question
        from transformers import AutoModel, AutoTokenizer

        from vision.conversation import build_messages, encode_prompt
        from vision.generation import default_suppress_tokens

        model = AutoModel.from_pretrained(args.model, dtype=dtype).to(device).eval()
        tokenizer = AutoTokenizer.from_pretrained(args.model)
        suppress = default_suppress_tokens(model, tokenizer)
        prompt = torch.tensor(encode_prompt(tokenizer, build_messages(args.question),
                                            image_token_index=model.config.image_token_index))
    image = args.image or str(FIXTURE / "image.png")
    settings = dict(steps=args.steps, gen_length=args.gen_length, block_length=args.block_length,
                    suppress_tokens=suppress, **VARIANTS[args.variant])

    def once():
        result = vision.generate(model, prompt, [image], return_dict=True, **settings)
        if device.type == "cuda":
            torch.cuda.synchronize()
        return result

    once()  # warm-up
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats()
    times, cpu_times = [], []
    for _ in range(args.repeats):
        t0, c0 = time.perf_counter(), time.process_time()
        result = once()
        times.append(time.perf_counter() - t0)
        cpu_times.append(time.process_time() - c0)
    peak = (torch.cuda.max_memory_allocated() if device.type == "cuda"
            else resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024)
    return {
        "variant": args.variant, "seconds_per_image": statistics.median(times), "cpu_seconds": statistics.median(cpu_times),
        "peak_memory_bytes": peak, "nfe": result.nfe, "prompt_length": result.prompt_length, "repeats": args.repeats,
    }


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default=None, help="LLaDA-V checkpoint (default: embedded, else the fixture)")
    parser.add_argument("--random", choices=sorted(SHAPES), default=None, help="random weights of these shapes")
    parser.add_argument("--image", default=None)
    parser.add_argument("--steps", type=int, default=16)
    parser.add_argument("--gen-length", type=int, default=16)
    parser.add_argument("--block-length", type=int, default=8)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--dtype", default="float32")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--variants", default=",".join(VARIANTS))
    parser.add_argument("--variant", default=None, help=argparse.SUPPRESS)  # child process
    parser.add_argument("--question", default="What colour is the shape?",
                        help="the question (checkpoints with a tokenizer; the fixture and random models use fixed ids)")
    parser.add_argument("--out", default=None, help="append a markdown section to this file")
    args = parser.parse_args(argv)
    sys.path.insert(0, str(ROOT))
    if args.model is None and args.random is None:
        args.model = default_model()
    if args.variant:
        print(json.dumps(run_variant(args)))
        return 0
    given = list(argv if argv is not None else sys.argv[1:])
    child_args = [a for i, a in enumerate(given)  # without --out and its value
                  if not a.startswith("--out") and not (i > 0 and given[i - 1] == "--out")]
    rows = []
    for variant in args.variants.split(","):
        cmd = [sys.executable, __file__, "--variant", variant] + child_args
        if args.model and "--model" not in cmd:
            cmd += ["--model", args.model]
        proc = subprocess.run(cmd, capture_output=True, text=True, env=dict(os.environ, PYTHONPATH=str(ROOT)))
        if proc.returncode != 0:
            print(proc.stderr[-2000:], file=sys.stderr)
            return proc.returncode
        rows.append(json.loads(proc.stdout.strip().splitlines()[-1]))
    what = f"random {args.random}-shaped LLaDA-V" if args.random else Path(args.model).name
    command = "python bench/vision.py " + " ".join(a for a in (argv if argv is not None else sys.argv[1:]))
    machine = (f"{args.device}, {args.threads} threads" if args.device == "cpu" else args.device) + f", {platform.machine()}"
    lines = [
        f"### LLaDA-V seconds per image — {what} ({date.today().isoformat()})",
        "",
        f"Machine: {machine}. Command: `{command.strip()}`. Settings: steps {args.steps}, gen_length {args.gen_length}, "
        f"block_length {args.block_length}, {args.dtype}; median of {args.repeats} runs after a warm-up; prompt "
        f"{rows[0]['prompt_length']} positions (text + image rows).",
        "",
        "| variant | seconds / image | CPU seconds | peak memory | model calls |",
        "|---|---|---|---|---|",
    ]
    for r in rows:
        lines.append(f"| {r['variant']} | {r['seconds_per_image']:.2f} | {r['cpu_seconds']:.2f} | "
                     f"{r['peak_memory_bytes'] / 2**20:.0f} MiB | {r['nfe']} |")
    text = "\n".join(lines) + "\n"
    print(text)
    if args.out:
        with open(args.out, "a", encoding="utf-8") as fh:
            fh.write("\n" + text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
