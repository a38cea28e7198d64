"""VRPO on the embedded instruct model, end to end, with naive DPO as the comparison (LLaDA 1.5 on a CPU).

    python bench/vrpo.py [--work runs/vrpo] [--prompts 600] [--epochs 2] [--lr 1e-4] [--reuse-pairs] [--install]
        [--families compare] [--samples 8] [--pairs-per-prompt 3] [--no-reference-chosen] [--beta B] [--sft-weight W]

1. `alignment.collect`: sample the embedded instruct model on training-split prompts of the synthetic corpus
   (temperature 1, --samples per prompt); a right sample is `chosen`, a wrong one `rejected` (the corpus'
   reference answer is chosen when no sample is right, unless --no-reference-chosen).
2. `alignment.train` twice through `accelerate launch`, same pairs, same steps, same seed:
   VRPO (n = 8, n_t = 8 x n_yt = 1, antithetic) and naive DPO on ELBOs (n = 1, independent draws).
3. `bench/embedded_accuracy.py`: held-out accuracy per task family of the SFT model and of both aligned models
   (with --compare-all also on every held-out compare pair in both orders, 1452 prompts).
4. `alignment.variance`: the Table 2 settings (R = 8 repeats) for the VRPO policy against its reference.
5. Everything (commands, wall times, accuracies, the variance table) goes to WORK/report.md;
   --install copies the VRPO model into llada/embedded/llada-mini-vrpo.
"""

from __future__ import annotations

import argparse
import json
import shlex
import shutil
import subprocess
import sys
import time
from pathlib import Path
from typing import Sequence

ROOT = Path(__file__).resolve().parents[1]


def run(cmd: list[str], log: list[dict]) -> None:
    print("$ " + shlex.join(cmd), flush=True)
    t0 = time.time()
    subprocess.run(cmd, cwd=ROOT, check=True)
    log.append({"command": shlex.join(cmd), "wall_seconds": round(time.time() - t0, 1)})


def flips(base: dict, other: dict) -> dict[str, tuple[int, int, float]]:
    """Per family, paired against `base` on the same held-out prompts: (wrong -> right, right -> wrong, the exact
    two-sided McNemar p-value of that split)."""
    from math import comb

    before = {(r["family"], r["prompt"]): r["correct"] for r in base["predictions"]}
    out: dict[str, list[int]] = {}
    for r in other["predictions"]:
        was = before[(r["family"], r["prompt"])]
        c = out.setdefault(r["family"], [0, 0])
        c[0] += int(r["correct"] and not was)
        c[1] += int(was and not r["correct"])
    result = {}
    for family, (gain, loss) in out.items():
        n, k = gain + loss, min(gain, loss)
        p = min(1.0, 2 * sum(comb(n, i) for i in range(k + 1)) / 2 ** n) if n else 1.0
        result[family] = (gain, loss, p)
    return result


def compare_all_lines(work: Path) -> list[str]:
    """The --compare-all results of WORK (every held-out compare pair in both orders), if it has them."""
    files = {n: work / f"accuracy_{n}_compare_all.json" for n in ("sft", "vrpo", "naive_dpo")}
    if not all(f.is_file() for f in files.values()):
        return []
    res = {n: json.loads(f.read_text()) for n, f in files.items()}
    total = res["sft"]["per_family"]["compare"]["total"]
    cells = [f"sft {res['sft']['per_family']['compare']['correct']}/{total}"]
    for n in ("vrpo", "naive_dpo"):
        gain, loss, p = flips(res["sft"], res[n])["compare"]
        cells.append(f"{n} {res[n]['per_family']['compare']['correct']}/{total} (+{gain}/-{loss}, p={p:.2g})")
    return ["", f"Every held-out compare pair in both orders ({total} prompts, `bench/embedded_accuracy.py --set "
            "compare_all`; wrong -> right / right -> wrong against the SFT model, exact McNemar p): "
            + "; ".join(cells) + "."]


