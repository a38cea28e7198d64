"""What the demo runs behind the page: load a model once, stream a reply step by step.

No model or sampler logic lives here: the model comes from `llada`, the reverse process from
`sampling.stream`; this module turns their step events into what the page draws.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass, fields
from typing import Any, Iterator, Optional, Sequence

import torch

from llada.tokenization import apply_chat_template, decode_answer, special_token_ids

from .rendering import DenoisingView, render_html


@dataclass
class DemoSettings:
    """The sampler settings a visitor controls, with the bounds the page enforces."""

    gen_length: int = 64
    steps: int = 64
    block_length: int = 32
    temperature: float = 0.0
    cfg_scale: float = 0.0
    remasking: str = "low_confidence"
    threshold: float = 0.0  # 0 = off (exact schedule); otherwise Fast-dLLM parallel decoding
    cache: str = "none"

    LIMITS = {
        "gen_length": (8, 512),
        "steps": (1, 512),
        "block_length": (1, 512),
        "temperature": (0.0, 2.0),
        "cfg_scale": (0.0, 5.0),
        "threshold": (0.0, 1.0),
    }

    def validated(self) -> "DemoSettings":
        for name, (lo, hi) in self.LIMITS.items():
            value = getattr(self, name)
            if value is None or not (lo <= value <= hi):
                raise ValueError(f"{name.replace('_', ' ')} must lie in [{lo}, {hi}], got {value}")
        for name in ("gen_length", "steps", "block_length"):
            setattr(self, name, int(getattr(self, name)))
        return self

    def sampler_kwargs(self) -> dict[str, Any]:
        kw = {f.name: getattr(self, f.name) for f in fields(self) if f.name not in ("threshold",)}
        if self.threshold > 0:
            kw["threshold"] = float(self.threshold)
        return kw


class StreamingEngine:
    """What the chat and vision engines share: a tokenizer and its special ids (`tokenizer`, `ids`, set by the
    subclass), the text of a token as the page draws it, bounded visitor text, and one sampler step drawn."""

    tokenizer: Any
    ids: Any

    def piece(self, token_id: int) -> str:
        if token_id == self.ids.eos:
            return "\u00b7"  # EOS padding, drawn faintly
        if self.ids.eot is not None and token_id == self.ids.eot:
            return "\u23f9"
        tok = self.tokenizer.convert_ids_to_tokens(int(token_id))
        return self.tokenizer.convert_tokens_to_string([tok])

    @staticmethod
    def checked_text(text: str, what: str, limit: int) -> str:
        """`text` when it is non-empty and at most `limit` characters; otherwise ValueError naming `what`."""
        if not text or not text.strip():
            raise ValueError(f"the {what} is empty")
        if len(text) > limit:
            raise ValueError(f"the {what} is {len(text)} characters long; the limit is {limit}")
        return text

    def show_step(self, view: DenoisingView, event: Any) -> list[int]:
        """Draw one sampler step event (`sampling` StepEvent) into `view`; returns the generated ids so far."""
        P = event.prompt_length
        gen = event.x[0, P:]
        moved = event.transferred[0, P:]
        view.update([self.piece(t) for t in gen[moved].tolist()], moved, event.confidence[0, P:], step=event.nfe)
        return gen.tolist()


class ChatEngine(StreamingEngine):
    """A text model and its tokenizer, loaded once; `stream_reply` yields (html, final_text or None)."""

    def __init__(self, model_path: str, *, device: str = "cpu", dtype: str = "float32", quantize: Optional[str] = None,
                 max_prompt_chars: int = 4000):
        from transformers import AutoTokenizer

        import llada

        kwargs: dict[str, Any] = {"dtype": getattr(torch, dtype)}
        if quantize:
            from transformers import BitsAndBytesConfig

            if quantize not in ("8bit", "4bit"):
                raise ValueError(f"--quantize must be 8bit or 4bit, got {quantize!r}")
            kwargs["quantization_config"] = (
                BitsAndBytesConfig(load_in_8bit=True) if quantize == "8bit"
                else BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_compute_dtype=getattr(torch, dtype))
            )
            kwargs["device_map"] = device
        self.model = llada.LLaDAModelLM.from_pretrained(model_path, **kwargs).eval()
        if not quantize:
            self.model.to(device)
        self.tokenizer = AutoTokenizer.from_pretrained(model_path)
        self.ids = special_token_ids(self.tokenizer, self.model.config)
        self.device = device
        self.max_prompt_chars = max_prompt_chars
        self.name = model_path
        self._lock = threading.Lock()  # one model: concurrent requests take turns on it

    # ---------------------------------------------------------------- text pieces
    def answer_text(self, generated: Sequence[int]) -> str:
        return decode_answer(self.tokenizer, generated, self.ids).strip()

    # ---------------------------------------------------------------- streaming
    def prompt_ids(self, messages: list[dict]) -> list[int]:
        if not messages or messages[-1]["role"] != "user":
            raise ValueError("the conversation must end with a user message")
        self.checked_text(messages[-1]["content"], "message", self.max_prompt_chars)
        return apply_chat_template(self.tokenizer, messages)

    def stream_reply(self, messages: list[dict], settings: DemoSettings) -> Iterator[tuple[str, Optional[str]]]:
        import sampling

        settings.validated()
        prompt = self.prompt_ids(messages)
        limit = self.model.config.max_sequence_length
        if len(prompt) + settings.gen_length > limit:
            raise ValueError(
                f"the conversation ({len(prompt)} tokens) plus {settings.gen_length} generated tokens exceeds the "
                f"model's context of {limit}; clear the chat or generate fewer tokens"
            )
        input_ids = torch.tensor([prompt], device=self.device)
        yield from self._stream(input_ids, settings, lambda **kw: sampling.stream(self.model, input_ids, **kw))

    def _stream(self, input_ids, settings, run) -> Iterator[tuple[str, Optional[str]]]:
        view = DenoisingView.empty(settings.gen_length)
        yield render_html(view), None
        last = None
        with self._lock:
            kwargs = settings.sampler_kwargs()
            if self.ids.eot is not None:
                kwargs.setdefault("eot_token_id", self.ids.eot)
            for event in run(**kwargs):
                last = self.show_step(view, event)
                yield render_html(view), None
        yield render_html(view), self.answer_text(last or [])
