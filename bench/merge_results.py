"""Rebuild bench/RESULTS.md from the per-topic files in bench/results/ (each benchmark writes its own file).

    python bench/merge_results.py
"""

from __future__ import annotations

from pathlib import Path

HERE = Path(__file__).resolve().parent
ORDER = ["loading", "sampling", "likelihood", "training", "vision", "vision_embedded", "vrpo"]
HEADER = """# Recorded benchmark results

Every figure below came from a run in this repository, with the machine, the command and the date beside it.
The development machine is a CPU-only VM (2 cores, 24 GiB) shared with other jobs while these ran, so wall-clock
figures are noisy; CPU-second figures are given where they matter. No GPU was lent to this task, so the 8B-shaped
GPU measurements the issues ask for (bf16 sampling speed, MFU, ZeRO steps on GPUs, LLaDA-V at 8B) are still to do;
each section gives the command for them.

Sections (one file each under `bench/results/`, merged by `python bench/merge_results.py`):
{names}.
"""


def section(path: Path) -> str:
    """A result file with its title demoted to a second-level heading."""
    text = path.read_text(encoding="utf-8").strip()
    first, _, rest = text.partition("\n")
    if first.startswith("# "):
        first = "#" + first
    return f"{first}\n{rest}".rstrip()


def main() -> int:
    files = [HERE / "results" / f"{name}.md" for name in ORDER]
    files = [f for f in files if f.is_file()]
    files += sorted(f for f in (HERE / "results").glob("*.md") if f not in files)
    parts = [HEADER.format(names=", ".join(f.stem for f in files)).rstrip()] + [section(f) for f in files]
    (HERE / "RESULTS.md").write_text("\n\n---\n\n".join(parts) + "\n", encoding="utf-8")
    print(f"wrote {HERE / 'RESULTS.md'} from {len(files)} result files")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
