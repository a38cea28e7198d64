"""Preference data for VRPO: (prompt, chosen, rejected) rows from local files or Hub ids, tokenised.

A row holds `prompt` (a string, or a list of chat messages ending with a user turn) and `chosen` /
`rejected` (strings, an assistant message, or a message list whose last message is the assistant's).
Responses are rendered with the chat template exactly as SFT renders them (answer + `<|eot_id|>`), so
the ELBO of a response is the one the SFT model was trained on; EOS padding is not part of a response
(padding is excluded from the VRPO loss).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Iterable, Optional

from llada.data import DataError, DataStats, Row
from llada.tokenization import chat_template_of


@dataclass
class PreferencePair:
    prompt_ids: list[int]
    chosen_ids: list[int]
    rejected_ids: list[int]
    where: str = ""

    def as_tuple(self) -> tuple[list[int], list[int], list[int]]:
        return self.prompt_ids, self.chosen_ids, self.rejected_ids


def _messages(row: Row, value: Any, field: str) -> list[dict]:
    if isinstance(value, str):
        if not value.strip():
            raise DataError(f"{row.where()}: field {field!r} is empty")
        return [{"role": "user", "content": value}]
    if isinstance(value, list) and value and all(isinstance(m, dict) and isinstance(m.get("content"), str)
                                                 and isinstance(m.get("role"), str) for m in value):
        return [{"role": m["role"], "content": m["content"]} for m in value]
    raise DataError(f"{row.where()}: field {field!r} must be a string or a non-empty list of chat messages")


def _response(row: Row, value: Any, field: str) -> str:
    if isinstance(value, dict):
        value = [value]
    if isinstance(value, list) and value:
        last = value[-1]
        if not isinstance(last, dict) or last.get("role") != "assistant" or not isinstance(last.get("content"), str):
            raise DataError(f"{row.where()}: field {field!r}: the last message must be the assistant's")
        value = last["content"]
    if not isinstance(value, str):
        raise DataError(f"{row.where()}: field {field!r} must be a string or an assistant message")
    if not value.strip():
        raise DataError(f"{row.where()}: field {field!r} is an empty response")
    return value


def row_preference(row: Row, prompt_field: str = "prompt", chosen_field: str = "chosen",
                   rejected_field: str = "rejected") -> tuple[list[dict], str, str]:
    """(prompt messages, chosen text, rejected text) of a row, with errors naming file and row."""
    data = row.data
    if not isinstance(data, dict):
        raise DataError(f"{row.where()}: expected a JSON object, got {type(data).__name__}")
    missing = [f for f in (prompt_field, chosen_field, rejected_field) if f not in data]
    if missing:
        raise DataError(f"{row.where()}: missing field(s) {missing}; got {sorted(data)}")
    prompt = _messages(row, data[prompt_field], prompt_field)
    if prompt[-1]["role"] != "user":
        raise DataError(f"{row.where()}: the prompt must end with a user message")
    chosen = _response(row, data[chosen_field], chosen_field)
    rejected = _response(row, data[rejected_field], rejected_field)
    if chosen.strip() == rejected.strip():
        raise DataError(f"{row.where()}: the chosen and rejected responses are identical")
    return prompt, chosen, rejected


def tokenize_preferences(
    rows: Iterable[Row],
    tokenizer: Any,
    *,
    max_length: int,
    prompt_field: str = "prompt",
    chosen_field: str = "chosen",
    rejected_field: str = "rejected",
    too_long: str = "truncate",
    bad_rows: str = "error",
    stats: Optional[DataStats] = None,
) -> list[PreferencePair]:
    """Token ids of each pair: prompt = template(history, assistant header); response = answer + `<|eot_id|>`.

    A pair whose prompt + longer response exceeds `max_length` is truncated (responses cut), skipped, or
    refused, as `too_long` says; a malformed row raises `DataError` naming file and row, or is skipped and
    counted with `bad_rows="skip"`.
    """
    stats = stats if stats is not None else DataStats()
    template = chat_template_of(tokenizer)
    pairs: list[PreferencePair] = []
    for row in rows:
        stats.rows += 1
        try:
            prompt, chosen, rejected = row_preference(row, prompt_field, chosen_field, rejected_field)
        except DataError as err:
            if bad_rows == "error":
                raise
            stats.skipped_bad += 1
            stats.note_skip(str(err))
            continue
        prompt_text = tokenizer.apply_chat_template(prompt, chat_template=template, tokenize=False,
                                                    add_generation_prompt=True)
        responses = []
        for answer in (chosen, rejected):
            full = tokenizer.apply_chat_template(prompt + [{"role": "assistant", "content": answer}],
                                                 chat_template=template, tokenize=False, add_generation_prompt=False)
            if not full.startswith(prompt_text):
                raise DataError(f"{row.where()}: the chat template does not render the prompt as a prefix")
            responses.append(full[len(prompt_text):])
        p = tokenizer(prompt_text, add_special_tokens=False)["input_ids"]
        yw, yl = (tokenizer(r, add_special_tokens=False)["input_ids"] for r in responses)
        longest = len(p) + max(len(yw), len(yl))
        if longest > max_length:
            if too_long == "error":
                raise DataError(f"{row.where()}: prompt + response is {longest} tokens, longer than {max_length}")
            if too_long == "skip" or len(p) >= max_length:
                stats.skipped_too_long += 1
                stats.note_skip(f"{row.where()}: {longest} tokens > {max_length}, skipped")
                continue
            stats.truncated += 1
            yw, yl = yw[: max_length - len(p)], yl[: max_length - len(p)]
            if yw == yl:
                stats.skipped_too_long += 1
                stats.note_skip(f"{row.where()}: chosen and rejected identical after truncation, skipped")
                continue
        pairs.append(PreferencePair(list(p), list(yw), list(yl), row.where()))
    stats.examples += len(pairs)
    return pairs
