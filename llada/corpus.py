"""A seeded synthetic corpus of verifiable tasks, for the embedded default models.

Everything here is generated from a seed, so the corpus is never shipped: `python -m llada.corpus OUT_DIR`
writes it again, byte for byte. Eight task families, each example with a checkable answer:

    reverse      "Reverse the letters: m k a q"                  -> "q a k m"
    sort         "Sort these numbers from smallest to largest: 42, 7, 19"  -> "7, 19, 42"
    addition     "What is 345 + 78?"                               -> "423"
    subtraction  "What is 345 - 78?"                               -> "267"
    word_problem "Tom has 5 apples. He buys 3 more. How many apples does Tom have now?" -> "8"
    knowledge    "What is the capital of France?"                  -> "Paris"
    parity       "Even or odd: 347"                                -> "odd"       (the easy family)
    compare      "Which is larger: 37 or 52"                       -> "52"        (two-digit numbers, learnt partly)

Splits. An arithmetic / sorting / reversal instance belongs to the held-out split when a hash of its
canonical content says so (`heldout_fraction`), so held-out instances never occur in any training text,
neither in the instruction data nor in the pretraining text. Knowledge facts are split by fact: every fact
occurs in the pretraining text (as a statement or a plain "Q: ... A: ..." line), but held-out facts are never
asked as a chat instruction in training: the instruct model answers them from what the base model learnt.

Files written by `write_corpus` (`python -m llada.corpus OUT_DIR`):
    pretrain.jsonl   {"text": ...}                                   plain documents for pretraining
    sft_train.jsonl  {"messages": [...], "family", "answer"}          chat data (a few multi-turn)
    sft_stage1.jsonl the rows of sft_train.jsonl of the `stage1_families` (curriculum: the instruct model is
                     first tuned on the easy families, which teaches a small model to read the prompt at all)
    sft_stage3.jsonl sft_train.jsonl with the rows of the `stage3_repeats` families repeated (seeded shuffle): a
                     last stage with compare at a third of the mix (at a ninth, in stage 2, the mini model
                     answers almost every compare prompt with one fixed number)
    heldout.jsonl    {"prompt", "answer", "family", "messages"}       evaluation split
"""

from __future__ import annotations

import argparse
import hashlib
import json
import random
import re
import string
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Iterator, Optional, Sequence

FAMILIES = ("reverse", "sort", "addition", "subtraction", "word_problem", "knowledge", "parity", "compare")

# --------------------------------------------------------------------------- knowledge facts
#: (question, answer, statement) triples; the statement appears in the pretraining text.
_CAPITALS = [
    ("France", "Paris"), ("Germany", "Berlin"), ("Italy", "Rome"), ("Spain", "Madrid"), ("Japan", "Tokyo"),
    ("China", "Beijing"), ("Egypt", "Cairo"), ("Russia", "Moscow"), ("Canada", "Ottawa"), ("Peru", "Lima"),
    ("Kenya", "Nairobi"), ("Norway", "Oslo"), ("Greece", "Athens"), ("Poland", "Warsaw"), ("Cuba", "Havana"),
    ("Chile", "Santiago"), ("Ireland", "Dublin"), ("Austria", "Vienna"), ("Portugal", "Lisbon"), ("India", "Delhi"),
    ("Sweden", "Stockholm"), ("Turkey", "Ankara"), ("Mexico", "Mexico City"), ("Brazil", "Brasilia"),
]
_OPPOSITES = [
    ("hot", "cold"), ("big", "small"), ("fast", "slow"), ("up", "down"), ("day", "night"), ("old", "young"),
    ("open", "closed"), ("light", "dark"), ("happy", "sad"), ("full", "empty"), ("early", "late"), ("wet", "dry"),
    ("hard", "soft"), ("loud", "quiet"), ("rich", "poor"), ("thick", "thin"),
]
_SOUNDS = [
    ("cow", "moo"), ("dog", "woof"), ("cat", "meow"), ("duck", "quack"), ("sheep", "baa"), ("owl", "hoot"),
    ("lion", "roar"), ("snake", "hiss"), ("horse", "neigh"), ("bee", "buzz"), ("pig", "oink"), ("frog", "croak"),
]
_COLOURS = [
    ("grass", "green"), ("the sky", "blue"), ("snow", "white"), ("coal", "black"), ("a banana", "yellow"),
    ("a tomato", "red"), ("an orange", "orange"), ("chocolate", "brown"), ("a lemon", "yellow"), ("milk", "white"),
]
_LEGS = [("a spider", "eight"), ("a dog", "four"), ("a bird", "two"), ("an ant", "six"), ("a snake", "zero"),
         ("a horse", "four"), ("a fish", "zero"), ("a cat", "four")]


