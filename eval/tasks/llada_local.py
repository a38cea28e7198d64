"""Dataset loaders of the local tasks (referenced from the YAML files as `custom_dataset: !function ...`).

Each returns a `datasets.DatasetDict` with a `test` split read from the shipped jsonl file next to this module,
so the tasks run offline and from any working directory. lm-eval passes the task metadata (and the model args)
as keyword arguments; they are not needed here.
"""

from __future__ import annotations

import json
from pathlib import Path

DATA_DIR = Path(__file__).resolve().parent / "data"


def _load(name: str):
    import datasets

    path = DATA_DIR / f"{name}.jsonl"
    if not path.is_file():
        raise FileNotFoundError(f"local task data {path} is missing; run `python -m eval.tasks.make_data`")
    with open(path, encoding="utf-8") as fh:
        rows = [json.loads(line) for line in fh if line.strip()]
    return datasets.DatasetDict({"test": datasets.Dataset.from_list(rows)})


def arith_mc(**_):
    return _load("arith_mc")


def knowledge_mc(**_):
    return _load("knowledge_mc")


def arith(**_):
    return _load("arith")


def reverse(**_):
    return _load("reverse")


def text(**_):
    return _load("text")
