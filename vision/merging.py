"""From per-crop features to the rows spliced into the sequence, and the splicing itself.

Merging (`merge_image_features`, the official `prepare_inputs_labels_for_multimodal`), per image with
T x T features per crop (T = 27 for SigLIP at 384 / 14) and `mm_patch_merge_type`:

- flat: every crop's T^2 rows, crop after crop.
- spatial_unpad, one crop ("pad" / "square"): the T^2 rows, then one `image_newline` row.
- spatial_unpad, anyres (crop 0 = base, then an n_h x n_w grid of tiles): the base crop's T^2 rows,
  then the tiles assembled into one (n_h T) x (n_w T) feature map, unpadded to the image's aspect
  ratio (`unpad_image`); for anyres_max_N downscaled bilinearly to (floor(h / r), floor(w / r)) when
  r = sqrt(h w / (N T^2)) > 1.1 (`anyres_max_downscale`); then one `image_newline` after every row:
  rows = T^2 + h' (w' + 1).
- spatial (no unpad): base rows, then every tile's T^2 rows.

Splicing (`splice_image_features`): each image placeholder id (-200) of the prompt is replaced by the
rows of the next image; text positions get their token embeddings; labels of image rows are -100.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable, Optional, Sequence

import torch
import torch.nn.functional as F

from .image_processing import anyres_grid_shape

IGNORE_INDEX = -100


# ------------------------------------------------------------------------------------------ shapes
def unpadded_shape(height: int, width: int, image_size: tuple[int, int]) -> tuple[int, int, int, int]:
    """Rows and columns of a (height, width) feature map that hold the image of (w0, h0) `image_size`
    after anyres' centred padding: returns (top, bottom, left, right) slice bounds.

    If w0 / h0 > width / height the padding was added above and below: new_h = int(h0 * width / w0),
    pad = (height - new_h) // 2, rows pad .. height - pad; otherwise the same for the columns.
    """
    w0, h0 = image_size
    if w0 / h0 > width / height:
        new_h = int(h0 * (width / w0))
        pad = (height - new_h) // 2
        return pad, height - pad, 0, width
    new_w = int(w0 * (height / h0))
    pad = (width - new_w) // 2
    return 0, height, pad, width - pad


def unpad_image(features: torch.Tensor, image_size: tuple[int, int]) -> torch.Tensor:
    """Remove the padding rows or columns of a (C, H, W) feature map (see `unpadded_shape`)."""
    top, bottom, left, right = unpadded_shape(features.shape[1], features.shape[2], image_size)
    return features[:, top:bottom, left:right]


def anyres_max_scale(height: int, width: int, max_crops: int, tokens_per_side: int) -> float:
    """r = sqrt(h w / (N T^2)): how much larger the unpadded feature map is than N crops."""
    return math.sqrt(height * width / (max_crops * tokens_per_side**2))


def anyres_max_downscale(features: torch.Tensor, max_crops: int, tokens_per_side: int) -> torch.Tensor:
    """anyres_max_N: bilinear resize of a (C, h, w) map to (floor(h / r), floor(w / r)) when r > 1.1."""
    _, h, w = features.shape
    r = anyres_max_scale(h, w, max_crops, tokens_per_side)
    if r > 1.1:
        features = F.interpolate(features[None], [int(h // r), int(w // r)], mode="bilinear")[0]
    return features


def num_image_tokens(image_size: tuple[int, int], config) -> int:
    """Rows an image of (width, height) `image_size` occupies in the spliced sequence (no tower run)."""
    T = config.tokens_per_side
    mode, merge = config.image_aspect_ratio, config.mm_patch_merge_type
    if mode in ("pad", "square"):
        crops = 1
        grid = None
    else:
        grid = anyres_grid_shape(image_size, config.image_grid_pinpoints, config.vision_image_size)
        crops = 1 + grid[0] * grid[1]
    if merge == "flat":
        return crops * T * T
    if grid is None:
        return T * T + (1 if "unpad" in merge else 0)
    n_w, n_h = grid
    if "unpad" not in merge:
        return crops * T * T
    top, bottom, left, right = unpadded_shape(n_h * T, n_w * T, image_size)
    h, w = bottom - top, right - left
    if config.anyres_max_crops is not None:
        r = anyres_max_scale(h, w, config.anyres_max_crops, T)
        if r > 1.1:
            h, w = int(h // r), int(w // r)
    return T * T + h * (w + 1)


# ------------------------------------------------------------------------------------------ merging
def merge_image_features(
    features: Sequence[torch.Tensor],
    image_sizes: Sequence[tuple[int, int]],
    config,
    image_newline: Optional[torch.Tensor],
) -> list[torch.Tensor]:
    """Per image (crops, T^2, D) projected features -> the (n_rows, D) rows it contributes."""
    merge = config.mm_patch_merge_type
    T = config.tokens_per_side
    out = []
    for idx, feat in enumerate(features):
        if feat.dim() != 3 or feat.shape[1] != T * T:
            raise ValueError(f"image {idx}: features must be (crops, {T * T}, D), got {tuple(feat.shape)}")
        if merge == "flat":
            out.append(feat.flatten(0, 1))
            continue
        if feat.shape[0] == 1:
            rows = feat[0]
            if "unpad" in merge:
                rows = torch.cat([rows, image_newline[None].to(rows.dtype)], dim=0)
            out.append(rows)
            continue
        base, tiles = feat[0], feat[1:]
        n_w, n_h = anyres_grid_shape(image_sizes[idx], config.image_grid_pinpoints, config.vision_image_size)
        if tiles.shape[0] != n_w * n_h:
            raise ValueError(
                f"image {idx}: {tiles.shape[0]} tiles but an image of {image_sizes[idx][0]}x{image_sizes[idx][1]} "
                f"takes a {n_w}x{n_h} grid; are image_sizes (width, height) of the original images?"
            )
        grid = tiles.view(n_h, n_w, T, T, -1)
        if "unpad" in merge:
            fmap = grid.permute(4, 0, 2, 1, 3).flatten(1, 2).flatten(2, 3)  # (D, n_h T, n_w T)
            fmap = unpad_image(fmap, image_sizes[idx])
            if config.anyres_max_crops is not None:
                fmap = anyres_max_downscale(fmap, config.anyres_max_crops, T)
            newline = image_newline[:, None, None].to(fmap.dtype).expand(*fmap.shape[:-1], 1)
            fmap = torch.cat([fmap, newline], dim=-1)
            rows = fmap.flatten(1, 2).transpose(0, 1)
        else:
            rows = grid.permute(0, 2, 1, 3, 4).flatten(0, 3)
        out.append(torch.cat([base, rows], dim=0))
    return out


# ------------------------------------------------------------------------------------------ splicing
@dataclass
class SplicedBatch:
    """The model input after splicing: embeddings, attention mask, labels, and where each image went.

    image_spans[b] lists (start, end) of each image's rows in row b (after padding).
    """

    inputs_embeds: torch.Tensor
    attention_mask: torch.Tensor
    labels: Optional[torch.Tensor]
    image_spans: list[list[tuple[int, int]]]
    token_ids: torch.Tensor  # (B, L) ids at text positions, the image id at image rows, pad at padding


def count_placeholders(input_ids: torch.Tensor, image_token_index: int, attention_mask: Optional[torch.Tensor] = None) -> int:
    ids = input_ids if attention_mask is None else input_ids[attention_mask.bool()]
    return int((ids == image_token_index).sum())


def splice_image_features(
    input_ids: torch.Tensor,
    image_features: Sequence[torch.Tensor],
    embed_tokens: Callable[[torch.Tensor], torch.Tensor],
    *,
    image_token_index: int = -200,
    pad_token_id: int,
    attention_mask: Optional[torch.Tensor] = None,
    labels: Optional[torch.Tensor] = None,
    padding_side: str = "left",
    max_length: Optional[int] = None,
    limit_reason: str = "the model's context",
) -> SplicedBatch:
    """Replace each `image_token_index` of `input_ids` (B, L) by the rows of the next image.

    Padding (attention_mask == 0) is dropped first, then the rows are padded again to the longest
    spliced row on `padding_side`, with the embedding of `pad_token_id`. Raises ValueError when the
    number of placeholders differs from the number of images, or when a spliced row is longer than
    `max_length` (the model's context).
    """
    if input_ids.dim() == 1:
        input_ids = input_ids[None]
        attention_mask = None if attention_mask is None else attention_mask.reshape(1, -1)
        labels = None if labels is None else labels.reshape(1, -1)
    if padding_side not in ("left", "right"):
        raise ValueError(f"padding_side must be 'left' or 'right', got {padding_side!r}")
    B = input_ids.shape[0]
    n_placeholders = count_placeholders(input_ids, image_token_index, attention_mask)
    if n_placeholders != len(image_features):
        raise ValueError(
            f"the prompt has {n_placeholders} image placeholder(s) (<image>, id {image_token_index}) but "
            f"{len(image_features)} image(s) were given; pass one image per placeholder"
        )
    keep = torch.ones_like(input_ids, dtype=torch.bool) if attention_mask is None else attention_mask.bool()
    rows_embeds, rows_labels, rows_ids, spans = [], [], [], []
    image_iter = iter(image_features)
    for b in range(B):
        ids = input_ids[b][keep[b]]
        lab = labels[b][keep[b]] if labels is not None else None
        where = torch.nonzero(ids == image_token_index).flatten().tolist()
        bounds = [-1] + where + [ids.shape[0]]
        text_ids = torch.cat([ids[bounds[i] + 1: bounds[i + 1]] for i in range(len(bounds) - 1)])
        text_emb = embed_tokens(text_ids)
        pieces_e, pieces_l, pieces_i, row_spans = [], [], [], []
        cursor, offset = 0, 0
        for i in range(len(bounds) - 1):
            n = bounds[i + 1] - bounds[i] - 1
            pieces_e.append(text_emb[cursor: cursor + n])
            pieces_i.append(ids[bounds[i] + 1: bounds[i + 1]])
            if lab is not None:
                pieces_l.append(lab[bounds[i] + 1: bounds[i + 1]])
            cursor += n
            offset += n
            if i < len(where):
                feat = next(image_iter).to(device=text_emb.device, dtype=text_emb.dtype)
                pieces_e.append(feat)
                pieces_i.append(torch.full((feat.shape[0],), image_token_index, dtype=ids.dtype, device=ids.device))
                if lab is not None:
                    pieces_l.append(torch.full((feat.shape[0],), IGNORE_INDEX, dtype=lab.dtype, device=lab.device))
                row_spans.append((offset, offset + feat.shape[0]))
                offset += feat.shape[0]
        rows_embeds.append(torch.cat(pieces_e))
        rows_ids.append(torch.cat(pieces_i))
        rows_labels.append(torch.cat(pieces_l) if lab is not None else None)
        spans.append(row_spans)
        if max_length is not None and offset > max_length:
            n_img = sum(e - s for s, e in row_spans)
            raise ValueError(
                f"row {b}: the prompt with its images is {offset} positions long ({n_img} of them image rows), "
                f"more than the {max_length} positions of {limit_reason}; use a smaller image, fewer images or "
                f"another image_aspect_ratio (e.g. 'pad')"
            )
    width = max(e.shape[0] for e in rows_embeds)
    D = rows_embeds[0].shape[-1]
    device, dtype = rows_embeds[0].device, rows_embeds[0].dtype
    pad_vec = embed_tokens(torch.tensor([pad_token_id], device=input_ids.device))[0].to(dtype)
    embeds = pad_vec.expand(B, width, D).clone()
    mask = torch.zeros(B, width, dtype=torch.long, device=device)
    token_ids = torch.full((B, width), pad_token_id, dtype=input_ids.dtype, device=device)
    out_labels = torch.full((B, width), IGNORE_INDEX, dtype=labels.dtype, device=device) if labels is not None else None
    for b in range(B):
        n = rows_embeds[b].shape[0]
        start = width - n if padding_side == "left" else 0
        embeds[b, start: start + n] = rows_embeds[b]
        mask[b, start: start + n] = 1
        token_ids[b, start: start + n] = rows_ids[b]
        if out_labels is not None:
            out_labels[b, start: start + n] = rows_labels[b]
        spans[b] = [(s + start, e + start) for s, e in spans[b]]
    return SplicedBatch(inputs_embeds=embeds, attention_mask=mask, labels=out_labels, image_spans=spans, token_ids=token_ids)


__all__ = [
    "IGNORE_INDEX",
    "SplicedBatch",
    "unpadded_shape",
    "unpad_image",
    "anyres_max_scale",
    "anyres_max_downscale",
    "num_image_tokens",
    "merge_image_features",
    "count_placeholders",
    "splice_image_features",
]