@dataclass(frozen=True)
class Fact:
    """One knowledge fact: the instruction question, its answer and a sentence stating it."""

    question: str
    answer: str
    statement: str


def knowledge_facts() -> list[Fact]:
    """Every knowledge fact of the corpus, in a fixed order."""
    facts = [Fact(f"What is the capital of {c}?", a, f"The capital of {c} is {a}.") for c, a in _CAPITALS]
    facts += [Fact(f"What is the opposite of {w}?", a, f"The opposite of {w} is {a}.") for w, a in _OPPOSITES]
    facts += [Fact(f"What sound does a {x} make?", a, f"A {x} says {a}.") for x, a in _SOUNDS]
    facts += [Fact(f"What colour is {x}?", a, f"The colour of {x} is {a}.") for x, a in _COLOURS]
    facts += [Fact(f"How many legs does {x} have?", a, f"{x[0].upper() + x[1:]} has {a} legs.") for x, a in _LEGS]
    return facts


# --------------------------------------------------------------------------- configuration
@dataclass
class CorpusConfig:
    """What `write_corpus` generates. The defaults produce the corpus of the embedded models."""

    seed: int = 1234
    #: instruction examples in the SFT training split (single-turn; plus `multi_turn_fraction` dialogues)
    sft_examples: int = 24000
    #: held-out examples per family (knowledge: at most the number of held-out facts x templates)
    heldout_per_family: int = 100
    #: families with a larger held-out set (compare: the family alignment is measured on, so 400 prompts)
    heldout_per_family_overrides: dict = field(default_factory=lambda: {"compare": 400})
    #: documents of plain pretraining text
    pretrain_documents: int = 10000
    #: fraction of instances (by content hash) and of knowledge facts kept for the held-out split
    heldout_fraction: float = 0.2
    #: fraction of SFT examples that are two-turn dialogues
    multi_turn_fraction: float = 0.05
    #: families of the first SFT stage (sft_stage1.jsonl)
    stage1_families: tuple = ("parity", "knowledge")
    #: the third SFT stage (sft_stage3.jsonl): sft_train.jsonl plus this many extra copies of these families' rows
    stage3_repeats: dict = field(default_factory=lambda: {"compare": 3})
    #: family mix of the SFT split (relative weights)
    family_weights: dict = field(
        default_factory=lambda: {"reverse": 1.0, "sort": 1.0, "addition": 1.0, "subtraction": 1.0,
                                 "word_problem": 1.0, "knowledge": 1.5, "parity": 1.5,
                                 "compare": 1.0}
    )

    def __post_init__(self) -> None:
        if not 0.0 < self.heldout_fraction < 1.0:
            raise ValueError(f"CorpusConfig.heldout_fraction must lie in (0, 1), got {self.heldout_fraction}")
        unknown = set(self.family_weights) - set(FAMILIES)
        if unknown:
            raise ValueError(f"CorpusConfig.family_weights: unknown families {sorted(unknown)}; known: {FAMILIES}")


@dataclass(frozen=True)
class Example:
    """One task instance: the user prompt, the reference answer and its family."""

    family: str
    prompt: str
    answer: str

    def messages(self) -> list[dict]:
        return [{"role": "user", "content": self.prompt}, {"role": "assistant", "content": self.answer}]


def _is_heldout(key: str, fraction: float) -> bool:
    """Deterministic split of an instance by a hash of its canonical content."""
    h = int.from_bytes(hashlib.sha256(key.encode()).digest()[:8], "big")
    return (h % 10_000) < fraction * 10_000


# --------------------------------------------------------------------------- generators
_NAMES = ["Tom", "Anna", "Sam", "Lily", "Ben", "Mia", "Max", "Eva", "Leo", "Zoe", "Jack", "Nora"]
_PRONOUN = {"Tom": "He", "Sam": "He", "Ben": "He", "Max": "He", "Leo": "He", "Jack": "He",
            "Anna": "She", "Lily": "She", "Mia": "She", "Eva": "She", "Zoe": "She", "Nora": "She"}
_ITEMS = ["apple", "book", "coin", "stamp", "marble", "card", "pencil", "shell", "ball", "cookie"]


def _reverse(rng: random.Random) -> tuple[str, Example]:
    letters = [rng.choice(string.ascii_lowercase) for _ in range(rng.randint(3, 6))]
    key = "reverse:" + "".join(letters)
    shown = " ".join(letters)
    template = rng.choice(["Reverse the letters: {s}", "Write these letters backwards: {s}",
                           "Reverse this sequence: {s}"])
    return key, Example("reverse", template.format(s=shown), " ".join(reversed(letters)))


