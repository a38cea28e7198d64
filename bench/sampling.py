"""Sampler benchmark: tokens/s and model calls (NFE) of the exact and the fast modes, with agreement.

    python bench/sampling.py                                  # random LLaDA model (4 layers, d 256), gen 256
    python bench/sampling.py --model llada/embedded/llada-mini-instruct --prompts 4
    python bench/sampling.py --gen-length 512 --block-length 32 --device cuda --dtype bfloat16 \
        --d-model 4096 --layers 32 --heads 32 --mlp 12288 --vocab 126464          # 8B-shaped, random, GPU

Every mode runs on the same model, prompts and settings (batch 1, steps = gen_length, i.e. one token
per step for the exact sampler, as Fast-dLLM's baseline). Modes:

- reference: a faithful port of the official `generate.py` (one full forward per step, softmax and
  Gumbel over the whole sequence) -- the "run naively" baseline;
- exact: `sampling.generate` (must agree 100% with reference);
- threshold / factor: parallel decoding; prefix / dual: approximate KV caches; and their combinations.

Agreement = fraction of generated tokens equal to the exact mode's; "same" = fraction of prompts whose
whole output is identical. With `--answers FILE` (jsonl of {"prompt", "answer"}) and a tokenizer, task
accuracy (the text before the first EOS / <|eot_id|>, checked by `llada.corpus.check_answer`) is reported too.
Prints a Markdown table and, with --out, appends it (with machine, command and date) to a file.
"""

from __future__ import annotations

import argparse
import datetime as _dt
import json
import platform
import shlex
import sys
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import llada  # noqa: E402,F401
import sampling  # noqa: E402


# ----------------------------------------------------------------------------- reference (naive)
def _add_gumbel_noise(logits, temperature):
    if temperature == 0:
        return logits
    logits = logits.to(torch.float64)
    noise = torch.rand_like(logits, dtype=torch.float64)
    gumbel_noise = (-torch.log(noise)) ** temperature
    return logits.exp() / gumbel_noise


def _get_num_transfer_tokens(mask_index, steps):
    mask_num = mask_index.sum(dim=1, keepdim=True)
    base = mask_num // steps
    remainder = mask_num % steps
    num_transfer_tokens = torch.zeros(mask_num.size(0), steps, device=mask_index.device, dtype=torch.int64) + base
    for i in range(mask_num.size(0)):
        num_transfer_tokens[i, : remainder[i]] += 1
    return num_transfer_tokens


@torch.no_grad()
def reference_generate(model, prompt, attention_mask=None, steps=128, gen_length=128, block_length=128,
                       temperature=0.0, cfg_scale=0.0, remasking="low_confidence", mask_id=None):
    """The official LLaDA `generate.py`, line for line (mask id from the config instead of a literal)."""
    mask_id = model.config.mask_token_id if mask_id is None else mask_id
    x = torch.full((prompt.shape[0], prompt.shape[1] + gen_length), mask_id, dtype=torch.long).to(prompt.device)
    x[:, : prompt.shape[1]] = prompt.clone()
    if attention_mask is not None:
        attention_mask = torch.cat([attention_mask, torch.ones((prompt.shape[0], gen_length),
                                                               dtype=attention_mask.dtype, device=prompt.device)], dim=-1)
    prompt_index = x != mask_id
    num_blocks = gen_length // block_length
    steps = steps // num_blocks
    for num_block in range(num_blocks):
        block_mask_index = x[:, prompt.shape[1] + num_block * block_length: prompt.shape[1] + (num_block + 1) * block_length] == mask_id
        num_transfer_tokens = _get_num_transfer_tokens(block_mask_index, steps)
        for i in range(steps):
            mask_index = x == mask_id
            if cfg_scale > 0.0:
                un_x = x.clone()
                un_x[prompt_index] = mask_id
                x_ = torch.cat([x, un_x], dim=0)
                attention_mask_ = None if attention_mask is None else torch.cat([attention_mask, attention_mask], dim=0)
                logits = model(x_, attention_mask=attention_mask_).logits
                logits, un_logits = torch.chunk(logits, 2, dim=0)
                logits = un_logits + (cfg_scale + 1) * (logits - un_logits)
            else:
                logits = model(x, attention_mask=attention_mask).logits
            logits_with_noise = _add_gumbel_noise(logits, temperature=temperature)
            x0 = torch.argmax(logits_with_noise, dim=-1)
            if remasking == "low_confidence":
                p = F.softmax(logits, dim=-1)
                x0_p = torch.squeeze(torch.gather(p, dim=-1, index=torch.unsqueeze(x0, -1)), -1)
            elif remasking == "random":
                x0_p = torch.rand((x0.shape[0], x0.shape[1]), device=x0.device)
            else:
                raise NotImplementedError(remasking)
            x0_p[:, prompt.shape[1] + (num_block + 1) * block_length:] = -np.inf
            x0 = torch.where(mask_index, x0, x)
            confidence = torch.where(mask_index, x0_p, -np.inf)
            transfer_index = torch.zeros_like(x0, dtype=torch.bool, device=x0.device)
            for j in range(confidence.shape[0]):
                _, select_index = torch.topk(confidence[j], k=num_transfer_tokens[j, i])
                transfer_index[j, select_index] = True
            x[transfer_index] = x0[transfer_index]
    return x


