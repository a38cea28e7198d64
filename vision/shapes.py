"""A seeded synthetic image-question corpus: coloured shapes on a canvas, in LLaVA-style JSON.

    python -m vision.shapes OUT_DIR [--train-images N] [--heldout-images N] [--seed S] [--image-size PX]
    python -m vision.shapes eval/tasks/data/shapes --lm-eval-task     (the lm-eval task's held-out data)
    python -m vision.shapes demo/examples --examples                  (a few example images)

Each image is a square canvas (64 x 64 pixels by default) cut into a 2 x 2 grid of cells; one to three
shapes (circle, square, triangle, diamond), each of its own shape and its own colour (red, green, blue,
yellow, black, white), sit in distinct cells with a random size and a small random offset, on a grey
background of random shade and tint. Half the images hold one shape. Questions, with short answers as LLaVA's
VQA data gives them:

    colour     "What colour is the shape?"     -> "red"          (images with one shape)
    shape      "What shape is it?"             -> "circle"       (images with one shape)
    position   "Where is the shape?"           -> "top left"     (images with one shape)
    count      "How many shapes are there?"    -> "2"            (every image)

Why this design (measured while building the embedded model, see bench/results/vision_embedded.md): the
embedded model is tiny (a 1M-parameter language model and a tower trained from scratch on a CPU in minutes).
Questions that bind two attributes ("What colour is the circle?" among three shapes) stayed at chance even when
the scene was given as text; questions about one shape are learned. Every answer is one token of the vision
model's vocabulary: the colours and digits already are; the shape and position names (`DOMAIN_TOKENS`) are
added to its tokenizer by the stage 1 recipe (`added_tokens`). Spelled out over several tokens, the answers
were learned far more slowly (the LLaDA SFT loss trains a token from the image only when it and the tokens
that give it away are masked together) and came out garbled ("circlgle") from the sampler.

Written to OUT_DIR:

    images/train_00000.png ...      the training images
    images/heldout_00000.png ...    the held-out images (new images: a different seed, and no held-out scene
                                    equals a training scene; `heldout_is_disjoint` checks it)
    stage1.json                     caption-style rows (LLaVA-Pretrain shape), every training image:
                                    "<image>\nDescribe the image." -> "A red circle at the top left and a blue square
                                    at the bottom right."
    stage2.json                     instruction rows: every question type each training image allows, shuffled
    stage2_warmup.json              the colour rows of stage2.json: the build's first stage 2 run trains on them
                                    alone, so the language model learns to read the image rows on the easiest
                                    question before the others (measured: colour alone reaches 80% held-out in
                                    300 steps; mixed from the start, every type stays near chance that long)
    heldout.json                    `heldout_per_type` held-out questions of each type, with "type" and "answer"
    corpus.json                     the generating configuration

Rows are LLaVA JSON (`{"id", "image", "conversations": [{"from": "human", "value": "<image>\\n..."},
{"from": "gpt", "value": ...}]}`), the format `vision.train` reads (image paths relative to OUT_DIR).
`check_answer(question_type, expected, predicted)` scores a generated answer.
Everything is a function of the seed: two runs write byte-identical files.
"""

from __future__ import annotations

import argparse
import dataclasses
import hashlib
import json
import random
import re
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional, Sequence

#: colour name -> RGB
COLOURS: dict[str, tuple[int, int, int]] = {
    "red": (220, 30, 30),
    "green": (30, 160, 50),
    "blue": (30, 70, 225),
    "yellow": (245, 215, 20),
    "black": (15, 15, 15),
    "white": (250, 250, 250),
}
SHAPES = ("circle", "square", "triangle", "diamond")
#: the cells of the 2 x 2 grid, in reading order: (name, column, row)
POSITIONS = (("top left", 0, 0), ("top right", 1, 0), ("bottom left", 0, 1), ("bottom right", 1, 1))
POSITION_NAMES = tuple(p[0] for p in POSITIONS)
QUESTION_TYPES = ("colour", "shape", "count", "position")
NUMBER_WORDS = ("zero", "one", "two", "three", "four", "five")