def _sort(rng: random.Random) -> tuple[str, Example]:
    nums = [rng.randint(0, 99) for _ in range(rng.randint(3, 5))]
    key = "sort:" + ",".join(map(str, nums))
    template = rng.choice(["Sort these numbers from smallest to largest: {s}", "Sort in ascending order: {s}",
                           "Put these numbers in increasing order: {s}"])
    return key, Example("sort", template.format(s=", ".join(map(str, nums))), ", ".join(map(str, sorted(nums))))


def _arith(rng: random.Random, op: str) -> tuple[str, Example]:
    a = rng.randint(10, 10 ** rng.randint(2, 3) - 1)
    b = rng.randint(1, 10 ** rng.randint(1, 2) - 1)
    if op == "-" and b > a:
        a, b = b, a
    result = a + b if op == "+" else a - b
    key = f"{op}:{a}:{b}"
    template = rng.choice(["What is {a} {op} {b}?", "Compute {a} {op} {b}.", "Calculate {a} {op} {b}."])
    family = "addition" if op == "+" else "subtraction"
    return key, Example(family, template.format(a=a, op=op, b=b), str(result))


def _parity(rng: random.Random) -> tuple[str, Example]:
    n = rng.randint(0, 999)
    # the number comes last in every phrasing: its last digit then sits at a fixed distance before the answer
    # (the template's tail is constant), which is what makes this the family a tiny model masters first
    template = rng.choice(["Even or odd: {n}", "Is this number even or odd? {n}", "Say whether it is even or odd: {n}"])
    return f"parity:{n}", Example("parity", template.format(n=n), "even" if n % 2 == 0 else "odd")


COMPARE_TEMPLATES = ("Which is larger: {a} or {b}", "Which number is bigger? {a} or {b}",
                     "Say the larger number: {a} or {b}")


def _compare(rng: random.Random) -> tuple[str, Example]:
    a, b = rng.sample(range(10, 100), 2)
    # both numbers have two digits and come last: every digit sits at a fixed distance before the answer. The
    # answer is a copy of one of them, which the 1M-parameter model learns only partly (the family VRPO improves)
    template = rng.choice(COMPARE_TEMPLATES)
    # the split key is the unordered pair: a held-out pair is never seen in training, in either order
    return f"compare:{min(a, b)}:{max(a, b)}", Example("compare", template.format(a=a, b=b), str(max(a, b)))


def _word_problem(rng: random.Random) -> tuple[str, Example]:
    name, item = rng.choice(_NAMES), rng.choice(_ITEMS)
    he = _PRONOUN[name]
    kind = rng.choice(["more", "less", "groups"])
    if kind == "more":
        a, b = rng.randint(1, 20), rng.randint(1, 20)
        verb = rng.choice(["buys", "finds", "gets"])
        text = f"{name} has {a} {item}s. {he} {verb} {b} more. How many {item}s does {name} have now?"
        result = a + b
    elif kind == "less":
        a = rng.randint(2, 20)
        b = rng.randint(1, a)
        verb = rng.choice(["gives away", "loses", "eats" if item == "cookie" else "sells"])
        text = f"{name} has {a} {item}s. {he} {verb} {b}. How many {item}s does {name} have left?"
        result = a - b
    else:
        a, b = rng.randint(2, 9), rng.randint(2, 9)
        text = f"{name} has {a} bags with {b} {item}s in each bag. How many {item}s does {name} have in total?"
        result = a * b
    key = f"word:{kind}:{a}:{b}:{item}"
    return key, Example("word_problem", text, str(result))


def _knowledge(rng: random.Random, facts: Sequence[Fact]) -> tuple[str, Example]:
    fact = rng.choice(facts)
    return "fact:" + fact.question, Example("knowledge", fact.question, fact.answer)


def split_facts(fraction: float, seed: int = 0) -> tuple[list[Fact], list[Fact]]:
    """(train facts, held-out facts): a deterministic split of `knowledge_facts()` by question hash."""
    train, held = [], []
    for fact in knowledge_facts():
        (held if _is_heldout("fact:" + fact.question + f":{seed}", fraction) else train).append(fact)
    return train, held


