"""Preference pairs from verifiable tasks: sample a model on prompts with checkable answers, keep a correct
sample as `chosen` and a wrong one as `rejected`.

    python -m alignment.collect --model llada/embedded/llada-mini-instruct --out runs/vrpo/prefs.jsonl \\
        [--families addition,subtraction,word_problem] [--prompts 600] [--samples 4] [--temperature 1.0]

Prompts come from the training split of the seeded synthetic corpus (`llada.corpus.sft_train_split`, single-
turn rows only), so nothing of the held-out split leaks into alignment. Each prompt is sampled `--samples`
times (Gumbel-max sampling at `--temperature`, the shared sampler); answers are checked with
`llada.corpus.check_answer`. A prompt gives a pair when at least one sample is right and one is wrong; with
`--reference-chosen`, a prompt whose samples are all wrong pairs the corpus' reference answer (chosen) with a
wrong sample; `--pairs-per-prompt K` pairs the chosen answer with up to K distinct wrong samples.
Rows: {"prompt", "chosen", "rejected", "family", "chosen_source"}.
"""

from __future__ import annotations

import argparse
import json
import random
import time
from collections import Counter
from pathlib import Path
from typing import Optional, Sequence

import torch


def collect_pairs(model, tokenizer, rows: Sequence[dict], *, samples: int, temperature: float, gen_length: int,
                  steps: int, block_length: int, batch_prompts: int = 8, seed: int = 0,
                  reference_chosen: bool = False, progress: bool = True,
                  pairs_per_prompt: int = 1) -> tuple[list[dict], dict]:
    """Sample and pair; returns (pairs, statistics per family).

    pairs_per_prompt > 1: a prompt gives up to that many pairs, its chosen answer against distinct wrong answers.
    """
    if pairs_per_prompt < 1:
        raise ValueError(f"pairs_per_prompt must be >= 1, got {pairs_per_prompt}")
    import sampling
    from llada.corpus import check_answer
    from llada.tokenization import apply_chat_template, decode_answer, left_pad, special_token_ids

    ids = special_token_ids(tokenizer, model.config)
    g = torch.Generator().manual_seed(seed)
    rng = random.Random(seed)
    pairs, stats = [], Counter()
    t0 = time.time()
    for start in range(0, len(rows), batch_prompts):
        chunk = rows[start:start + batch_prompts]
        prompts = [apply_chat_template(tokenizer, [{"role": "user", "content": r["prompt"]}]) for r in chunk]
        input_ids, mask = left_pad([p for p in prompts for _ in range(samples)], ids.pad)
        with torch.no_grad():
            out = sampling.generate(model, input_ids, mask, steps=steps, gen_length=gen_length,
                                    block_length=block_length, temperature=temperature, generator=g)
        gen = out[:, input_ids.shape[1]:].tolist()
        for i, r in enumerate(chunk):
            texts = [decode_answer(tokenizer, seq, ids).strip() for seq in gen[i * samples:(i + 1) * samples]]
            right = [t for t in texts if t and check_answer(t, r["answer"])]
            wrong = [t for t in texts if t and not check_answer(t, r["answer"])]
            stats[f"{r['family']}/samples"] += len(texts)
            stats[f"{r['family']}/correct"] += len(right)
            chosen, source = (rng.choice(right), "sample") if right else (
                (r["answer"], "reference") if reference_chosen else (None, None))
            if chosen is not None and wrong:
                if pairs_per_prompt == 1:
                    rejects = [rng.choice(wrong)]
                else:
                    rejects = list(dict.fromkeys(w for w in wrong if w.strip() != chosen.strip()))
                    rng.shuffle(rejects)
                    rejects = rejects[:pairs_per_prompt]
                for rejected in rejects:
                    if rejected.strip() != chosen.strip():
                        pairs.append({"prompt": r["prompt"], "chosen": chosen, "rejected": rejected,
                                      "family": r["family"], "chosen_source": source})
                        stats[f"{r['family']}/pairs"] += 1
        if progress:
            print(f"  {min(start + batch_prompts, len(rows))}/{len(rows)} prompts, {len(pairs)} pairs, "
                  f"{time.time() - t0:.0f} s", flush=True)
    return pairs, dict(stats)


