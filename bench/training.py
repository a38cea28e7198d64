"""Training throughput: tokens per second of a full optimizer step (forward, LLaDA loss, backward, AdamW).

    python bench/training.py [--model llada/embedded/llada-mini-base] [--threads 1 2] [--steps 10]
    python bench/training.py --gpu-1b [--seq-len 4096 --batch 4]         (on a CUDA GPU)

CPU: the embedded model's shape (read from its config.json, or the recipe's `model_config` when the embedded
model is not built yet), the pretraining objective on seq_len x batch tokens, for each thread count.
GPU (--gpu-1b): a 1B-shaped LLaDA in bf16 autocast; reports tokens/s and model FLOPs utilisation,
MFU = (6 N + 12 n_layers d_model seq_len) x tokens/s / peak, with N the non-embedding parameters plus the
LM head and peak the GPU's dense bf16 peak (--peak-tflops, default 989 for an H100 SXM).
Prints a Markdown table row per setting (for bench/results/training.md).
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

import torch  # noqa: E402


def _embedded_config():
    import yaml

    from llada import LLaDAConfig
    from llada.defaults import embedded_model_path

    path = embedded_model_path("base")
    if (path / "config.json").is_file():
        return LLaDAConfig.from_pretrained(str(path)), str(path)
    recipe = yaml.safe_load((ROOT / "configs/recipes/embedded_pretrain.yaml").read_text())
    fields = dict(recipe["model_config"], vocab_size=1024, embedding_size=1024, mask_token_id=2, eos_token_id=1,
                  pad_token_id=1)
    return LLaDAConfig(**fields), "configs/recipes/embedded_pretrain.yaml (model_config)"


def measure(model, *, batch: int, seq_len: int, steps: int, warmup: int, device: str, autocast_dtype=None,
            optimizer=None) -> float:
    """Seconds per optimizer step of the pretraining objective (median over `steps`)."""
    from llada.losses import pretraining_objective

    vocab = model.config.vocab_size
    mask = model.config.mask_token_id
    g = torch.Generator().manual_seed(0)
    x = torch.randint(0, vocab, (batch, seq_len), generator=g)
    x[x == mask] = (mask + 1) % vocab
    x = x.to(device)
    optimizer = optimizer or torch.optim.AdamW(model.parameters(), lr=1e-4, weight_decay=0.1)
    times = []
    for i in range(warmup + steps):
        if device == "cuda":
            torch.cuda.synchronize()
        start = time.perf_counter()
        with torch.autocast(device_type=device, dtype=autocast_dtype, enabled=autocast_dtype is not None):
            out = pretraining_objective(model, x, mask_token_id=mask, generator=None)
        out.loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        if device == "cuda":
            torch.cuda.synchronize()
        if i >= warmup:
            times.append(time.perf_counter() - start)
    times.sort()
    return times[len(times) // 2]


def cpu_bench(args) -> list[str]:
    from llada import LLaDAModelLM

    config, source = _embedded_config()
    rows = []
    for threads in args.threads:
        torch.set_num_threads(threads)
        torch.manual_seed(0)
        model = LLaDAModelLM(config).train()
        sec = measure(model, batch=args.batch, seq_len=args.seq_len, steps=args.steps, warmup=2, device="cpu")
        tps = args.batch * args.seq_len / sec
        n = sum(p.numel() for p in model.parameters())
        rows.append(f"| CPU, {threads} thread(s) | {source} ({n / 1e6:.2f}M params) | {args.batch} x {args.seq_len} | "
                    f"{sec * 1000:.0f} ms | {tps:,.0f} |")
        print(rows[-1], flush=True)
    return rows


def gpu_bench(args) -> list[str]:
    from llada import LLaDAConfig, LLaDAModelLM

    if not torch.cuda.is_available():
        raise SystemExit("--gpu-1b needs a CUDA GPU")
    config = LLaDAConfig(d_model=2048, n_heads=16, n_kv_heads=16, n_layers=22, mlp_hidden_size=5632,
                         max_sequence_length=max(4096, args.seq_len))
    torch.manual_seed(0)
    model = LLaDAModelLM(config).to("cuda").train()
    if args.checkpointing:
        model.activation_checkpointing_enable()
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4, weight_decay=0.1, fused=True)
    sec = measure(model, batch=args.batch, seq_len=args.seq_len, steps=args.steps, warmup=3, device="cuda",
                  autocast_dtype=torch.bfloat16, optimizer=optimizer)
    tokens = args.batch * args.seq_len
    emb = config.padded_vocab_size * config.d_model
    n_total = sum(p.numel() for p in model.parameters())
    n_flops = n_total - emb  # the input embedding is a lookup; the LM head is a matmul and counts
    flops_per_token = 6 * n_flops + 12 * config.n_layers * config.d_model * args.seq_len
    mfu = flops_per_token * tokens / sec / (args.peak_tflops * 1e12)
    name = torch.cuda.get_device_name()
    row = (f"| {name}, bf16 autocast | 1B-shaped LLaDA ({n_total / 1e9:.2f}B params) | {args.batch} x {args.seq_len} | "
           f"{sec * 1000:.0f} ms | {tokens / sec:,.0f} | MFU {100 * mfu:.1f}% |")
    print(row, flush=True)
    print(json.dumps({"tokens_per_s": tokens / sec, "mfu": mfu, "step_s": sec,
                      "max_memory_gib": torch.cuda.max_memory_allocated() / 2 ** 30}), flush=True)
    return [row]


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--threads", type=int, nargs="+", default=[1, 2])
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--seq-len", type=int, default=128)
    parser.add_argument("--steps", type=int, default=10)
    parser.add_argument("--gpu-1b", action="store_true", help="1B-shaped model in bf16 on a CUDA GPU")
    parser.add_argument("--checkpointing", action="store_true", help="activation checkpointing (GPU run)")
    parser.add_argument("--peak-tflops", type=float, default=989.0, help="dense bf16 peak of the GPU")
    args = parser.parse_args(argv)
    print(f"# {platform.processor() or platform.machine()}, torch {torch.__version__}, "
          f"{time.strftime('%Y-%m-%d')}", flush=True)
    if args.gpu_1b:
        if args.batch == 16 and args.seq_len == 128:
            args.batch, args.seq_len = 4, 4096
        gpu_bench(args)
    else:
        cpu_bench(args)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