def model_card(args, accuracy: dict, prefs: Path, log: list[dict], families: list[str],
               extra: Sequence[str] = ()) -> str:
    """README.md of llada/embedded/llada-mini-vrpo: what it is, the pairs, the commands, held-out accuracy."""
    pairs = [json.loads(line) for line in prefs.read_text().splitlines() if line.strip()]
    by_family: dict[str, int] = {}
    for p in pairs:
        by_family[p["family"]] = by_family.get(p["family"], 0) + 1
    own = sum(p.get("chosen_source") == "sample" for p in pairs)
    lines = [
        "# llada-mini-vrpo", "",
        "The embedded instruct model `llada-mini-instruct` aligned by VRPO (LLaDA 1.5: ELBO-difference DPO score, "
        "budget n = 8 as n_t = 8 x n_yt = 1, antithetic sampling of the policy and reference ELBOs) on preference "
        "pairs it generated itself on training-split prompts of the synthetic corpus (`alignment.collect`: a right "
        "sample chosen, a wrong one rejected). Not a general-purpose model.", "",
        f"- pairs: {len(pairs)} (" + ", ".join(f"{f} {n}" for f, n in sorted(by_family.items()))
        + f"); chosen side the model's own right sample in {own}, the corpus' reference answer in {len(pairs) - own}",
        f"- training: {args.epochs:g} epochs, lr {args.lr:g}, beta {args.beta if args.beta is not None else 0.2:g}, "
        f"SFT weight {args.sft_weight if args.sft_weight is not None else 0.05:g} "
        "(configs/recipes/vrpo_embedded.yaml), CPU, 1 thread",
        "- generate like the instruct model: gen_length 32, steps 32, block_length 32", "",
        "Held-out accuracy (bench/embedded_accuracy.py: the exact sampler, temperature 0, low-confidence remasking; "
        "naive DPO = n 1, no antithetic sampling, trained on the same pairs with the same steps and seed):", "",
        "| model | " + " | ".join(families) + " | overall |", "|---" * (len(families) + 2) + "|"]
    for name, res in accuracy.items():
        cells = [f"{res['per_family'][f]['correct']}/{res['per_family'][f]['total']}" for f in families]
        lines.append(f"| {name} | " + " | ".join(cells) + f" | {100 * res['overall']:.1f}% |")
    lines += list(extra)
    lines += ["", "Commands and wall times:", ""]
    lines += [f"- `{e['command']}` ({e['wall_seconds']} s)".replace(sys.executable, "python").replace(str(ROOT) + "/", "")
              for e in log]
    argv = [("--install" if a == "--install-only" else a) for a in sys.argv[1:]]
    lines += ["", "Reproduce: `python bench/vrpo.py " + " ".join(argv) + "`", ""]
    return "\n".join(lines)


