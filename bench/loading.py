"""Loading benchmark: wall time and peak resident memory of `from_pretrained` in bf16.

Checks the low-memory claim: loading a bf16 checkpoint into a bf16 model must not build a full fp32 copy
(transformers initialises on the meta device and materialises tensors from the safetensors files).
A model of N parameters in bf16 is 2N bytes; an fp32 initialisation would add 4N bytes on top.

    python bench/loading.py [--d-model 2048 --layers 8 --mlp 5632 --vocab 32000]

Writes a random checkpoint to a temporary folder, loads it in a fresh process, and prints a Markdown row.
"""

from __future__ import annotations

import argparse
import json
import platform
import subprocess
import sys
import tempfile
import textwrap
import time
from pathlib import Path

import torch


def make_checkpoint(folder: Path, args) -> int:
    from llada import LLaDAConfig, LLaDAModelLM

    cfg = LLaDAConfig(d_model=args.d_model, n_heads=args.d_model // 128, n_layers=args.layers,
                      mlp_hidden_size=args.mlp, vocab_size=args.vocab, embedding_size=args.vocab,
                      mask_token_id=args.vocab - 1, eos_token_id=args.vocab - 2, pad_token_id=args.vocab - 2)
    with torch.device("meta"):
        model = LLaDAModelLM(cfg)
    model = model.to_empty(device="cpu").to(torch.bfloat16)
    for p in model.parameters():
        torch.nn.init.normal_(p, std=0.02)
    n = sum(p.numel() for p in model.parameters())
    model.save_pretrained(folder)
    del model
    return n


def measure(folder: Path) -> dict:
    code = textwrap.dedent(f"""
        import json, time, torch, llada
        def status(key):
            for line in open("/proc/self/status"):
                if line.startswith(key + ":"):
                    return int(line.split()[1])
        base = status("VmRSS")
        t0 = time.perf_counter()
        m = llada.LLaDAModelLM.from_pretrained({str(folder)!r}, dtype=torch.bfloat16)
        dt = time.perf_counter() - t0
        # touch every weight so memory-mapped pages are really resident before reading the peak
        total = sum(float(p.sum()) for p in m.parameters())
        peak = status("VmHWM")
        print(json.dumps(dict(seconds=dt, base_kb=base, peak_kb=peak, dtype=str(m.dtype))))
    """)
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--d-model", type=int, default=2048)
    ap.add_argument("--layers", type=int, default=8)
    ap.add_argument("--mlp", type=int, default=5632)
    ap.add_argument("--vocab", type=int, default=32000)
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        n = make_checkpoint(Path(tmp), args)
        r = measure(Path(tmp))
    bf16_gb = 2 * n / 1e9
    grown_gb = (r["peak_kb"] - r["base_kb"]) * 1024 / 1e9
    print(f"| {time.strftime('%Y-%m-%d')} | {platform.processor() or platform.machine()}, {torch.get_num_threads()} threads "
          f"| {n / 1e6:.0f}M params | bf16 weights {bf16_gb:.2f} GB | load {r['seconds']:.1f} s "
          f"| peak RSS growth {grown_gb:.2f} GB ({grown_gb / bf16_gb:.2f}x the bf16 size; fp32 init would be >= 3x) |")


if __name__ == "__main__":
    main()
