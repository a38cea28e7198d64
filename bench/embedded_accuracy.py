"""Held-out accuracy per task family of an instruct model on the synthetic corpus (llada.corpus).

    python bench/embedded_accuracy.py [MODEL] [--heldout runs/embedded/corpus/heldout.jsonl] [--set compare_all]
                                      [--gen-length 32 --steps 32 --block-length 32] [--out result.json]

MODEL defaults to the embedded instruct model. Each held-out prompt goes through the chat template, the exact
sampler (`sampling.generate`, temperature 0, low-confidence remasking) generates the answer, the text before
the first `<|eot_id|>` / EOS is compared with the reference answer by `llada.corpus.check_answer`.
Without --heldout the held-out split is regenerated from the seeded corpus (`llada.corpus.heldout_split`).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections import defaultdict
from pathlib import Path
from typing import Optional, Sequence

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

import torch  # noqa: E402


def evaluate(model, tokenizer, rows: list[dict], *, gen_length: int, steps: int, block_length: int,
             batch_size: int = 32, progress: bool = True) -> dict:
    """Accuracy per family (and overall) plus every prediction."""
    import sampling
    from llada.corpus import check_answer
    from llada.tokenization import apply_chat_template, decode_answer, left_pad, special_token_ids

    ids = special_token_ids(tokenizer, model.config)
    correct, total, predictions = defaultdict(int), defaultdict(int), []
    start = time.time()
    for i in range(0, len(rows), batch_size):
        chunk = rows[i: i + batch_size]
        prompts = [apply_chat_template(tokenizer, r["messages"]) for r in chunk]
        input_ids, attention_mask = left_pad(prompts, ids.pad)
        with torch.no_grad():
            out = sampling.generate(model, input_ids, attention_mask, steps=steps, gen_length=gen_length,
                                    block_length=block_length, temperature=0.0, remasking="low_confidence")
        for r, seq in zip(chunk, out[:, input_ids.shape[1]:].tolist()):
            text = decode_answer(tokenizer, seq, ids)
            ok = check_answer(text, r["answer"])
            correct[r["family"]] += ok
            total[r["family"]] += 1
            predictions.append({"family": r["family"], "prompt": r["prompt"], "answer": r["answer"],
                                "prediction": text, "correct": bool(ok)})
        if progress:
            print(f"  {min(i + batch_size, len(rows))}/{len(rows)} done", file=sys.stderr, flush=True)
    per_family = {f: {"correct": correct[f], "total": total[f], "accuracy": correct[f] / total[f]} for f in total}
    n_ok, n = sum(correct.values()), sum(total.values())
    return {"per_family": per_family, "overall": n_ok / max(n, 1), "n": n, "seconds": time.time() - start,
            "settings": {"gen_length": gen_length, "steps": steps, "block_length": block_length,
                         "temperature": 0.0, "remasking": "low_confidence"},
            "predictions": predictions}


def main(argv: Optional[Sequence[str]] = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("model", nargs="?", default=None, help="model folder (default: the embedded instruct model)")
    parser.add_argument("--heldout", default=None, help="heldout.jsonl (default: regenerate from the seeded corpus)")
    parser.add_argument("--set", default="heldout", choices=("heldout", "compare_all"),
                        help="heldout: llada.corpus.heldout_split (every family); compare_all: every held-out compare "
                             "pair in both orders (llada.corpus.compare_heldout_all, 1452 prompts)")
    parser.add_argument("--gen-length", type=int, default=32)
    parser.add_argument("--steps", type=int, default=32)
    parser.add_argument("--block-length", type=int, default=32)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--limit", type=int, default=0, help="at most this many rows per family (0: all)")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--out", default=None, help="write the result (with predictions) as JSON here")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)

    import llada  # noqa: F401
    from transformers import AutoTokenizer

    from llada.corpus import CorpusConfig, compare_heldout_all, heldout_split
    from llada.defaults import resolve_model

    path = resolve_model(args.model, "instruct")
    model = llada.LLaDAModelLM.from_pretrained(path, dtype=torch.float32).eval()
    tokenizer = AutoTokenizer.from_pretrained(path)
    if args.heldout:
        rows = [json.loads(line) for line in open(args.heldout, encoding="utf-8") if line.strip()]
    elif args.set == "compare_all":
        rows = compare_heldout_all(CorpusConfig())
    else:
        rows = heldout_split(CorpusConfig())
    if args.limit:
        seen: dict = defaultdict(int)
        kept = []
        for r in rows:
            if seen[r["family"]] < args.limit:
                seen[r["family"]] += 1
                kept.append(r)
        rows = kept
    result = evaluate(model, tokenizer, rows, gen_length=args.gen_length, steps=args.steps,
                      block_length=args.block_length, batch_size=args.batch_size)
    result["model"] = str(path)
    for family, r in sorted(result["per_family"].items()):
        print(f"{family:14s} {r['correct']:4d}/{r['total']:<4d} {100 * r['accuracy']:5.1f}%")
    print(f"{'overall':14s} {100 * result['overall']:5.1f}%  ({result['seconds']:.0f} s)")
    if args.out:
        Path(args.out).write_text(json.dumps(result, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
