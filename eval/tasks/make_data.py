"""Write the data files of the local lm-eval tasks: `python -m eval.tasks.make_data [OUT_DIR]`.

Seeded and deterministic (a test checks the shipped files are byte-identical to a fresh run). The questions
come from the held-out split of the embedded models' synthetic corpus (`llada.corpus`), so they are never in
the training data of the embedded models; the knowledge questions cover every fact (all are stated in the
pretraining text; `heldout` marks the facts never asked as instructions in training).

    arith_mc.jsonl      {"prompt", "choices", "label", "family"}   4-way multiple choice, addition / subtraction /
                                                                    word problems, distractors near the answer
    knowledge_mc.jsonl  {"prompt", "choices", "label", "heldout"}  4-way multiple choice, distractors from the
                                                                    same kind of fact
    arith.jsonl         {"prompt", "answer", "family"}             generation, exact match
    reverse.jsonl       {"prompt", "answer"}                       generation, exact match
    text.jsonl          {"text"}                                   perplexity (loglikelihood_rolling): held-out
                                                                    sorting / reversal instances written as the
                                                                    pretraining text writes them
"""

from __future__ import annotations

import json
import random
import sys
from pathlib import Path
from typing import Optional, Sequence

from llada.corpus import CorpusConfig, heldout_split, knowledge_facts, split_facts

SEED = 20240521
PER_TASK = 48
DATA_DIR = Path(__file__).resolve().parent / "data"


def numeric_distractors(answer: int, rng: random.Random, k: int = 3) -> list[int]:
    """k distinct non-negative numbers near `answer` (off by one, two, ten, or a digit), never the answer."""
    candidates = {answer + d for d in (-10, -2, -1, 1, 2, 10, 11, -11, 100)}
    if answer >= 10:
        s = str(answer)
        candidates.add(int(s[::-1]))
    candidates = sorted(c for c in candidates if c >= 0 and c != answer)
    return rng.sample(candidates, k)


def _multiple_choice(prompt: str, answer: str, distractors: Sequence[str], rng: random.Random) -> dict:
    choices = [answer] + list(distractors)
    rng.shuffle(choices)
    return {"prompt": prompt, "choices": choices, "label": choices.index(answer)}


_FACT_KINDS = ("capital", "opposite", "sound", "colour", "legs")


def _fact_kind(question: str) -> str:
    """Which kind of fact a question asks (distractors come from answers of the same kind)."""
    for kind in _FACT_KINDS:
        if kind in question:
            return kind
    raise ValueError(f"unknown kind of knowledge question: {question!r}")


def build(config: Optional[CorpusConfig] = None) -> dict[str, list[dict]]:
    config = config or CorpusConfig()
    rng = random.Random(SEED)
    held = heldout_split(config)
    by_family: dict[str, list[dict]] = {}
    for row in held:
        by_family.setdefault(row["family"], []).append(row)

    arith_pool = by_family["addition"][: PER_TASK // 3] + by_family["subtraction"][: PER_TASK // 3] \
        + by_family["word_problem"][: PER_TASK - 2 * (PER_TASK // 3)]
    arith_mc = []
    for row in arith_pool:
        answer = int(row["answer"])
        item = _multiple_choice(row["prompt"], row["answer"], [str(d) for d in numeric_distractors(answer, rng)], rng)
        item["family"] = row["family"]
        arith_mc.append(item)

    facts = knowledge_facts()
    _, held_facts = split_facts(config.heldout_fraction, config.seed)
    held_questions = {f.question for f in held_facts}
    kinds: dict[str, set[str]] = {}
    for f in facts:
        kinds.setdefault(_fact_kind(f.question), set()).add(f.answer)
    knowledge_mc = []
    for f in facts:
        others = sorted(kinds[_fact_kind(f.question)] - {f.answer})
        item = _multiple_choice(f.question, f.answer, rng.sample(others, 3), rng)
        item["heldout"] = f.question in held_questions
        knowledge_mc.append(item)

    arith = [{"prompt": r["prompt"], "answer": r["answer"], "family": r["family"]}
             for r in by_family["addition"][-PER_TASK // 2:] + by_family["subtraction"][-PER_TASK // 2:]]
    reverse = [{"prompt": r["prompt"], "answer": r["answer"]} for r in by_family["reverse"][:PER_TASK]]
    text = [{"text": f"The numbers {r['prompt'].split(': ', 1)[1]} in increasing order are {r['answer']}."}
            for r in by_family["sort"][: PER_TASK // 4]]
    text += [{"text": f"The letters {r['prompt'].split(': ', 1)[1]} backwards are {r['answer']}."}
             for r in by_family["reverse"][PER_TASK: PER_TASK + PER_TASK // 4]]
    return {"arith_mc": arith_mc, "knowledge_mc": knowledge_mc, "arith": arith, "reverse": reverse, "text": text}


def write(out_dir: Path = DATA_DIR) -> dict[str, Path]:
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    paths = {}
    for name, rows in build().items():
        path = out_dir / f"{name}.jsonl"
        with open(path, "w", encoding="utf-8") as fh:
            for row in rows:
                fh.write(json.dumps(row, ensure_ascii=False, sort_keys=True) + "\n")
        paths[name] = path
    return paths


def main(argv: Optional[Sequence[str]] = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    for name, path in write(Path(argv[0]) if argv else DATA_DIR).items():
        print(f"{name:14s} {sum(1 for _ in open(path, encoding='utf-8')):4d} rows  {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