def generate_examples(
    family: str, rng: random.Random, *, split: str, config: CorpusConfig, facts: Optional[Sequence[Fact]] = None
) -> Iterator[Example]:
    """Endless stream of `family` examples of `split` ("train" or "heldout")."""
    if split not in ("train", "heldout"):
        raise ValueError(f"split must be 'train' or 'heldout', got {split!r}")
    if family not in FAMILIES:
        raise ValueError(f"unknown task family {family!r}; known: {FAMILIES}")
    want_heldout = split == "heldout"
    while True:
        if family == "reverse":
            key, ex = _reverse(rng)
        elif family == "sort":
            key, ex = _sort(rng)
        elif family == "addition":
            key, ex = _arith(rng, "+")
        elif family == "subtraction":
            key, ex = _arith(rng, "-")
        elif family == "word_problem":
            key, ex = _word_problem(rng)
        elif family == "parity":
            key, ex = _parity(rng)
        elif family == "compare":
            key, ex = _compare(rng)
        else:
            if not facts:
                raise ValueError("knowledge examples need a non-empty fact list")
            key, ex = _knowledge(rng, facts)
            yield ex  # facts are split by fact, not by instance hash
            continue
        if _is_heldout(key, config.heldout_fraction) == want_heldout:
            yield ex


def sft_train_split(config: CorpusConfig) -> list[dict]:
    """The SFT training rows: {"messages", "family", "answer"} (a few two-turn dialogues)."""
    rng = random.Random(config.seed)
    train_facts, _ = split_facts(config.heldout_fraction, config.seed)
    streams = {f: generate_examples(f, random.Random(rng.random()), split="train", config=config, facts=train_facts)
               for f in FAMILIES}
    families = [f for f in FAMILIES if config.family_weights.get(f, 0.0) > 0]
    weights = [config.family_weights[f] for f in families]
    rows = []
    for _ in range(config.sft_examples):
        ex = next(streams[rng.choices(families, weights)[0]])
        if rng.random() < config.multi_turn_fraction:
            second = next(streams[rng.choices(families, weights)[0]])
            rows.append({"messages": ex.messages() + second.messages(), "family": second.family,
                         "answer": second.answer})
        else:
            rows.append({"messages": ex.messages(), "family": ex.family, "answer": ex.answer})
    return rows


def heldout_split(config: CorpusConfig) -> list[dict]:
    """The evaluation rows: {"prompt", "answer", "family", "messages"}, `heldout_per_family` per family
    (`heldout_per_family_overrides` for the families named there).

    Knowledge: every held-out fact once (there are fewer held-out facts than `heldout_per_family`).
    """
    rng = random.Random(config.seed + 1)
    _, held_facts = split_facts(config.heldout_fraction, config.seed)
    rows: list[dict] = []
    for family in FAMILIES:
        if family == "knowledge":
            examples = [Example("knowledge", f.question, f.answer) for f in held_facts]
        else:
            stream = generate_examples(family, random.Random(rng.random()), split="heldout", config=config)
            seen: set[str] = set()
            examples = []
            wanted = config.heldout_per_family_overrides.get(family, config.heldout_per_family)
            while len(examples) < wanted:
                ex = next(stream)
                if ex.prompt not in seen:
                    seen.add(ex.prompt)
                    examples.append(ex)
        for ex in examples:
            rows.append({"prompt": ex.prompt, "answer": ex.answer, "family": ex.family,
                         "messages": [{"role": "user", "content": ex.prompt}]})
    return rows


def compare_heldout_all(config: CorpusConfig) -> list[dict]:
    """Every held-out pair of the compare family in both orders, one seeded template each (heldout_split's rows).

    The default config holds out 726 of the 4005 pairs, so 1452 prompts: a larger evaluation set than
    `heldout_split`'s 400 for the family alignment is measured on (`bench/embedded_accuracy.py --set compare_all`).
    """
    rng = random.Random(config.seed + 2)
    rows = []
    for lo in range(10, 100):
        for hi in range(lo + 1, 100):
            if not _is_heldout(f"compare:{lo}:{hi}", config.heldout_fraction):
                continue
            for a, b in ((lo, hi), (hi, lo)):
                prompt = rng.choice(COMPARE_TEMPLATES).format(a=a, b=b)
                rows.append({"prompt": prompt, "answer": str(hi), "family": "compare",
                             "messages": [{"role": "user", "content": prompt}]})
    return rows


def _plain_sentence(ex: Example) -> str:
    """A task instance written as plain text (for pretraining)."""
    if ex.family == "addition" or ex.family == "subtraction":
        expr = re.search(r"(\d+ [+-] \d+)", ex.prompt).group(1)
        return f"{expr} = {ex.answer}."
    if ex.family == "sort":
        nums = ex.prompt.split(": ", 1)[1]
        return f"The numbers {nums} in increasing order are {ex.answer}."
    if ex.family == "reverse":
        letters = ex.prompt.split(": ", 1)[1]
        return f"The letters {letters} backwards are {ex.answer}."
    if ex.family == "word_problem":
        return f"{ex.prompt} The answer is {ex.answer}."
    if ex.family == "compare":
        a, b = re.findall(r"\d+", ex.prompt)
        return f"The larger of {a} and {b} is {ex.answer}."
    if ex.family == "parity":
        n = re.search(r"(\d+)", ex.prompt).group(1)
        return f"{n} is an {ex.answer} number."
    return f"Q: {ex.prompt} A: {ex.answer}."


