"""Training data: reading rows (local json / jsonl / parquet or Hub datasets), validating them,
tokenising them for pretraining (packed text) or SFT (chat template), and collating batches.

Every row keeps its provenance (file and row number), so a malformed row is reported as
"FILE row N: what is wrong" or, when the recipe says `bad_rows: skip`, skipped and counted.
"""

from __future__ import annotations

import glob
import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable, Iterator, Optional, Sequence

import torch

from .tokenization import chat_template_of, special_token_ids

LOCAL_SUFFIXES = {".json": "json", ".jsonl": "json", ".parquet": "parquet"}


class DataError(ValueError):
    """A problem with the training data, naming the file and row."""


@dataclass
class Row:
    """One raw training row with where it came from (`source` file or Hub id, 0-based `index`)."""

    source: str
    index: int
    data: Any

    def where(self) -> str:
        return f"{self.source} row {self.index + 1}"


@dataclass
class DataStats:
    """Counts reported by the trainer: what was read, skipped, truncated."""

    rows: int = 0
    skipped_bad: int = 0
    skipped_too_long: int = 0
    truncated: int = 0
    examples: int = 0
    tokens: int = 0
    problems: list = field(default_factory=list)  # first few skipped rows, for the log

    def note_skip(self, message: str) -> None:
        if len(self.problems) < 10:
            self.problems.append(message)


# --------------------------------------------------------------------------- reading
def _is_local(source: str) -> bool:
    return os.path.exists(source) or any(ch in source for ch in "*?[") or Path(source).suffix in LOCAL_SUFFIXES


def _expand_local(source: str) -> list[Path]:
    path = Path(source)
    if path.is_dir():
        files = sorted(p for p in path.iterdir() if p.suffix in LOCAL_SUFFIXES)
    elif any(ch in source for ch in "*?["):
        files = sorted(Path(p) for p in glob.glob(source))
    else:
        files = [path]
    for f in files:
        if not f.is_file():
            raise DataError(f"training data {f}: no such file")
        if f.suffix not in LOCAL_SUFFIXES:
            raise DataError(f"training data {f}: unsupported file type {f.suffix!r} (use .json, .jsonl or .parquet)")
    if not files:
        raise DataError(f"training data {source}: no .json / .jsonl / .parquet files found")
    return files


def _read_json_file(path: Path, bad_rows: str, stats: DataStats) -> Iterator[Row]:
    """JSON lines (one object per line), or a JSON array of objects. Malformed lines -> error / skip."""
    text = path.read_text(encoding="utf-8")
    stripped = text.lstrip()
    if stripped.startswith("["):
        try:
            items = json.loads(text)
        except json.JSONDecodeError as err:
            raise DataError(f"{path}: not valid JSON ({err.msg} at line {err.lineno} column {err.colno})") from err
        for i, item in enumerate(items):
            yield Row(str(path), i, item)
        return
    index = 0
    for lineno, line in enumerate(text.splitlines(), start=1):
        if not line.strip():
            continue
        try:
            item = json.loads(line)
        except json.JSONDecodeError as err:
            message = f"{path} row {index + 1} (line {lineno}): malformed JSON ({err.msg} at column {err.colno})"
            if bad_rows == "error":
                raise DataError(message + "; fix the row or set bad_rows=skip") from err
            stats.skipped_bad += 1
            stats.note_skip(message)
            index += 1
            continue
        yield Row(str(path), index, item)
        index += 1


def read_rows(
    sources: Sequence[str],
    *,
    split: str = "train",
    hub_config: Optional[str] = None,
    bad_rows: str = "error",
    stats: Optional[DataStats] = None,
) -> Iterator[Row]:
    """Yield the raw rows of every source: local files / folders / globs (json, jsonl, parquet) or Hub ids
    (through `datasets.load_dataset(id, hub_config, split=split)`)."""
    stats = stats if stats is not None else DataStats()
    for source in sources:
        if _is_local(source):
            for path in _expand_local(source):
                if path.suffix == ".parquet":
                    import datasets

                    ds = datasets.load_dataset("parquet", data_files=str(path), split="train")
                    for i, item in enumerate(ds):
                        yield Row(str(path), i, item)
                else:
                    yield from _read_json_file(path, bad_rows, stats)
        else:
            import datasets

            ds = datasets.load_dataset(source, hub_config, split=split)
            for i, item in enumerate(ds):
                yield Row(f"{source}[{split}]", i, item)


