"""Held-out accuracy of several `bench/vrpo.py` runs of one configuration (replicates), pooled.

    python bench/vrpo_replicates.py runs/vrpo8 runs/vrpo_rep1 runs/vrpo_rep2 [--family compare] [--set compare_all]
        [--sft runs/vrpo8/accuracy_sft_compare_all.json] [--out FILE]

Each WORK folder holds accuracy_sft.json, accuracy_vrpo.json and accuracy_naive_dpo.json from
`bench/embedded_accuracy.py` (the same held-out prompts in each; with --set compare_all the
accuracy_*_compare_all.json files of `bench/vrpo.py --compare-all`; --sft names one SFT result for every run). Per run: correct answers of both aligned models
and the paired McNemar split against the SFT model. Pooled: on every held-out prompt, the mean correctness of a
method's models over the runs minus the SFT model's, and the two-sided sign-flip permutation p-value of its mean
(the prompts are the unit; each run's training randomness is averaged inside a prompt's difference).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from vrpo import flips  # noqa: E402

METHODS = ("vrpo", "naive_dpo")


def _correct(result: dict, family: str | None) -> dict[tuple[str, str], int]:
    return {(r["family"], r["prompt"]): int(r["correct"]) for r in result["predictions"]
            if family is None or r["family"] == family}


def sign_flip_p(diffs: torch.Tensor, *, resamples: int = 200_000, seed: int = 0) -> float:
    """Two-sided p-value of mean(diffs) = 0 under random sign flips of the per-prompt differences."""
    g = torch.Generator().manual_seed(seed)
    signs = torch.randint(0, 2, (resamples, diffs.numel()), generator=g, dtype=torch.int8).to(diffs.dtype) * 2 - 1
    null = (signs * diffs).mean(dim=1).abs()
    return float(((null >= diffs.mean().abs() - 1e-12).sum() + 1) / (resamples + 1))


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.strip().splitlines()[0])
    ap.add_argument("runs", nargs="+", help="bench/vrpo.py WORK folders")
    ap.add_argument("--family", default="compare", help="family to pool (also reported: all families, if several)")
    ap.add_argument("--set", default="heldout", choices=("heldout", "compare_all"))
    ap.add_argument("--sft", default=None, help="the SFT model's result file, shared by all runs")
    ap.add_argument("--out", default=None)
    args = ap.parse_args()
    suffix = "" if args.set == "heldout" else "_" + args.set
    results = {}
    for run in args.runs:
        files = {m: Path(run) / f"accuracy_{m}{suffix}.json" for m in ("sft",) + METHODS}
        if args.sft:
            files["sft"] = Path(args.sft)
        missing = [str(f) for f in files.values() if not f.is_file()]
        if missing:
            raise SystemExit(f"{run}: missing result files {missing}")
        results[run] = {m: json.loads(f.read_text()) for m, f in files.items()}
    first = results[args.runs[0]]["sft"]
    for run, res in results.items():
        if _correct(res["sft"], None).keys() != _correct(first, None).keys():
            raise SystemExit(f"{run}: its held-out prompts differ from {args.runs[0]}'s; replicates must share them")
    fam = args.family
    total = len(_correct(first, fam))
    several = len({r["family"] for r in first["predictions"]}) > 1
    overall = " VRPO overall | naive DPO overall |" if several else ""
    lines = [f"| run | SFT {fam} | VRPO {fam} | naive DPO {fam} |" + overall, "|---" * (4 + 2 * several) + "|"]
    for run, res in results.items():
        cells = []
        for m in ("sft",) + METHODS:
            n = sum(_correct(res[m], fam).values())
            cells.append(f"{n}/{total}" + ("" if m == "sft" else " (+{}/-{}, p={:.2g})".format(*flips(res["sft"], res[m])[fam])))
        cells += [f"{100 * res[m]['overall']:.1f}%" for m in METHODS] if several else []
        lines.append(f"| {run} | " + " | ".join(cells) + " |")
    lines += ["", f"Pooled over the {len(args.runs)} runs (sign-flip permutation test over held-out prompts):", ""]
    for m in METHODS:
        for scope in ((fam, None) if several else (fam,)):
            base = _correct(first, scope)
            models = [_correct(res[m], scope) for res in results.values()]
            diffs = torch.tensor([sum(c[k] for c in models) / len(models) - base[k] for k in base], dtype=torch.float64)
            lines.append(f"- {m}, {scope or 'all families'} ({len(base)} prompts): mean accuracy change "
                         f"{100 * float(diffs.mean()):+.2f} points, p = {sign_flip_p(diffs):.2g}")
    text = "\n".join(lines) + "\n"
    print(text)
    if args.out:
        Path(args.out).write_text(text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