# ----------------------------------------------------------------------------- models and prompts
def random_model(args) -> torch.nn.Module:
    from llada import LLaDAConfig, LLaDAModelLM

    cfg = LLaDAConfig(d_model=args.d_model, n_heads=args.heads, n_layers=args.layers, mlp_hidden_size=args.mlp,
                      vocab_size=args.vocab, embedding_size=args.vocab, mask_token_id=args.vocab - 1,
                      eos_token_id=args.vocab - 2, pad_token_id=args.vocab - 2, max_sequence_length=4096)
    torch.manual_seed(args.seed)
    with torch.device(args.device):
        model = LLaDAModelLM(cfg)
    return model.to(getattr(torch, args.dtype)).eval()


def load_model(args):
    if args.model == "random":
        return random_model(args), None
    from transformers import AutoTokenizer

    from llada import LLaDAModelLM

    model = LLaDAModelLM.from_pretrained(args.model, dtype=getattr(torch, args.dtype)).to(args.device).eval()
    try:
        tok = AutoTokenizer.from_pretrained(args.model)
    except Exception:  # noqa: BLE001
        tok = None
    return model, tok


DEFAULT_QUESTIONS = [
    "What is 12 + 7? Answer with the number.",
    "Name the capital of France.",
    "Write one sentence about the sea.",
    "List three colours.",
    "What is 9 times 6?",
    "Explain what a prime number is in one sentence.",
    "Translate 'good morning' into French.",
    "What comes after Tuesday?",
]


def make_prompts(args, model, tok):
    g = torch.Generator().manual_seed(args.seed)
    answers = None
    if args.answers:
        rows = [json.loads(line) for line in Path(args.answers).read_text().splitlines() if line.strip()]
        rows = rows[: args.prompts]
        texts, answers = [r["prompt"] for r in rows], [str(r["answer"]) for r in rows]
    else:
        texts = (DEFAULT_QUESTIONS * args.prompts)[: args.prompts]
    if tok is not None:
        from llada.tokenization import apply_chat_template

        ids = [apply_chat_template(tok, [{"role": "user", "content": t}]) for t in texts]
    else:
        vocab = model.config.padded_vocab_size
        ids = [torch.randint(0, vocab - 2, (args.prompt_length,), generator=g).tolist() for _ in texts]
    return [torch.tensor([s], device=args.device) for s in ids], answers


MODES = {
    "reference": None,
    "exact": dict(),
    "threshold 0.9": dict(threshold=0.9),
    "factor 1.0": dict(factor=1.0),
    "prefix cache": dict(cache="prefix"),
    "dual cache": dict(cache="dual"),
    "threshold 0.9 + prefix": dict(threshold=0.9, cache="prefix"),
    "threshold 0.9 + dual": dict(threshold=0.9, cache="dual"),
    "factor 1.0 + dual": dict(factor=1.0, cache="dual"),
    "threshold 0.9 + dual + early stop": dict(threshold=0.9, cache="dual", early_stop=True),
}


def _sync(device):
    if str(device).startswith("cuda"):
        torch.cuda.synchronize()