# --------------------------------------------------------------------------- validation
def _bad(row: Row, what: str) -> DataError:
    return DataError(f"{row.where()}: {what}")


def row_text(row: Row, text_field: str) -> str:
    """The pretraining text of a row (a non-empty string in `text_field`)."""
    if not isinstance(row.data, dict):
        raise _bad(row, f"expected a JSON object with a {text_field!r} field, got {type(row.data).__name__}")
    text = row.data.get(text_field)
    if not isinstance(text, str):
        raise _bad(row, f"field {text_field!r} must be a string, got {type(text).__name__}")
    if not text.strip():
        raise _bad(row, f"field {text_field!r} is empty")
    return text


def row_messages(row: Row, messages_field: str, prompt_field: str, response_field: str) -> list[dict]:
    """The chat messages of an SFT row: `messages_field` ([{"role", "content"}, ...] with at least one assistant
    turn), or a `prompt_field` / `response_field` pair turned into a user / assistant exchange."""
    data = row.data
    if not isinstance(data, dict):
        raise _bad(row, f"expected a JSON object, got {type(data).__name__}")
    if data.get(messages_field) is not None:
        messages = data[messages_field]
        if not isinstance(messages, list) or not messages:
            raise _bad(row, f"field {messages_field!r} must be a non-empty list of messages")
        for j, m in enumerate(messages):
            if not isinstance(m, dict) or not isinstance(m.get("role"), str) or not isinstance(m.get("content"), str):
                raise _bad(row, f"message {j} must be an object with string 'role' and 'content', got {m!r}")
            if m["role"] not in ("system", "user", "assistant"):
                raise _bad(row, f"message {j} has role {m['role']!r}; expected system, user or assistant")
        if not any(m["role"] == "assistant" for m in messages):
            raise _bad(row, "the conversation has no assistant turn to train on")
        return [{"role": m["role"], "content": m["content"]} for m in messages]
    prompt, response = data.get(prompt_field), data.get(response_field)
    if isinstance(prompt, str) and isinstance(response, str):
        if not prompt.strip() or not response.strip():
            raise _bad(row, f"empty {prompt_field!r} or {response_field!r}")
        return [{"role": "user", "content": prompt}, {"role": "assistant", "content": response}]
    raise _bad(
        row, f"expected a {messages_field!r} list or string fields {prompt_field!r} and {response_field!r}; "
             f"got fields {sorted(data)}"
    )


def conversation_to_pairs(messages: Sequence[dict]) -> list[tuple[list[dict], dict]]:
    """Multi-turn SFT (LLaDA guidelines): one (history, assistant message) pair per assistant turn, the
    history being every message before that turn (the whole dialogue so far is the prompt)."""
    return [(list(messages[:i]), m) for i, m in enumerate(messages) if m["role"] == "assistant" and i > 0]


# --------------------------------------------------------------------------- tokenisation
@dataclass
class SFTExample:
    """Token ids of prompt + response (response ends with `<|eot_id|>`; EOS padding is added by the collator)."""

    input_ids: list[int]
    prompt_length: int


