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


# ------------------------------------------------------------------------------------------ llada_shapes (images)
SHAPES_DIR = DATA_DIR / "shapes"


def shapes(**_):
    """The held-out questions of the synthetic shapes corpus (`python -m vision.shapes eval/tasks/data/shapes
    --lm-eval-task`), with the image file name of each."""
    import datasets

    path = SHAPES_DIR / "shapes.jsonl"
    if not path.is_file():
        raise FileNotFoundError(f"local task data {path} is missing; run "
                                f"`python -m vision.shapes eval/tasks/data/shapes --lm-eval-task`")
    with open(path, encoding="utf-8") as fh:
        rows = [json.loads(line) for line in fh if line.strip()]
    return datasets.DatasetDict({"test": datasets.Dataset.from_list(rows)})


def shapes_image(doc) -> list:
    """`doc_to_image`: the document's image as a PIL image (lm-eval passes it to the model as `visual`)."""
    from PIL import Image

    with Image.open(SHAPES_DIR / doc["image"]) as img:
        return [img.convert("RGB")]


def shapes_process_results(doc, results) -> dict:
    """acc: the generated answer states the expected label of the question's type and no other
    (`vision.shapes.check_answer`: "Red." == "red", "Two." == "2")."""
    from vision.shapes import check_answer

    return {"acc": float(check_answer(doc["type"], doc["answer"], results[0]))}