#: colour, shape and position are asked about images with one shape; count about any image
QUESTION_TEMPLATES = {
    "colour": ("What colour is the shape?", "What is the colour of the shape?"),
    "shape": ("What shape is it?", "Which shape is in the image?"),
    "count": ("How many shapes are there?", "How many shapes are in the image?"),
    "position": ("Where is the shape?", "In which part of the image is the shape?"),
}
SINGLE_OBJECT_TYPES = ("colour", "shape", "position")
#: the question types of stage2_warmup.json
WARMUP_TYPES = ("colour",)
#: answers that are not single tokens of the embedded text model's vocabulary: added to the vision model's
#: tokenizer (`added_tokens` of configs/recipes/embedded_vision_stage1.yaml, checked against this tuple)
DOMAIN_TOKENS = SHAPES + POSITION_NAMES
CAPTION_PROMPTS = ("Describe the image.", "What is in the image?", "Describe the picture briefly.")


@dataclass
class ShapesConfig:
    """What `write_corpus` generates (every field is recorded in corpus.json)."""

    image_size: int = 64
    train_images: int = 3000
    heldout_images: int = 200
    min_objects: int = 1
    max_objects: int = 3
    single_fraction: float = 0.5  # share of images with one shape (the others: min(2, max)..max_objects, uniform)
    heldout_per_type: int = 50  # held-out questions per type
    seed: int = 20250522

    def __post_init__(self) -> None:
        problems = []
        if self.image_size < 16:
            problems.append(f"image_size={self.image_size} (at least 16 pixels)")
        if not 1 <= self.min_objects <= self.max_objects <= len(POSITIONS):
            problems.append(f"min_objects={self.min_objects}, max_objects={self.max_objects} "
                            f"(expected 1 <= min <= max <= {len(POSITIONS)})")
        if self.max_objects > min(len(SHAPES), len(COLOURS)):
            problems.append(f"max_objects={self.max_objects}: every object needs its own shape and colour")
        if not 0.0 <= self.single_fraction <= 1.0:
            problems.append(f"single_fraction={self.single_fraction} (expected 0..1)")
        for name in ("train_images", "heldout_images", "heldout_per_type"):
            if getattr(self, name) < 0:
                problems.append(f"{name}={getattr(self, name)} must be >= 0")
        if problems:
            raise ValueError("ShapesConfig: " + "; ".join(problems))


@dataclass(frozen=True)
class ShapeObject:
    """One shape: what, which colour, which cell, and where exactly (centre and size in pixels)."""

    shape: str
    colour: str
    position: str  # one of POSITION_NAMES
    cx: int
    cy: int
    size: int


@dataclass(frozen=True)
class Scene:
    """An image's content: the background grey level and the objects in reading order of their cells."""

    background: tuple[int, int, int]
    objects: tuple[ShapeObject, ...] = field(default_factory=tuple)

    def key(self) -> str:
        """A digest of everything that determines the pixels (equal scenes render identical images)."""
        return hashlib.sha256(repr(dataclasses.astuple(self)).encode()).hexdigest()[:16]