def training_prompts(families: Sequence[str], prompts: int, *, offset: int = 0) -> list[dict]:
    """Single-turn training-split prompts, ceil(prompts / len(families)) per family after skipping the first
    `offset` of each family (a replicate run on fresh prompts). Rows: {"prompt", "answer", "family"}."""
    from llada.corpus import CorpusConfig, sft_train_split

    if offset < 0:
        raise ValueError(f"offset must be >= 0, got {offset}")
    per_family = -(-prompts // len(families))
    rows, counts = [], Counter()
    for r in sft_train_split(CorpusConfig()):
        user = [m for m in r["messages"] if m["role"] == "user"]
        if r["family"] in families and len(user) == 1 and counts[r["family"]] < offset + per_family:
            if counts[r["family"]] >= offset:
                rows.append({"prompt": user[0]["content"], "answer": r["answer"], "family": r["family"]})
            counts[r["family"]] += 1
    if not rows:
        raise ValueError(f"no training prompts left after offset {offset} in families {list(families)}")
    return rows


def main(argv: Optional[Sequence[str]] = None) -> int:
    import llada
    from transformers import AutoTokenizer

    from llada.corpus import FAMILIES
    from llada.defaults import resolve_model

    ap = argparse.ArgumentParser(prog="python -m alignment.collect", description=__doc__.strip().splitlines()[0])
    ap.add_argument("--model", default=None, help="model to sample (default: the embedded instruct model)")
    ap.add_argument("--out", required=True)
    ap.add_argument("--families", default=",".join(FAMILIES))
    ap.add_argument("--prompts", type=int, default=600, help="training prompts to sample (spread over the families)")
    ap.add_argument("--samples", type=int, default=4)
    ap.add_argument("--temperature", type=float, default=1.0)
    ap.add_argument("--gen-length", type=int, default=32)
    ap.add_argument("--steps", type=int, default=32)
    ap.add_argument("--block-length", type=int, default=32)
    ap.add_argument("--batch-prompts", type=int, default=8)
    ap.add_argument("--reference-chosen", action="store_true", help="pair the reference answer when no sample is right")
    ap.add_argument("--pairs-per-prompt", type=int, default=1,
                    help="up to this many pairs per prompt (its chosen answer against distinct wrong answers)")
    ap.add_argument("--offset", type=int, default=0,
                    help="skip the first OFFSET eligible prompts of each family (fresh prompts for a replicate run)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--threads", type=int, default=None)
    args = ap.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    families = [f.strip() for f in args.families.split(",") if f.strip()]
    unknown = set(families) - set(FAMILIES)
    if unknown:
        raise SystemExit(f"unknown families {sorted(unknown)}; known: {', '.join(FAMILIES)}")
    path = resolve_model(args.model, "instruct")
    model = llada.LLaDAModelLM.from_pretrained(path, dtype=torch.float32).eval()
    tok = AutoTokenizer.from_pretrained(path)
    try:
        rows = training_prompts(families, args.prompts, offset=args.offset)
    except ValueError as err:
        raise SystemExit(str(err)) from err
    pairs, stats = collect_pairs(model, tok, rows, samples=args.samples, temperature=args.temperature,
                                 gen_length=args.gen_length, steps=args.steps, block_length=args.block_length,
                                 batch_prompts=args.batch_prompts, seed=args.seed,
                                 reference_chosen=args.reference_chosen, pairs_per_prompt=args.pairs_per_prompt)
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text("".join(json.dumps(p) + "\n" for p in pairs))
    print(json.dumps({"prompts": len(rows), "pairs": len(pairs), **stats}, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
