"""Tokenizer and chat-template helpers for the LLaDA family.

Special ids are read from the tokenizer (by token string) and the model config, never written as
literals. The Instruct chat template: BOS before the first message only, each message as
`<|start_header_id|>{role}<|end_header_id|>\\n\\n{content stripped}<|eot_id|>`, then always the
assistant header `<|start_header_id|>assistant<|end_header_id|>\\n\\n`.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Optional, Sequence

import torch

BOS_TOKEN = "<|startoftext|>"
EOS_TOKEN = "<|endoftext|>"
MASK_TOKEN = "<|mdm_mask|>"
START_HEADER_TOKEN = "<|start_header_id|>"
END_HEADER_TOKEN = "<|end_header_id|>"
EOT_TOKEN = "<|eot_id|>"
SPECIAL_TOKENS = (BOS_TOKEN, EOS_TOKEN, MASK_TOKEN, START_HEADER_TOKEN, END_HEADER_TOKEN, EOT_TOKEN)

#: The chat template of GSAI-ML/LLaDA-8B-Instruct (tokenizer_config.json), used when a tokenizer has none.
LLADA_CHAT_TEMPLATE = (
    "{% set loop_messages = messages %}"
    "{% for message in loop_messages %}"
    "{% set content = '<|start_header_id|>' + message['role'] + '<|end_header_id|>\n\n'"
    "+ message['content'] | trim + '<|eot_id|>' %}"
    "{% if loop.index0 == 0 %}{% set content = bos_token + content %}{% endif %}"
    "{{ content }}"
    "{% endfor %}"
    "{% if add_generation_prompt is not defined or add_generation_prompt %}"
    "{{ '<|start_header_id|>assistant<|end_header_id|>\n\n' }}"
    "{% endif %}"
)


@dataclass(frozen=True)
class SpecialTokenIds:
    """The ids every part of the suite needs. `eot` / header ids are None for tokenizers without them."""

    mask: int
    eos: int
    pad: int
    bos: Optional[int] = None
    eot: Optional[int] = None
    start_header: Optional[int] = None
    end_header: Optional[int] = None

    def __post_init__(self) -> None:
        if self.pad == self.mask:
            raise ValueError(
                f"pad id {self.pad} equals the mask id {self.mask}: padding would be indistinguishable from "
                f"masked positions; use the EOS id (or another non-mask token) as padding"
            )


def _token_id(tokenizer: Any, token: str) -> Optional[int]:
    if tokenizer is None:
        return None
    vocab_id = tokenizer.convert_tokens_to_ids(token)
    unk = getattr(tokenizer, "unk_token_id", None)
    if vocab_id is None or (unk is not None and vocab_id == unk and token != getattr(tokenizer, "unk_token", None)):
        return None
    return int(vocab_id)


def special_token_ids(tokenizer: Any = None, config: Any = None) -> SpecialTokenIds:
    """Collect mask / EOS / pad / BOS / EoT / header ids from a tokenizer and/or a model config.

    The config wins for the mask and EOS ids (the model was trained with them); the tokenizer supplies
    the rest. Raises a ValueError naming what is missing, or when pad equals mask.
    """
    mask = getattr(config, "mask_token_id", None) if config is not None else None
    if mask is None:
        mask = _token_id(tokenizer, MASK_TOKEN)
    eos = getattr(config, "eos_token_id", None) if config is not None else None
    if isinstance(eos, (list, tuple)):
        eos = eos[0] if eos else None
    if eos is None and tokenizer is not None:
        eos = tokenizer.eos_token_id if tokenizer.eos_token_id is not None else _token_id(tokenizer, EOS_TOKEN)
    pad = None
    if tokenizer is not None and tokenizer.pad_token_id is not None:
        pad = tokenizer.pad_token_id
    elif config is not None and getattr(config, "pad_token_id", None) is not None:
        pad = config.pad_token_id
    if pad is None:
        pad = eos
    if mask is None or eos is None:
        raise ValueError(
            f"cannot determine the special ids: mask={mask}, eos={eos}; the config needs mask_token_id / "
            f"eos_token_id or the tokenizer needs {MASK_TOKEN} and {EOS_TOKEN}"
        )
    bos = _token_id(tokenizer, BOS_TOKEN)
    if bos is None and tokenizer is not None:
        bos = tokenizer.bos_token_id
    if bos is None and config is not None:
        bos = getattr(config, "bos_token_id", None)
    return SpecialTokenIds(
        mask=int(mask),
        eos=int(eos),
        pad=int(pad),
        bos=None if bos is None else int(bos),
        eot=_token_id(tokenizer, EOT_TOKEN),
        start_header=_token_id(tokenizer, START_HEADER_TOKEN),
        end_header=_token_id(tokenizer, END_HEADER_TOKEN),
    )


def chat_template_of(tokenizer: Any) -> str:
    """The tokenizer's own chat template, or the LLaDA Instruct template when it has none."""
    return getattr(tokenizer, "chat_template", None) or LLADA_CHAT_TEMPLATE