# ------------------------------------------------------------------------------------------ scenes
def sample_scene(rng: random.Random, config: ShapesConfig) -> Scene:
    """A random scene: one object with probability `single_fraction` (when min_objects is 1), else n uniform in
    max(2, min)..max objects; distinct shapes, colours and cells."""
    if config.min_objects == 1 and (config.max_objects == 1 or rng.random() < config.single_fraction):
        n = 1
    else:
        n = rng.randint(max(2, config.min_objects), config.max_objects)
    shapes = rng.sample(SHAPES, n)
    colours = rng.sample(sorted(COLOURS), n)
    cells = sorted(rng.sample(range(len(POSITIONS)), n))
    cell = config.image_size // 2
    objects = []
    for shape, colour, c in zip(shapes, colours, cells):
        name, col, row = POSITIONS[c]
        size = rng.randint(int(cell * 0.5), int(cell * 0.8))
        slack = max(0, (cell - size) // 2 - 1)
        cx = col * cell + cell // 2 + rng.randint(-slack, slack)
        cy = row * cell + cell // 2 + rng.randint(-slack, slack)
        objects.append(ShapeObject(shape, colour, name, cx, cy, size))
    grey = rng.randint(140, 180)
    tint = tuple(grey + rng.randint(-8, 8) for _ in range(3))
    return Scene(background=tint, objects=tuple(objects))


def render_scene(scene: Scene, image_size: int) -> "PIL.Image.Image":  # noqa: F821
    """Draw the scene (RGB, image_size x image_size): circle = ellipse in the size box, square = the box,
    triangle = apex up, diamond = the box's edge midpoints."""
    from PIL import Image, ImageDraw

    img = Image.new("RGB", (image_size, image_size), scene.background)
    draw = ImageDraw.Draw(img)
    for obj in scene.objects:
        h = obj.size / 2
        x0, y0, x1, y1 = obj.cx - h, obj.cy - h, obj.cx + h, obj.cy + h
        fill = COLOURS[obj.colour]
        if obj.shape == "circle":
            draw.ellipse((x0, y0, x1, y1), fill=fill)
        elif obj.shape == "square":
            draw.rectangle((x0 + 1, y0 + 1, x1 - 1, y1 - 1), fill=fill)
        elif obj.shape == "triangle":
            draw.polygon([(obj.cx, y0), (x1, y1), (x0, y1)], fill=fill)
        elif obj.shape == "diamond":
            draw.polygon([(obj.cx, y0), (x1, obj.cy), (obj.cx, y1), (x0, obj.cy)], fill=fill)
        else:
            raise ValueError(f"unknown shape {obj.shape!r}; expected one of {SHAPES}")
    return img


# ------------------------------------------------------------------------------------------ text
def caption(scene: Scene) -> str:
    """"A red circle at the top left, a blue square at the top right and a green triangle at the bottom left." """
    parts = [f"{'an' if o.colour[0] in 'aeiou' else 'a'} {o.colour} {o.shape} at the {o.position}" for o in scene.objects]
    text = parts[0] if len(parts) == 1 else ", ".join(parts[:-1]) + " and " + parts[-1]
    return text[0].upper() + text[1:] + "."


def question_types_for(scene: Scene) -> tuple[str, ...]:
    """What can be asked about a scene: every type for one shape, only the count for several."""
    return QUESTION_TYPES if len(scene.objects) == 1 else ("count",)


def make_question(scene: Scene, question_type: str, rng: random.Random) -> tuple[str, str]:
    """(question, answer) of the given type (colour, shape and position need a one-shape scene)."""
    if question_type in SINGLE_OBJECT_TYPES and len(scene.objects) != 1:
        raise ValueError(f"a {question_type} question needs an image with one shape, this one has {len(scene.objects)}")
    if question_type not in QUESTION_TEMPLATES:
        raise ValueError(f"unknown question type {question_type!r}; expected one of {QUESTION_TYPES}")
    question = rng.choice(QUESTION_TEMPLATES[question_type])
    # colour, shape and position are attributes of the one shape (ShapeObject fields of those names)
    answer = str(len(scene.objects)) if question_type == "count" else getattr(scene.objects[0], question_type)
    return question, answer


def _normalise(text: str) -> str:
    return " ".join(re.sub(r"[^a-z0-9 ]+", " ", text.lower()).split())


def answer_labels(question_type: str, text: str) -> set[str]:
    """The answer labels of `question_type` that `text` states (whole words; digits count as numbers)."""
    words = f" {_normalise(text)} "
    if question_type == "colour":
        return {c for c in COLOURS if f" {c} " in words}
    if question_type == "shape":
        return {s for s in SHAPES if f" {s} " in words or f" {s}s " in words}
    if question_type == "count":
        return {str(i) for i, w in enumerate(NUMBER_WORDS) if f" {w} " in words or f" {i} " in words}
    if question_type == "position":
        return {p for p in POSITION_NAMES if f" {p} " in words}
    raise ValueError(f"unknown question type {question_type!r}; expected one of {QUESTION_TYPES}")


def check_answer(question_type: str, expected: str, predicted: str) -> bool:
    """True when `predicted` states exactly the expected label of its type and no other one.

    "red" / "Red." / "It is red." match an expected "red"; "red or blue" does not; for counts the digit and
    the word are the same ("2" == "Two."). `expected` must state exactly one label.
    """
    want = answer_labels(question_type, expected)
    if len(want) != 1:
        raise ValueError(f"expected answer {expected!r} states {len(want)} {question_type} labels, not one")
    return answer_labels(question_type, predicted) == want


# ------------------------------------------------------------------------------------------ corpus
def _row(row_id: str, image: str, prompt: str, reply: str, **extra) -> dict:
    return {"id": row_id, "image": image,
            "conversations": [{"from": "human", "value": "<image>\n" + prompt}, {"from": "gpt", "value": reply}],
            **extra}


def _scenes(rng: random.Random, config: ShapesConfig, n: int, exclude: set[str]) -> list[Scene]:
    out, seen = [], set(exclude)
    while len(out) < n:
        scene = sample_scene(rng, config)
        if scene.key() in seen:
            continue
        seen.add(scene.key())
        out.append(scene)
    return out


def build_corpus(config: ShapesConfig) -> dict:
    """Scenes and rows (no files): {"train_scenes", "heldout_scenes", "stage1", "stage2", "stage2_warmup",
    "heldout"}. Stage 2 has one row per possible question type of each training image (`question_types_for`);
    its warm-up, the rows of WARMUP_TYPES."""
    train_rng = random.Random(f"{config.seed}:train")
    held_rng = random.Random(f"{config.seed}:heldout")
    train_scenes = _scenes(train_rng, config, config.train_images, set())
    heldout_scenes = _scenes(held_rng, config, config.heldout_images, {s.key() for s in train_scenes})

    stage1, stage2 = [], []
    q_rng = random.Random(f"{config.seed}:questions")
    for i, scene in enumerate(train_scenes):
        image = f"images/train_{i:05d}.png"
        stage1.append(_row(f"caption_{i:05d}", image, q_rng.choice(CAPTION_PROMPTS), caption(scene)))
        for qtype in question_types_for(scene):
            question, answer = make_question(scene, qtype, q_rng)
            stage2.append(_row(f"train_{i:05d}_{qtype}", image, question, answer, type=qtype))
    q_rng.shuffle(stage2)

    heldout = []
    h_rng = random.Random(f"{config.seed}:heldout-questions")
    for qtype in QUESTION_TYPES:
        usable = [i for i, s in enumerate(heldout_scenes) if qtype in question_types_for(s)]
        for k in range(config.heldout_per_type if usable else 0):
            i = usable[k % len(usable)]  # distinct images while there are enough
            question, answer = make_question(heldout_scenes[i], qtype, h_rng)
            heldout.append(_row(f"heldout_{qtype}_{k:03d}", f"images/heldout_{i:05d}.png", question, answer,
                                type=qtype, question=question, answer=answer))
    return {"train_scenes": train_scenes, "heldout_scenes": heldout_scenes, "stage1": stage1, "stage2": stage2,
            "stage2_warmup": [r for r in stage2 if r["type"] in WARMUP_TYPES], "heldout": heldout}


def _write_json(path: Path, rows: list[dict]) -> None:
    path.write_text(json.dumps(rows, indent=1, ensure_ascii=False) + "\n", encoding="utf-8")


def write_corpus(out_dir: str | Path, config: Optional[ShapesConfig] = None) -> dict[str, Path]:
    """Render every image and write the JSON files (see the module docstring); returns their paths."""
    config = config or ShapesConfig()
    out = Path(out_dir)
    (out / "images").mkdir(parents=True, exist_ok=True)
    corpus = build_corpus(config)
    for prefix, scenes in (("train", corpus["train_scenes"]), ("heldout", corpus["heldout_scenes"])):
        for i, scene in enumerate(scenes):
            render_scene(scene, config.image_size).save(out / "images" / f"{prefix}_{i:05d}.png", optimize=False)
    paths = {name: out / f"{name}.json" for name in ("stage1", "stage2", "stage2_warmup", "heldout")}
    for name, path in paths.items():
        _write_json(path, corpus[name])
    paths["corpus"] = out / "corpus.json"
    paths["corpus"].write_text(json.dumps(dataclasses.asdict(config), indent=1) + "\n")
    return paths


def heldout_is_disjoint(config: ShapesConfig) -> bool:
    """No held-out scene equals a training scene (so no held-out image is a training image)."""
    corpus = build_corpus(config)
    return not ({s.key() for s in corpus["train_scenes"]} & {s.key() for s in corpus["heldout_scenes"]})


def write_lm_eval_task(out_dir: str | Path, config: Optional[ShapesConfig] = None, per_type: int = 15) -> Path:
    """The data of the lm-eval task `llada_shapes`: the first `per_type` held-out questions of each type of the
    corpus `config` describes (the default corpus: the embedded model's held-out split) and their images.
    Writes OUT_DIR/shapes.jsonl ({"id", "image", "question", "answer", "type"}, image relative to OUT_DIR) and
    OUT_DIR/heldout_NNNNN.png; returns the jsonl path."""
    config = config or ShapesConfig()
    corpus = build_corpus(config)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    for old in out.glob("heldout_*.png"):
        old.unlink()
    taken: dict[str, int] = {}
    rows = []
    for row in corpus["heldout"]:
        if taken.get(row["type"], 0) >= per_type:
            continue
        taken[row["type"]] = taken.get(row["type"], 0) + 1
        name = Path(row["image"]).name
        index = int(name.split("_")[1].split(".")[0])
        if not (out / name).is_file():
            render_scene(corpus["heldout_scenes"][index], config.image_size).save(out / name, optimize=False)
        rows.append({"id": row["id"], "image": name, "question": row["question"], "answer": row["answer"],
                     "type": row["type"]})
    path = out / "shapes.jsonl"
    path.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows), encoding="utf-8")
    return path