def tokenize_pretraining(
    rows: Iterable[Row],
    tokenizer: Any,
    *,
    seq_len: int,
    text_field: str = "text",
    pack: bool = True,
    too_long: str = "truncate",
    bad_rows: str = "error",
    stats: Optional[DataStats] = None,
) -> list[list[int]]:
    """Pretraining sequences of exactly `seq_len` tokens.

    Each document becomes BOS + tokens + EOS (BOS only if the tokenizer has one). pack=True concatenates the
    documents and cuts the stream into seq_len chunks (the tail shorter than seq_len is dropped);
    pack=False keeps one document per sequence, EOS-padded to seq_len, and a longer document is truncated
    (`too_long: truncate`), skipped (`skip`) or refused (`error`).
    """
    stats = stats if stats is not None else DataStats()
    ids = special_token_ids(tokenizer)
    rows = list(rows)
    texts, kept = [], []
    for row in rows:
        stats.rows += 1
        try:
            texts.append(row_text(row, text_field))
            kept.append(row)
        except DataError as err:
            if bad_rows == "error":
                raise
            stats.skipped_bad += 1
            stats.note_skip(str(err))
    if not texts:
        return []
    encoded = tokenizer(texts, add_special_tokens=False)["input_ids"]
    prefix = [ids.bos] if ids.bos is not None else []
    sequences: list[list[int]] = []
    if pack:
        stream: list[int] = []
        for doc in encoded:
            stream.extend(prefix + list(doc) + [ids.eos])
        for start in range(0, len(stream) - seq_len + 1, seq_len):
            sequences.append(stream[start: start + seq_len])
    else:
        for row, doc in zip(kept, encoded):
            seq = prefix + list(doc) + [ids.eos]
            if len(seq) > seq_len:
                if too_long == "error":
                    raise DataError(f"{row.where()}: {len(seq)} tokens, longer than seq_len={seq_len} "
                                    f"(set too_long=truncate or too_long=skip)")
                if too_long == "skip":
                    stats.skipped_too_long += 1
                    continue
                stats.truncated += 1
                seq = seq[:seq_len]
            sequences.append(seq + [ids.pad] * (seq_len - len(seq)))
    stats.examples += len(sequences)
    stats.tokens += sum(len(s) for s in sequences)
    return sequences


def tokenize_sft(
    rows: Iterable[Row],
    tokenizer: Any,
    *,
    seq_len: int,
    messages_field: str = "messages",
    prompt_field: str = "prompt",
    response_field: str = "response",
    too_long: str = "truncate",
    bad_rows: str = "error",
    stats: Optional[DataStats] = None,
    max_response_length: Optional[int] = None,
) -> list[SFTExample]:
    """SFT examples with the chat template: one per assistant turn (the history as prompt).

    prompt = template(history, add_generation_prompt=True); response = the rest of
    template(history + [assistant turn]) (the answer and its `<|eot_id|>`). An example longer than
    `seq_len` has its response truncated (`too_long: truncate`; a prompt that leaves no room for a response
    is skipped and counted), is skipped (`skip`), or is refused (`error`). `max_response_length` (the
    left-padded layout's fixed response length) limits the response the same way.
    """
    stats = stats if stats is not None else DataStats()
    template = chat_template_of(tokenizer)
    prompts, responses, where = [], [], []
    for row in rows:
        stats.rows += 1
        try:
            messages = row_messages(row, messages_field, prompt_field, response_field)
        except DataError as err:
            if bad_rows == "error":
                raise
            stats.skipped_bad += 1
            stats.note_skip(str(err))
            continue
        for history, answer in conversation_to_pairs(messages):
            prompt_text = tokenizer.apply_chat_template(history, chat_template=template, tokenize=False,
                                                        add_generation_prompt=True)
            full_text = tokenizer.apply_chat_template(history + [answer], chat_template=template, tokenize=False,
                                                      add_generation_prompt=False)
            if not full_text.startswith(prompt_text):
                raise DataError(f"{row.where()}: the chat template does not render the prompt as a prefix of the "
                                f"full conversation; cannot separate prompt and response")
            prompts.append(prompt_text)
            responses.append(full_text[len(prompt_text):])
            where.append(row.where())
    if not prompts:
        return []
    p_ids = tokenizer(prompts, add_special_tokens=False)["input_ids"]
    r_ids = tokenizer(responses, add_special_tokens=False)["input_ids"]
    examples = []
    for w, p, r in zip(where, p_ids, r_ids):
        p, r = list(p), list(r)
        if max_response_length is not None and len(r) > max_response_length:
            if too_long == "error":
                raise DataError(f"{w}: response is {len(r)} tokens, longer than sft_response_length="
                                f"{max_response_length} (set too_long=truncate or too_long=skip)")
            if too_long == "skip":
                stats.skipped_too_long += 1
                stats.note_skip(f"{w}: response of {len(r)} tokens > {max_response_length}, skipped")
                continue
            stats.truncated += 1
            r = r[:max_response_length]
        if len(p) + len(r) > seq_len:
            if too_long == "error":
                raise DataError(f"{w}: prompt + response is {len(p) + len(r)} tokens, longer than "
                                f"seq_len={seq_len} (set too_long=truncate or too_long=skip)")
            if too_long == "skip" or len(p) >= seq_len:
                stats.skipped_too_long += 1
                stats.note_skip(f"{w}: {len(p) + len(r)} tokens > seq_len={seq_len}, skipped")
                continue
            stats.truncated += 1
            r = r[: seq_len - len(p)]
        examples.append(SFTExample(p + r, len(p)))
    stats.examples += len(examples)
    stats.tokens += sum(len(e.input_ids) for e in examples)
    return examples