def install(args, work: Path, accuracy: dict, prefs: Path, log: list[dict], families: list[str]) -> None:
    dst = ROOT / "llada" / "embedded" / "llada-mini-vrpo"
    shutil.rmtree(dst, ignore_errors=True)
    shutil.copytree(work / "vrpo" / "final", dst, ignore=shutil.ignore_patterns("training_summary.json"))
    (dst / "README.md").write_text(model_card(args, accuracy, prefs, log, families, compare_all_lines(work)))
    print(f"installed {dst}")


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.strip().splitlines()[0])
    ap.add_argument("--work", default="runs/vrpo")
    ap.add_argument("--model", default="llada/embedded/llada-mini-instruct")
    ap.add_argument("--prompts", type=int, default=600)
    ap.add_argument("--epochs", type=float, default=2.0)
    ap.add_argument("--lr", type=float, default=1e-4)
    ap.add_argument("--variance-pairs", type=int, default=128, help="pairs for the variance table (0: no table)")
    ap.add_argument("--families", default=None, help="comma-separated families to collect pairs on (default: all)")
    ap.add_argument("--samples", type=int, default=4, help="samples per prompt (alignment.collect)")
    ap.add_argument("--pairs-per-prompt", type=int, default=1)
    ap.add_argument("--no-reference-chosen", action="store_true",
                    help="only the model's own right answers as chosen (no corpus reference answers)")
    ap.add_argument("--beta", type=float, default=None, help="VRPO beta (default: the recipe's 0.2)")
    ap.add_argument("--sft-weight", type=float, default=None, help="SFT loss weight (default: the recipe's 0.05)")
    ap.add_argument("--seed", type=int, default=0, help="seed of the sampling (collect) and of both training runs")
    ap.add_argument("--offset", type=int, default=0,
                    help="skip the first OFFSET training prompts per family (a replicate on fresh prompts)")
    ap.add_argument("--compare-all", action="store_true",
                    help="also evaluate every model on every held-out compare pair in both orders (1452 prompts)")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--install", action="store_true")
    ap.add_argument("--reuse-pairs", action="store_true", help="keep WORK/prefs.jsonl from an earlier run (skip step 1)")
    ap.add_argument("--install-only", action="store_true",
                    help="install WORK's finished VRPO model (and its card) without running anything")
    args = ap.parse_args()
    work = (ROOT / args.work).resolve()
    work.mkdir(parents=True, exist_ok=True)
    py = sys.executable
    log: list[dict] = []
    prefs = work / "prefs.jsonl"
    if args.install_only:
        accuracy = {n: json.loads((work / f"accuracy_{n}.json").read_text()) for n in ("sft", "vrpo", "naive_dpo")}
        if (work / "log.json").is_file():
            log = json.loads((work / "log.json").read_text())
        else:  # an older run: the commands of its report.md
            import re
            log = [{"command": m.group(1), "wall_seconds": float(m.group(2))} for m in
                   re.finditer(r"^- `(.+)` \(([\d.]+) s\)$", (work / "report.md").read_text(), re.M)]
        install(args, work, accuracy, prefs, log, sorted(accuracy["sft"]["per_family"]))
        return 0
    if not (args.reuse_pairs and prefs.is_file()):
        cmd = [py, "-m", "alignment.collect", "--model", args.model, "--out", str(prefs), "--prompts", str(args.prompts),
               "--samples", str(args.samples), "--temperature", "1.0", "--threads", str(args.threads)]
        cmd += [] if args.no_reference_chosen else ["--reference-chosen"]
        cmd += ["--families", args.families] if args.families else []
        cmd += ["--pairs-per-prompt", str(args.pairs_per_prompt)] if args.pairs_per_prompt != 1 else []
        cmd += ["--seed", str(args.seed)] if args.seed else []
        cmd += ["--offset", str(args.offset)] if args.offset else []
        run(cmd, log)
    common = [f"model_name_or_path={args.model}", f"train_data=[{prefs}]", f"num_epochs={args.epochs}",
              f"lr={args.lr}", "log_with=null", f"num_threads={args.threads}", "save_steps=0", f"seed={args.seed}"]
    common += [f"beta={args.beta}"] if args.beta is not None else []
    common += [f"sft_weight={args.sft_weight}"] if args.sft_weight is not None else []
    launch = [py, "-m", "accelerate.commands.launch", "--config_file", "configs/accelerate/cpu.yaml",
              "-m", "alignment.train", "configs/recipes/vrpo_embedded.yaml"]
    runs = {"vrpo": ["budget=8", "antithetic=true"], "naive_dpo": ["budget=1", "antithetic=false"]}
    for name, extra in runs.items():
        run(launch + common + [f"output_dir={work / name}"] + extra, log)
    accuracy = {}
    for name, path in [("sft", args.model), ("vrpo", str(work / "vrpo" / "final")),
                       ("naive_dpo", str(work / "naive_dpo" / "final"))]:
        out = work / f"accuracy_{name}.json"
        run([py, "bench/embedded_accuracy.py", path, "--out", str(out), "--threads", str(args.threads)], log)
        accuracy[name] = json.loads(out.read_text())
        if args.compare_all:
            run([py, "bench/embedded_accuracy.py", path, "--set", "compare_all", "--out",
                 str(work / f"accuracy_{name}_compare_all.json"), "--threads", str(args.threads)], log)
    table = work / "variance.md"
    if args.variance_pairs > 0:
        run([py, "-m", "alignment.variance", "--policy", str(work / "vrpo" / "final"), "--reference", args.model,
             "--pairs", str(prefs), "--max-pairs", str(args.variance_pairs), "--repeats", "8",
             "--threads", str(args.threads), "--output", str(table)], log)

    families = sorted(accuracy["sft"]["per_family"])
    lines = [f"## VRPO on the embedded model ({time.strftime('%Y-%m-%d')}, CPU, {args.threads} threads)", "",
             "| model | " + " | ".join(families) + " | overall |", "|---" * (len(families) + 2) + "|"]
    for name, res in accuracy.items():
        cells = [f"{100 * res['per_family'][f]['accuracy']:.1f} ({res['per_family'][f]['correct']}/"
                 f"{res['per_family'][f]['total']})" for f in families]
        lines.append(f"| {name} | " + " | ".join(cells) + f" | {100 * res['overall']:.1f} |")
    lines += ["", "Paired against the SFT model on the same held-out prompts (wrong -> right / right -> wrong, exact "
              "McNemar p), families where anything changed:", ""]
    for name in ("vrpo", "naive_dpo"):
        changed = {f: v for f, v in sorted(flips(accuracy["sft"], accuracy[name]).items()) if v[0] or v[1]}
        lines.append(f"- {name}: " + ("; ".join(f"{f} +{g}/-{l} (p={p:.2g})" for f, (g, l, p) in changed.items())
                                      or "no prompt changed"))
    lines += compare_all_lines(work)
    if args.variance_pairs > 0:
        lines += ["", "Variance (policy = the VRPO model, reference = the SFT model):", "", table.read_text()]
    lines += ["", "Commands and wall times:", ""]
    lines += [f"- `{e['command']}` ({e['wall_seconds']} s)" for e in log]
    (work / "report.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))
    (work / "log.json").write_text(json.dumps(log, indent=1) + "\n")
    if args.install:
        install(args, work, accuracy, prefs, log, families)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