EXAMPLE_OBJECTS = (1, 2, 1, 3, 1, 2)


def write_examples(out_dir: str | Path, *, seed: int = 7, image_size: int = 64,
                   objects: Sequence[int] = EXAMPLE_OBJECTS) -> list[Path]:
    """Example images (the demo's bundled ones), from their own seed, with `objects[i]` shapes each:
    `example_N_<k>-shape(s).png` (the name tells how many shapes, not which: the demo's visitor asks that)."""
    rng = random.Random(f"{seed}:examples")
    config = ShapesConfig(image_size=image_size, min_objects=1, max_objects=3)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    paths = []
    for i, n in enumerate(objects):
        config_i = dataclasses.replace(config, min_objects=n, max_objects=n)
        scene = sample_scene(rng, config_i)
        path = out / f"example_{i + 1}_{n}-shape{'s' if n > 1 else ''}.png"
        render_scene(scene, image_size).save(path, optimize=False)
        paths.append(path)
    return paths


def main(argv: Optional[Sequence[str]] = None) -> int:
    defaults = ShapesConfig()
    ap = argparse.ArgumentParser(prog="python -m vision.shapes", description=__doc__.strip().splitlines()[0])
    ap.add_argument("out_dir")
    ap.add_argument("--train-images", type=int, default=defaults.train_images)
    ap.add_argument("--heldout-images", type=int, default=defaults.heldout_images)
    ap.add_argument("--heldout-per-type", type=int, default=defaults.heldout_per_type)
    ap.add_argument("--image-size", type=int, default=defaults.image_size)
    ap.add_argument("--seed", type=int, default=defaults.seed)
    ap.add_argument("--lm-eval-task", action="store_true", help="write only the data of the lm-eval task "
                    "llada_shapes (held-out questions and their images) into OUT_DIR")
    ap.add_argument("--examples", action="store_true", help="write only a few example images into OUT_DIR")
    args = ap.parse_args(argv)
    try:
        config = ShapesConfig(image_size=args.image_size, train_images=args.train_images,
                              heldout_images=args.heldout_images, heldout_per_type=args.heldout_per_type,
                              seed=args.seed)
    except ValueError as err:
        ap.error(str(err))
    if args.lm_eval_task:
        print(f"wrote {write_lm_eval_task(args.out_dir, config)}")
        return 0
    if args.examples:
        print("wrote " + ", ".join(str(p) for p in write_examples(args.out_dir, image_size=args.image_size)))
        return 0
    paths = write_corpus(args.out_dir, config)
    counts = {name: len(json.loads(p.read_text())) for name, p in paths.items() if name != "corpus"}
    print(f"wrote {args.out_dir}: " + ", ".join(f"{n} {k} rows" for k, n in counts.items()))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
