"""LLaVA-style training data for LLaDA-V: JSON rows through `datasets`, tokenised with image placeholders.

A row (LLaVA-Pretrain / LLaVA-NeXT / LLaVA-OneVision format):

    {"id": "0001", "image": "images/0001.png",                      # or a list of paths, or absent
     "conversations": [{"from": "human", "value": "<image>\\nWhat colour is the square?"},
                       {"from": "gpt", "value": "Red."}]}

Roles: human/user -> user, gpt/assistant -> assistant, system -> system. Image paths are relative to
`image_folder` (or absolute). A row with images but no `<image>` in its first user turn gets the
placeholders prepended to that turn, as LLaVA does. Each assistant turn becomes one example whose
prompt is the whole dialogue before it (the LLaDA multi-turn recipe), with the llava_llada system prompt.
The response (answer + `<|eot_id|>`) is what the SFT loss trains; EOS padding is added when batching.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional, Sequence

import torch

from llada.data import conversation_to_pairs

from .conversation import IMAGE_PLACEHOLDER, IMAGE_TOKEN_INDEX, LLAVA_LLADA_SYSTEM_PROMPT, render_prompt, tokenize_with_images
from .merging import IGNORE_INDEX

ROLE_NAMES = {"human": "user", "user": "user", "gpt": "assistant", "assistant": "assistant", "system": "system"}


class VisionDataError(ValueError):
    """A training row that cannot be used; the message names the file/row and the problem."""


@dataclass
class VisionExample:
    """One training example: ids with -200 placeholders, labels (-100 on the prompt), image paths."""

    input_ids: list[int]
    labels: list[int]
    images: list[str] = field(default_factory=list)
    source: str = ""


def load_llava_json(data_files: Sequence[str] | str):
    """LLaVA JSON / JSONL files as a `datasets.Dataset` (offline, through the `json` builder)."""
    import datasets

    files = [data_files] if isinstance(data_files, (str, os.PathLike)) else [str(f) for f in data_files]
    if not files:
        raise VisionDataError("no training data: give one or more LLaVA-style JSON files")
    for f in files:
        if not Path(f).is_file():
            raise VisionDataError(f"training data file {f!r} does not exist")
    return datasets.load_dataset("json", data_files=files, split="train")


def row_messages(row: dict, where: str, system: Optional[str] = LLAVA_LLADA_SYSTEM_PROMPT) -> tuple[list[dict], list[str]]:
    """(messages, image paths) of a LLaVA row; raises VisionDataError naming the row."""
    conv = row.get("conversations")
    if not isinstance(conv, list) or not conv:
        raise VisionDataError(f"{where}: 'conversations' must be a non-empty list")
    images = row.get("image")
    images = [] if images in (None, "") else ([images] if isinstance(images, str) else list(images))
    messages = []
    if system and not (conv and ROLE_NAMES.get(str(conv[0].get("from", "")).lower()) == "system"):
        messages.append({"role": "system", "content": system})
    for j, turn in enumerate(conv):
        if not isinstance(turn, dict) or "from" not in turn or "value" not in turn:
            raise VisionDataError(f"{where}: turn {j} must be an object with 'from' and 'value'")
        role = ROLE_NAMES.get(str(turn["from"]).lower())
        if role is None:
            raise VisionDataError(f"{where}: turn {j} has role {turn['from']!r}; expected human/gpt/system")
        messages.append({"role": role, "content": str(turn["value"])})
    n_placeholders = sum(m["content"].count(IMAGE_PLACEHOLDER) for m in messages)
    if images and n_placeholders == 0:
        first_user = next((m for m in messages if m["role"] == "user"), None)
        if first_user is None:
            raise VisionDataError(f"{where}: has images but no user turn to put them in")
        first_user["content"] = (IMAGE_PLACEHOLDER + "\n") * len(images) + first_user["content"]
        n_placeholders = len(images)
    if n_placeholders != len(images):
        raise VisionDataError(f"{where}: {n_placeholders} <image> placeholder(s) but {len(images)} image(s)")
    if not any(m["role"] == "assistant" for m in messages):
        raise VisionDataError(f"{where}: no assistant turn to train on")
    return messages, images


def tokenize_row(
    row: dict,
    tokenizer: Any,
    *,
    where: str = "row",
    image_folder: Optional[str] = None,
    system: Optional[str] = LLAVA_LLADA_SYSTEM_PROMPT,
    official_quirk: bool = True,
) -> list[VisionExample]:
    """One example per assistant turn: prompt = template(history), response = the rest of the template."""
    messages, images = row_messages(row, where, system)
    paths = [str(Path(image_folder) / p) if image_folder and not os.path.isabs(p) else str(p) for p in images]
    examples = []
    for history, answer in conversation_to_pairs(messages):
        prompt_text = render_prompt(tokenizer, history, add_generation_prompt=True)
        full_text = render_prompt(tokenizer, history + [answer], add_generation_prompt=False)
        if not full_text.startswith(prompt_text):
            raise VisionDataError(f"{where}: the chat template does not render the prompt as a prefix of the conversation")
        prompt_ids = tokenize_with_images(prompt_text, tokenizer, official_quirk=official_quirk)
        response_ids = tokenizer(full_text[len(prompt_text):], add_special_tokens=False)["input_ids"]
        n_images = sum(1 for t in prompt_ids if t == IMAGE_TOKEN_INDEX)
        examples.append(VisionExample(
            input_ids=prompt_ids + list(response_ids),
            labels=[IGNORE_INDEX] * len(prompt_ids) + list(response_ids),
            images=paths[:n_images],
            source=where,
        ))
    return examples


def tokenize_dataset(dataset, tokenizer, *, image_folder=None, system=LLAVA_LLADA_SYSTEM_PROMPT,
                     official_quirk: bool = True, name: str = "data") -> list[VisionExample]:
    """Every row of a LLaVA dataset as examples (rows in order, then turns in order)."""
    out = []
    for i, row in enumerate(dataset):
        out.extend(tokenize_row(row, tokenizer, where=f"{name} row {i}", image_folder=image_folder, system=system,
                                official_quirk=official_quirk))
    return out


__all__ = ["VisionDataError", "VisionExample", "load_llava_json", "row_messages", "tokenize_row", "tokenize_dataset"]