def pretrain_split(config: CorpusConfig) -> list[dict]:
    """Plain documents {"text"}: every fact (train and held-out alike) as a statement or a "Q: ... A: ..." line,
    and training-split task instances written as prose, a few sentences per document."""
    rng = random.Random(config.seed + 2)
    facts = knowledge_facts()
    train_facts, _ = split_facts(config.heldout_fraction, config.seed)
    streams = {f: generate_examples(f, random.Random(rng.random()), split="train", config=config, facts=train_facts)
               for f in FAMILIES if f != "knowledge"}
    docs = []
    for _ in range(config.pretrain_documents):
        sentences = []
        for _ in range(rng.randint(3, 7)):
            r = rng.random()
            if r < 0.35:
                fact = rng.choice(facts)
                # knowledge is learnt in pretraining, as a statement or as a plain Q/A line
                sentences.append(fact.statement if rng.random() < 0.5 else f"Q: {fact.question} A: {fact.answer}.")
            else:
                sentences.append(_plain_sentence(next(streams[rng.choice(list(streams))])))
        docs.append({"text": " ".join(sentences)})
    return docs


def check_answer(prediction: str, answer: str) -> bool:
    """True when `prediction` states `answer`: equal after trimming whitespace, a final full stop and case.

    Strict on purpose: the instruct model is trained to answer with the bare answer.
    """
    def norm(s: str) -> str:
        s = " ".join(s.strip().split())
        return s.rstrip(".").strip().lower()

    return norm(prediction) == norm(answer)


def write_jsonl(path: Path, rows: Sequence[dict]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w", encoding="utf-8") as fh:
        for row in rows:
            fh.write(json.dumps(row, ensure_ascii=False) + "\n")


def write_corpus(out_dir: str | Path, config: Optional[CorpusConfig] = None) -> dict[str, Path]:
    """Write pretrain.jsonl, sft_train.jsonl, sft_stage1.jsonl, sft_stage3.jsonl, heldout.jsonl (and
    corpus_config.json) to `out_dir`."""
    config = config or CorpusConfig()
    out = Path(out_dir)
    paths = {"pretrain": out / "pretrain.jsonl", "sft_train": out / "sft_train.jsonl",
             "sft_stage1": out / "sft_stage1.jsonl", "sft_stage3": out / "sft_stage3.jsonl",
             "heldout": out / "heldout.jsonl"}
    write_jsonl(paths["pretrain"], pretrain_split(config))
    sft = sft_train_split(config)
    write_jsonl(paths["sft_train"], sft)
    write_jsonl(paths["sft_stage1"], [r for r in sft if r["family"] in config.stage1_families])
    stage3 = list(sft) + [r for r in sft for _ in range(config.stage3_repeats.get(r["family"], 0))]
    random.Random(config.seed + 3).shuffle(stage3)
    write_jsonl(paths["sft_stage3"], stage3)
    write_jsonl(paths["heldout"], heldout_split(config))
    (out / "corpus_config.json").write_text(json.dumps(asdict(config), indent=2) + "\n")
    return paths


def main(argv: Optional[Sequence[str]] = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m llada.corpus", description=__doc__.split("\n")[0])
    parser.add_argument("out_dir", help="folder to write pretrain.jsonl, sft_train.jsonl, heldout.jsonl to")
    parser.add_argument("--seed", type=int, default=CorpusConfig.seed)
    parser.add_argument("--sft-examples", type=int, default=CorpusConfig.sft_examples)
    parser.add_argument("--pretrain-documents", type=int, default=CorpusConfig.pretrain_documents)
    parser.add_argument("--heldout-per-family", type=int, default=CorpusConfig.heldout_per_family)
    args = parser.parse_args(argv)
    config = CorpusConfig(seed=args.seed, sft_examples=args.sft_examples,
                          pretrain_documents=args.pretrain_documents, heldout_per_family=args.heldout_per_family)
    paths = write_corpus(args.out_dir, config)
    for name, path in paths.items():
        n = sum(1 for _ in open(path, encoding="utf-8"))
        print(f"{name:10s} {n:6d} rows  {path}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
