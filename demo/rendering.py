"""Drawing the denoising: the generated region as HTML, one span per position.

Masked positions are grey mask boxes; tokens revealed at the current step are coloured by the model's
confidence in them (the official LLaDA demo's bands: < 0.3, < 0.7, otherwise); tokens revealed at earlier
steps are drawn in a neutral colour, so the eye follows what changed.
"""

from __future__ import annotations

import html
from dataclasses import dataclass, field
from typing import Optional, Sequence

import torch

#: confidence band upper edges and their colours (low, middle, high)
CONFIDENCE_BANDS = ((0.3, "#e4572e"), (0.7, "#f3a712"), (1.01, "#29a35a"))
EARLIER_COLOUR = "#1d3557"
MASK_COLOUR = "#b8b8b8"


def confidence_colour(confidence: float) -> str:
    """Colour of a freshly revealed token with model probability `confidence`."""
    for edge, colour in CONFIDENCE_BANDS:
        if confidence < edge:
            return colour
    return CONFIDENCE_BANDS[-1][1]


@dataclass
class DenoisingView:
    """The generated region's state for drawing: per position its token text, when it was revealed and how surely."""

    pieces: list[Optional[str]]  # None = still masked
    revealed_at: list[Optional[int]] = field(default_factory=list)
    confidence: list[float] = field(default_factory=list)
    step: int = 0

    @classmethod
    def empty(cls, length: int) -> "DenoisingView":
        return cls(pieces=[None] * length, revealed_at=[None] * length, confidence=[float("nan")] * length)

    def update(self, tokens: Sequence[str], transferred: torch.Tensor, confidence: torch.Tensor, step: int) -> None:
        """Record one sampler step: `tokens` are the texts of the committed positions in `transferred` order."""
        self.step = step
        positions = transferred.nonzero().flatten().tolist()
        for pos, text in zip(positions, tokens):
            self.pieces[pos] = text
            self.revealed_at[pos] = step
            self.confidence[pos] = float(confidence[pos])

    def masked(self) -> int:
        return sum(p is None for p in self.pieces)


def render_html(view: DenoisingView) -> str:
    """HTML of the generated region (mask boxes, this step's tokens by confidence, earlier tokens plain)."""
    spans = []
    for text, when, conf in zip(view.pieces, view.revealed_at, view.confidence):
        if text is None:
            spans.append(
                f'<span class="mask" style="background:{MASK_COLOUR};color:{MASK_COLOUR};border-radius:3px;'
                f'margin:1px;display:inline-block;min-width:0.9em">&#9632;</span>'
            )
            continue
        shown = html.escape(text).replace("\n", "&#8629;<br>")
        if when == view.step:
            colour = confidence_colour(conf)
            spans.append(
                f'<span class="new" title="p={conf:.2f}" style="background:{colour};color:white;border-radius:3px;'
                f'margin:1px;white-space:pre-wrap">{shown}</span>'
            )
        else:
            spans.append(f'<span class="old" style="color:{EARLIER_COLOUR};white-space:pre-wrap">{shown}</span>')
    legend = (
        f'<div class="legend" style="font-size:0.8em;margin-top:6px">step {view.step} &middot; '
        f"{view.masked()} masked &middot; new tokens by confidence: "
        + " ".join(
            f'<span style="background:{c};color:white;padding:0 4px;border-radius:3px">'
            f'{"&lt; " + str(e) if e <= 1 else "&ge; 0.7"}</span>'
            for e, c in CONFIDENCE_BANDS
        )
        + "</div>"
    )
    return f'<div class="denoising" style="font-family:monospace;line-height:1.8">{"".join(spans)}</div>{legend}'