def run_mode(name, model, prompts, settings, device):
    outs, nfes, elapsed, cpu = [], [], 0.0, 0.0
    for ids in prompts:
        _sync(device)
        start, cpu_start = time.perf_counter(), time.process_time()
        if MODES[name] is None:
            out = reference_generate(model, ids, **settings)
            nfe = settings["steps"]
        else:
            res = sampling.generate(model, ids, return_dict=True, **settings, **MODES[name])
            out, nfe = res.sequences, res.nfe
        _sync(device)
        elapsed += time.perf_counter() - start
        cpu += time.process_time() - cpu_start
        outs.append(out[0, ids.shape[1]:].cpu())
        nfes.append(nfe)
    return outs, nfes, elapsed, cpu


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="random", help="'random' or a checkpoint folder / Hub id")
    parser.add_argument("--d-model", type=int, default=256)
    parser.add_argument("--layers", type=int, default=4)
    parser.add_argument("--heads", type=int, default=4)
    parser.add_argument("--mlp", type=int, default=768)
    parser.add_argument("--vocab", type=int, default=8192)
    parser.add_argument("--prompts", type=int, default=2)
    parser.add_argument("--prompt-length", type=int, default=32, help="random prompts (no tokenizer)")
    parser.add_argument("--answers", default=None, help="jsonl of {prompt, answer} for task accuracy")
    parser.add_argument("--gen-length", type=int, default=256)
    parser.add_argument("--block-length", type=int, default=32)
    parser.add_argument("--steps", type=int, default=None, help="default: gen-length (one token per step)")
    parser.add_argument("--modes", default=",".join(MODES), help="comma-separated subset of: " + ", ".join(MODES))
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--dtype", default="float32")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--warmup", action=argparse.BooleanOptionalAction, default=True)
    parser.add_argument("--out", default=None, help="append the Markdown result to this file")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    modes = [m.strip() for m in args.modes.split(",") if m.strip()]
    for m in modes:
        if m not in MODES:
            parser.error(f"unknown mode {m!r}")
    if "exact" not in modes:
        modes.insert(0, "exact")

    model, tok = load_model(args)
    prompts, answers = make_prompts(args, model, tok)
    settings = dict(steps=args.steps or args.gen_length, gen_length=args.gen_length, block_length=args.block_length)
    if args.warmup:
        sampling.generate(model, prompts[0], steps=args.block_length // 8 or 1, gen_length=args.block_length,
                          block_length=args.block_length, cache="dual")

    results = {}
    for name in modes:
        outs, nfes, elapsed, cpu = run_mode(name, model, prompts, settings, args.device)
        results[name] = (outs, nfes, elapsed, cpu)
        print(f"{name:<36} {len(prompts) * args.gen_length / elapsed:8.1f} tok/s  nfe {np.mean(nfes):6.1f}  "
              f"{elapsed:7.1f} s wall  {cpu:7.1f} s cpu", file=sys.stderr, flush=True)

    exact_outs, _, exact_time, exact_cpu = results["exact"]
    if answers and tok is not None:
        from llada.corpus import check_answer
        from llada.tokenization import decode_answer, special_token_ids

        ids = special_token_ids(tok, model.config)

    n_params = sum(p.numel() for p in model.parameters())
    lines = [
        "| mode | tok/s (wall) | speed-up (wall) | tok per CPU-s | speed-up (CPU) | NFE / prompt "
        "| token agreement | identical outputs |" + (" accuracy |" if answers and tok is not None else ""),
        "|---|---:|---:|---:|---:|---:|---:|---:|" + ("---:|" if answers and tok is not None else ""),
    ]
    for name in modes:
        outs, nfes, elapsed, cpu = results[name]
        agree = float(np.mean([float((o == e).float().mean()) for o, e in zip(outs, exact_outs)]))
        same = float(np.mean([bool(torch.equal(o, e)) for o, e in zip(outs, exact_outs)]))
        tps = len(prompts) * args.gen_length / elapsed
        cps = len(prompts) * args.gen_length / max(cpu, 1e-9)
        row = (f"| {name} | {tps:.1f} | {exact_time / elapsed:.2f}x | {cps:.1f} | {exact_cpu / max(cpu, 1e-9):.2f}x "
               f"| {np.mean(nfes):.1f} | {agree:.1%} | {same:.0%} |")
        if answers and tok is not None:
            acc = np.mean([check_answer(decode_answer(tok, o.tolist(), ids), a) for o, a in zip(outs, answers)])
            row += f" {acc:.1%} |"
        lines.append(row)
    machine = (f"{torch.cuda.get_device_name(0)}" if str(args.device).startswith("cuda")
               else f"CPU, {args.threads} threads ({platform.processor() or platform.machine()}), shared")
    model_desc = (f"random LLaDA d_model {args.d_model}, {args.layers} layers, {args.heads} heads, mlp {args.mlp}, "
                  f"vocab {args.vocab}" if args.model == "random" else args.model)
    header = [
        f"### gen_length {args.gen_length}, block_length {args.block_length}, steps {settings['steps']}, "
        f"{len(prompts)} prompt(s), batch 1",
        "",
        f"- model: {model_desc} ({n_params / 1e6:.1f}M parameters, {args.dtype}, {args.device})",
        f"- machine: {machine}; torch {torch.__version__}",
        f"- command: `python bench/sampling.py {shlex.join(argv if argv is not None else sys.argv[1:])}`",
        f"- date: {_dt.date.today().isoformat()}",
        "",
    ]
    text = "\n".join(header + lines) + "\n"
    print(text)
    if args.out:
        with open(args.out, "a") as fh:
            fh.write("\n" + text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
