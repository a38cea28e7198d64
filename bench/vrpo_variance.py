"""Exact Var(score) of the Table 2 settings along a VRPO run: every checkpoint against the reference.

    python bench/vrpo_variance.py --run runs/vrpo8_ckpt/vrpo --reference llada/embedded/llada-mini-instruct \\
        --pairs runs/vrpo8/prefs.jsonl [--out runs/vrpo8_ckpt/trajectory.md]

For every `checkpoint-*` (and `final`) of the run, `alignment.variance.exact_pair_components` scores every mask
of each answer under the policy and the reference (answers up to 16 tokens), and the exact Var(score) of each
setting is averaged over the pairs: no Monte Carlo noise, so it shows where the theory's order holds and how
the gaps change as the policy moves away from the reference. Also reported, per ELBO term of the antithetic
difference v_theta - v_ref (summed over chosen and rejected, before beta^2): the part of the variance between
timesteps, Var_l(E[v | l]), and within them, E_l[Var(v | l)]; at a fixed budget n_t x n_yt the allocations
differ only through the first.
"""

from __future__ import annotations

import argparse
import re
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

SETTINGS = "8x1,4x1,2x2,1x4,1x1,4x1:noanti"


def checkpoints(run: Path) -> list[tuple[str, Path]]:
    found = sorted((int(m.group(1)), p) for p in run.glob("checkpoint-*")
                   if (m := re.fullmatch(r"checkpoint-(\d+)", p.name)) and (p / "config.json").is_file())
    out = [(f"step {step}", p) for step, p in found]
    if (run / "final" / "config.json").is_file():
        out.append(("final", run / "final"))
    if not out:
        raise SystemExit(f"{run}: no checkpoint-* or final model folders")
    return out


def main() -> int:
    import llada
    from transformers import AutoTokenizer

    from alignment.data import tokenize_preferences
    from alignment.variance import VarianceSetting, exact_pair_components, exact_score_variance
    from llada.data import read_rows

    ap = argparse.ArgumentParser(description=__doc__.strip().splitlines()[0])
    ap.add_argument("--run", required=True, help="alignment.train output_dir (saved with save_steps > 0)")
    ap.add_argument("--reference", required=True)
    ap.add_argument("--pairs", required=True, nargs="+")
    ap.add_argument("--max-pairs", type=int, default=None)
    ap.add_argument("--beta", type=float, default=0.2)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--out", default=None)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    settings = [VarianceSetting.parse(s) for s in SETTINGS.split(",")]
    reference = llada.LLaDAModelLM.from_pretrained(args.reference, dtype=torch.float32).eval()
    tok = AutoTokenizer.from_pretrained(args.reference)
    pairs = [p.as_tuple() for p in tokenize_preferences(read_rows(args.pairs), tok, max_length=1024)]
    pairs = pairs[: args.max_pairs] if args.max_pairs else pairs
    head = ["policy"] + [s.label for s in settings] + ["off / on (4x1)", "between", "within", "mean score"]
    lines = [f"Exact Var(score), beta {args.beta}, {len(pairs)} pairs of {', '.join(args.pairs)}, reference "
             f"{args.reference}, policies from {args.run}:", "",
             "| " + " | ".join(head) + " |", "|---" * len(head) + "|"]
    t0 = time.time()
    for name, path in checkpoints(Path(args.run)):
        policy = llada.LLaDAModelLM.from_pretrained(str(path), dtype=torch.float32).eval()
        with torch.no_grad():
            comps = [exact_pair_components(policy, reference, p) for p in pairs]
        var = [sum(exact_score_variance(c, s, args.beta) for c in comps) / len(comps) for s in settings]
        between = sum(sum(x.between for x in c["antithetic"]) for c in comps) / len(comps)
        within = sum(sum(x.within for x in c["antithetic"]) for c in comps) / len(comps)
        mean = args.beta * sum(c["antithetic"][0].mean - c["antithetic"][1].mean for c in comps) / len(comps)
        by = dict(zip([s.label for s in settings], var))
        ratio = by["4x1 (no antithetic)"] / by["4x1"] if by["4x1"] > 0 else float("inf")
        row = [name] + [f"{v:.4g}" for v in var] + [f"{ratio:.1f}",
                                                    f"{between:.3g}", f"{within:.3g}", f"{mean:.3g}"]
        lines.append("| " + " | ".join(row) + " |")
        print(lines[-1], flush=True)
    lines += ["", f"({time.time() - t0:.0f} s)"]
    text = "\n".join(lines) + "\n"
    if args.out:
        Path(args.out).write_text(text)
    print(text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
