"""The llava_llada conversation template and image-aware tokenisation.

Template (official `conv_llava_llada`): the LLaDA chat template with the LLaDA-V system prompt,

    <|startoftext|><|start_header_id|>system<|end_header_id|>\\n\\n{SYSTEM}<|eot_id|>
    <|start_header_id|>user<|end_header_id|>\\n\\n<image>\\n{question}<|eot_id|>
    <|start_header_id|>assistant<|end_header_id|>\\n\\n

`<image>` marks where an image goes; `tokenize_with_images` turns it into the placeholder id -200 the
way the official `tokenizer_image_token` does, including its quirk: when the text starts with BOS it
drops the first token of every piece after an `<image>` (it was written for tokenizers that prepend
BOS to every piece; LLaDA's does not), so the "\\n" after `<image>` is not in the prompt. LLaDA-V was
trained on prompts tokenised this way, so this is the default (`official_quirk=True`).
"""

from __future__ import annotations

from typing import Any, Optional, Sequence

from llada.tokenization import chat_template_of

IMAGE_PLACEHOLDER = "<image>"
IMAGE_TOKEN_INDEX = -200
LLAVA_LLADA_SYSTEM_PROMPT = (
    "You are a helpful language and vision assistant. You are able to understand the visual content that "
    "the user provides, and assist the user with a variety of tasks using natural language."
)


def build_messages(
    question: str,
    *,
    num_images: int = 1,
    system: Optional[str] = LLAVA_LLADA_SYSTEM_PROMPT,
    history: Sequence[dict] = (),
) -> list[dict]:
    """Messages of one user turn: the system prompt (unless `history` already starts the chat), then
    `num_images` `<image>` placeholders (each followed by a newline, as LLaVA puts them) before the question.

    A question that already contains `<image>` is kept as it is.
    """
    if IMAGE_PLACEHOLDER in question:
        content = question
    else:
        content = (IMAGE_PLACEHOLDER + "\n") * num_images + question
    messages = list(history)
    if not messages and system:
        messages.append({"role": "system", "content": system})
    messages.append({"role": "user", "content": content})
    return messages


def render_prompt(tokenizer: Any, messages: Sequence[dict], *, add_generation_prompt: bool = True) -> str:
    """The prompt text of `messages` in the LLaDA chat template (the tokenizer's own, or LLaDA's)."""
    if not messages:
        raise ValueError("render_prompt: empty message list")
    return tokenizer.apply_chat_template(
        list(messages), chat_template=chat_template_of(tokenizer), add_generation_prompt=add_generation_prompt,
        tokenize=False,
    )


def tokenize_with_images(
    text: str,
    tokenizer: Any,
    *,
    image_token_index: int = IMAGE_TOKEN_INDEX,
    official_quirk: bool = True,
) -> list[int]:
    """Token ids of `text` with each `<image>` replaced by `image_token_index`.

    The text is split at `<image>` and each piece tokenised without special tokens added. With
    `official_quirk` and a text that starts with BOS, the first token of every piece after an image
    is dropped (see the module docstring); otherwise every token is kept.
    """
    pieces = [tokenizer(piece, add_special_tokens=False)["input_ids"] for piece in text.split(IMAGE_PLACEHOLDER)]
    bos = getattr(tokenizer, "bos_token_id", None)
    drop_first = official_quirk and bool(pieces[0]) and bos is not None and pieces[0][0] == bos
    ids: list[int] = list(pieces[0])
    for piece in pieces[1:]:
        ids.append(image_token_index)
        ids.extend(piece[1:] if drop_first else piece)
    return ids


def encode_prompt(
    tokenizer: Any,
    messages: Sequence[dict],
    *,
    add_generation_prompt: bool = True,
    image_token_index: int = IMAGE_TOKEN_INDEX,
    official_quirk: bool = True,
) -> list[int]:
    """Template `messages` and tokenise them with image placeholders: the ids `model.generate` takes."""
    text = render_prompt(tokenizer, messages, add_generation_prompt=add_generation_prompt)
    return tokenize_with_images(text, tokenizer, image_token_index=image_token_index, official_quirk=official_quirk)


__all__ = [
    "IMAGE_PLACEHOLDER",
    "IMAGE_TOKEN_INDEX",
    "LLAVA_LLADA_SYSTEM_PROMPT",
    "build_messages",
    "render_prompt",
    "tokenize_with_images",
    "encode_prompt",
]