# --------------------------------------------------------------------------- collation
def collate_sft(examples: Sequence[SFTExample], pad_id: int, *, pad_to: Optional[int] = None) -> dict:
    """Pad SFT examples on the right with EOS (`pad_id`) to the longest in the batch (or `pad_to`).

    Returns input_ids (B, L) and prompt_lengths (B,); the padding is part of each response.
    """
    if not examples:
        raise ValueError("collate_sft: empty batch")
    width = max(len(e.input_ids) for e in examples)
    if pad_to is not None:
        if pad_to < width:
            raise ValueError(f"collate_sft: pad_to={pad_to} is shorter than the longest example ({width})")
        width = pad_to
    ids = torch.full((len(examples), width), pad_id, dtype=torch.long)
    for b, e in enumerate(examples):
        ids[b, : len(e.input_ids)] = torch.tensor(e.input_ids, dtype=torch.long)
    return {"input_ids": ids, "prompt_lengths": torch.tensor([e.prompt_length for e in examples], dtype=torch.long)}


def collate_sft_left(examples: Sequence[SFTExample], pad_id: int, *, response_length: int,
                     prompt_width: Optional[int] = None) -> dict:
    """The sampler's layout: prompts left-padded (attention mask 0 on the padding) to a common width P, each
    response EOS-padded (`pad_id`) to exactly `response_length` tokens, like a prompt followed by gen_length
    positions. The EOS padding is response (masked and trained on, counted in the answer length).

    Returns input_ids (B, P + response_length), attention_mask, and prompt_lengths = P for every row (the whole
    prompt region, padding included, is never masked).
    """
    if not examples:
        raise ValueError("collate_sft_left: empty batch")
    width = max(e.prompt_length for e in examples)
    if prompt_width is not None:
        if prompt_width < width:
            raise ValueError(f"collate_sft_left: prompt_width={prompt_width} is shorter than the longest prompt ({width})")
        width = prompt_width
    B, L = len(examples), width + response_length
    ids = torch.full((B, L), pad_id, dtype=torch.long)
    mask = torch.ones((B, L), dtype=torch.long)
    for b, e in enumerate(examples):
        prompt, response = e.input_ids[: e.prompt_length], e.input_ids[e.prompt_length:]
        if len(response) > response_length:
            raise ValueError(f"collate_sft_left: a response of {len(response)} tokens does not fit "
                             f"response_length={response_length}")
        ids[b, width - len(prompt): width] = torch.tensor(prompt, dtype=torch.long)
        mask[b, : width - len(prompt)] = 0
        ids[b, width: width + len(response)] = torch.tensor(response, dtype=torch.long)
    return {"input_ids": ids, "attention_mask": mask, "prompt_lengths": torch.full((B,), width, dtype=torch.long)}


def collate_pretraining(sequences: Sequence[Sequence[int]]) -> dict:
    """Stack equal-length pretraining sequences into input_ids (B, L)."""
    if not sequences:
        raise ValueError("collate_pretraining: empty batch")
    return {"input_ids": torch.tensor([list(s) for s in sequences], dtype=torch.long)}


def random_length_cut(input_ids: torch.Tensor, *, probability: float, generator: torch.Generator) -> torch.Tensor:
    """LLaDA pretraining: with probability `probability` (1%), cut the whole batch to a random length
    l ~ U{1, ..., L} (input_ids[:, :l]), so the model also sees sequences shorter than the context."""
    L = input_ids.shape[1]
    if float(torch.rand(1, generator=generator)) < probability:
        length = int(torch.randint(1, L + 1, (1,), generator=generator))
        return input_ids[:, :length]
    return input_ids


__all__ = [
    "DataError", "Row", "DataStats", "SFTExample", "read_rows", "row_text", "row_messages",
    "conversation_to_pairs", "tokenize_pretraining", "tokenize_sft", "collate_sft", "collate_sft_left",
    "collate_pretraining",
    "random_length_cut",
]