def render_chat(tokenizer: Any, messages: Sequence[dict], *, add_generation_prompt: bool = True) -> str:
    """The chat-template text of `messages` ([{"role", "content"}, ...])."""
    if not messages:
        raise ValueError("apply_chat_template: empty message list")
    for i, m in enumerate(messages):
        if not isinstance(m, dict) or "role" not in m or "content" not in m:
            raise ValueError(f"apply_chat_template: message {i} must be a dict with 'role' and 'content', got {m!r}")
    return tokenizer.apply_chat_template(
        list(messages),
        chat_template=chat_template_of(tokenizer),
        add_generation_prompt=add_generation_prompt,
        tokenize=False,
    )


def apply_chat_template(
    tokenizer: Any, messages: Sequence[dict], *, add_generation_prompt: bool = True
) -> list[int]:
    """Token ids of `messages` ([{"role", "content"}, ...]) in the Instruct chat format."""
    text = render_chat(tokenizer, messages, add_generation_prompt=add_generation_prompt)
    return tokenizer(text, add_special_tokens=False)["input_ids"]


def left_pad(sequences: Sequence[Sequence[int]], pad_id: int, *, device=None) -> tuple[torch.Tensor, torch.Tensor]:
    """Left-pad id lists to one (batch, max_len) tensor; returns (input_ids, attention_mask)."""
    if not sequences:
        raise ValueError("left_pad: no sequences")
    width = max(len(s) for s in sequences)
    ids = torch.full((len(sequences), width), pad_id, dtype=torch.long, device=device)
    mask = torch.zeros((len(sequences), width), dtype=torch.long, device=device)
    for row, seq in enumerate(sequences):
        if len(seq) == 0:
            raise ValueError(f"left_pad: sequence {row} is empty")
        ids[row, width - len(seq):] = torch.as_tensor(list(seq), dtype=torch.long)
        mask[row, width - len(seq):] = 1
    return ids, mask


def encode_chat_batch(
    tokenizer: Any, conversations: Sequence[Sequence[dict]], *, pad_id: Optional[int] = None, device=None
) -> tuple[torch.Tensor, torch.Tensor]:
    """Template and left-pad several conversations; returns (input_ids, attention_mask)."""
    if pad_id is None:
        pad_id = special_token_ids(tokenizer).pad
    return left_pad([apply_chat_template(tokenizer, c) for c in conversations], pad_id, device=device)


def decode_answer(tokenizer: Any, generated: Sequence[int], ids: SpecialTokenIds) -> str:
    """The answer text of generated ids: decoded up to the first EOS or `<|eot_id|>`, special tokens skipped.

    Not stripped of surrounding whitespace (callers that compare answers strip; lm-eval's stop strings must not)."""
    stops = {ids.eos} | ({ids.eot} if ids.eot is not None else set())
    tokens = [int(t) for t in generated]
    cut = next((k for k, t in enumerate(tokens) if t in stops), len(tokens))
    return tokenizer.decode(tokens[:cut], skip_special_tokens=True)


def strip_eos_padding(answer_ids: Sequence[int], eos_id: int) -> list[int]:
    """Drop the trailing EOS padding of a generated answer (the `<|eot_id|>` before it is kept)."""
    ids = list(answer_ids)
    while ids and ids[-1] == eos_id:
        ids.pop()
    return ids


def next_turn_prompt(
    tokenizer: Any, previous_prompt: Sequence[int], answer_ids: Sequence[int], user_message: str, *, eos_id: int
) -> list[int]:
    """The prompt of the next chat turn as the reference chat does it.

    previous prompt + answer with its EOS tokens removed (`<|eot_id|>` kept as generated), then the new user turn in
    the chat template without BOS, ending with the assistant header.
    """
    turn = apply_chat_template(tokenizer, [{"role": "user", "content": user_message}])
    ids = special_token_ids(tokenizer)
    if ids.bos is not None and turn and turn[0] == ids.bos:
        turn = turn[1:]
    answer = [t for t in answer_ids if t != eos_id]  # the reference drops every EOS of the output
    return list(previous_prompt) + answer + turn
