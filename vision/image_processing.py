"""Image loading and LLaDA-V preprocessing: SigLIP normalisation, "pad" squares, "anyres" tiles.

Everything the official LLaDA-V (LLaVA-NeXT) `process_images` does, with PIL resampling so that pixel
values match the official ones exactly:

- SigLIP preprocessing of one crop (`siglip_preprocess`): RGB, bicubic resize to image_size x
  image_size, x / 255, (x - mean) / std with mean = std = 0.5.
- "pad": paste the image centred on a square of the mean colour (`expand2square`), then one crop.
- "anyres" / "anyres_max_N": pick the grid resolution (`select_best_resolution`), resize keeping the
  aspect ratio and pad centred to it (`resize_and_pad_image`), cut image_size tiles row by row
  (`divide_to_patches`); crop 0 is the whole image squashed to image_size x image_size.
- "square": one crop, plain resize.

`num_image_tokens` gives the number of rows an image occupies in the spliced sequence without
running the tower (the grid arithmetic of `vision.merging`), used to check a prompt fits the context.
"""

from __future__ import annotations

import io
import math
import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional, Sequence, Union

import numpy as np
import torch

ImageInput = Union[str, os.PathLike, bytes, "PIL.Image.Image"]  # noqa: F821


class ImageError(ValueError):
    """An image that cannot be used: unreadable, corrupt, of an unsupported format, or too large."""


@dataclass
class ImageProcessingConfig:
    """How images become pixel values (the official LLaDA-V / SigLIP settings by default).

    image_size: side of one crop (384 for SigLIP so400m/14 @ 384).
    image_mean / image_std: per-channel normalisation (0.5 for SigLIP).
    aspect_ratio: "pad", "square", "anyres" or "anyres_max_N".
    grid_pinpoints: (width, height) resolutions for anyres, or the "(1x1),...,(6x6)" range string.
    max_pixels: refuse decoded images larger than this (a decompression-bomb guard).
    """

    image_size: int = 384
    image_mean: tuple[float, float, float] = (0.5, 0.5, 0.5)
    image_std: tuple[float, float, float] = (0.5, 0.5, 0.5)
    aspect_ratio: str = "anyres_max_4"
    grid_pinpoints: Any = "(1x1),...,(6x6)"
    max_pixels: int = 64_000_000
    resample: int = 3  # PIL.Image.BICUBIC

    @classmethod
    def from_model_config(cls, config: Any, **overrides: Any) -> "ImageProcessingConfig":
        """The processing a `LlavaLLaDAConfig` implies (crop size from its vision tower)."""
        kwargs = dict(
            image_size=config.vision_image_size,
            aspect_ratio=config.image_aspect_ratio,
            grid_pinpoints=config.image_grid_pinpoints,
        )
        vc = getattr(config, "vision_config", None)
        if getattr(config, "vision_tower_type", "siglip") == "open_clip":
            kwargs["image_mean"] = (0.48145466, 0.4578275, 0.40821073)
            kwargs["image_std"] = (0.26862954, 0.26130258, 0.27577711)
        elif vc is not None and getattr(vc, "image_mean", None):
            kwargs["image_mean"] = tuple(vc.image_mean)
        kwargs.update(overrides)
        return cls(**kwargs)


# --------------------------------------------------------------------------------------------- loading
def load_image(image: ImageInput, *, max_pixels: int = 64_000_000) -> "PIL.Image.Image":  # noqa: F821
    """Open an image (path, bytes or PIL image) as RGB, with errors that name the file.

    Raises ImageError for a missing file, a file that is not an image PIL can decode (unsupported
    format), a truncated or corrupt file, or one with more than `max_pixels` pixels.
    """
    from PIL import Image, UnidentifiedImageError

    name = "<image>"
    if isinstance(image, Image.Image):
        img = image
    else:
        if isinstance(image, (bytes, bytearray)):
            name, source = "<bytes>", io.BytesIO(image)
        elif isinstance(image, (str, os.PathLike)):
            name = str(image)
            if not Path(name).is_file():
                raise ImageError(f"image file {name!r} does not exist")
            source = name
        else:
            raise ImageError(f"unsupported image input of type {type(image).__name__}: pass a path, bytes or a PIL image")
        try:
            img = Image.open(source)
        except UnidentifiedImageError as err:
            raise ImageError(f"{name}: not an image file PIL can read (unsupported or unknown format)") from err
        except OSError as err:
            raise ImageError(f"{name}: cannot open image ({err})") from err
    width, height = img.size
    if width < 1 or height < 1:
        raise ImageError(f"{name}: empty image ({width}x{height})")
    if width * height > max_pixels:
        raise ImageError(f"{name}: image of {width}x{height} pixels is larger than max_pixels={max_pixels}")
    try:
        img.load()  # decode now: a truncated or corrupt file fails here, not deep inside the model
        return img.convert("RGB")
    except (OSError, SyntaxError, ValueError) as err:
        raise ImageError(f"{name}: corrupt or truncated image data ({err})") from err


def image_size(image: ImageInput) -> tuple[int, int]:
    """(width, height) of an image without decoding its pixels (header only for files)."""
    from PIL import Image, UnidentifiedImageError

    if isinstance(image, Image.Image):
        return image.size
    if isinstance(image, (str, os.PathLike)) and Path(image).is_file():
        try:
            with Image.open(image) as img:
                return img.size
        except (UnidentifiedImageError, OSError):
            pass
    return load_image(image).size  # raises the ImageError that names the problem


# ------------------------------------------------------------------------------------ one crop
def siglip_preprocess(image: "PIL.Image.Image", cfg: ImageProcessingConfig) -> torch.Tensor:  # noqa: F821
    """One crop: bicubic resize to (S, S), then x / 255, then (x - mean) / std; returns (3, S, S) float32."""
    img = image.convert("RGB")
    if img.size != (cfg.image_size, cfg.image_size):
        img = img.resize((cfg.image_size, cfg.image_size), resample=cfg.resample)
    # float64 rescale then float32, as transformers' SiglipImageProcessor: bit-identical pixel values
    x = (np.asarray(img, dtype=np.float64) * (1.0 / 255.0)).astype(np.float32)
    mean = np.asarray(cfg.image_mean, dtype=np.float32)
    std = np.asarray(cfg.image_std, dtype=np.float32)
    x = (x - mean) / std
    return torch.from_numpy(np.ascontiguousarray(x.transpose(2, 0, 1)))


def expand2square(image: "PIL.Image.Image", background: tuple[int, int, int]) -> "PIL.Image.Image":  # noqa: F821
    """Paste the image centred on a square of side max(w, h) filled with `background`
    (offsets (side - w) // 2, (side - h) // 2)."""
    from PIL import Image

    w, h = image.size
    if w == h:
        return image
    side = max(w, h)
    out = Image.new(image.mode, (side, side), background)
    out.paste(image, ((side - w) // 2, (side - h) // 2))
    return out


# ------------------------------------------------------------------------------------ anyres
def parse_grid_pinpoints(grid_pinpoints: Any, crop_size: int) -> list[tuple[int, int]]:
    """The anyres candidate resolutions as (width, height) pairs.

    Accepts a list of [w, h] pairs, its string form, or LLaVA-OneVision's range string
    "(1x1),...,(6x6)": every (i, j) grid with i, j between the first and last pair, times `crop_size`.
    """
    if isinstance(grid_pinpoints, str) and "x" in grid_pinpoints:
        matches = re.findall(r"\((\d+)x(\d+)\)", grid_pinpoints)
        if not matches:
            raise ValueError(f"image_grid_pinpoints {grid_pinpoints!r}: expected '(AxB),...,(CxD)'")
        (a0, b0), (a1, b1) = tuple(map(int, matches[0])), tuple(map(int, matches[-1]))
        return [(i * crop_size, j * crop_size) for i in range(a0, a1 + 1) for j in range(b0, b1 + 1)]
    if isinstance(grid_pinpoints, str):
        import ast

        grid_pinpoints = ast.literal_eval(grid_pinpoints)
    try:
        pairs = [(int(w), int(h)) for w, h in grid_pinpoints]
    except (TypeError, ValueError) as err:
        raise ValueError(f"image_grid_pinpoints {grid_pinpoints!r}: expected [[width, height], ...]") from err
    if not pairs:
        raise ValueError("image_grid_pinpoints is empty")
    for w, h in pairs:
        if w % crop_size or h % crop_size:
            raise ValueError(f"image_grid_pinpoints: {w}x{h} is not a multiple of the crop size {crop_size}")
    return pairs


def select_best_resolution(image_size: tuple[int, int], resolutions: Sequence[tuple[int, int]]) -> tuple[int, int]:
    """The anyres grid resolution for an image of (width, height) `image_size`.

    For each candidate (W, H): scale s = min(W / w, H / h), effective = min(int(w s) * int(h s), w h),
    wasted = W H - effective. The best keeps the largest effective resolution, ties broken by the least
    waste (first candidate wins exact ties).
    """
    w0, h0 = image_size
    best, best_eff, best_waste = None, 0, float("inf")
    for width, height in resolutions:
        scale = min(width / w0, height / h0)
        eff = min(int(w0 * scale) * int(h0 * scale), w0 * h0)
        waste = width * height - eff
        if eff > best_eff or (eff == best_eff and waste < best_waste):
            best, best_eff, best_waste = (width, height), eff, waste
    return best


def resize_and_pad_image(image: "PIL.Image.Image", target: tuple[int, int]) -> "PIL.Image.Image":  # noqa: F821
    """Resize keeping the aspect ratio so the image fills `target` (width, height) along one side
    (the other side min(ceil(side * scale), target)), then paste it centred on black."""
    from PIL import Image

    w0, h0 = image.size
    tw, th = target
    sw, sh = tw / w0, th / h0
    if sw < sh:
        nw, nh = tw, min(math.ceil(h0 * sw), th)
    else:
        nw, nh = min(math.ceil(w0 * sh), tw), th
    resized = image.resize((nw, nh))  # PIL's default (bicubic) resampling, as the official code
    out = Image.new("RGB", (tw, th), (0, 0, 0))
    out.paste(resized, ((tw - nw) // 2, (th - nh) // 2))
    return out


def divide_to_patches(image: "PIL.Image.Image", size: int) -> list:  # noqa: F821
    """Cut `size` x `size` tiles row by row (left to right, then top to bottom)."""
    w, h = image.size
    return [image.crop((x, y, x + size, y + size)) for y in range(0, h, size) for x in range(0, w, size)]


def anyres_grid_shape(image_size: tuple[int, int], grid_pinpoints: Any, crop_size: int) -> tuple[int, int]:
    """(tiles across, tiles down) of the anyres grid chosen for an image of (width, height)."""
    width, height = select_best_resolution(image_size, parse_grid_pinpoints(grid_pinpoints, crop_size))
    return width // crop_size, height // crop_size


# ------------------------------------------------------------------------------------ whole images
def process_image(image: ImageInput, cfg: ImageProcessingConfig) -> tuple[torch.Tensor, tuple[int, int]]:
    """One image -> (pixel values (crops, 3, S, S), original (width, height))."""
    img = load_image(image, max_pixels=cfg.max_pixels)
    size = img.size
    mode = cfg.aspect_ratio
    if mode == "pad":
        background = tuple(int(m * 255) for m in cfg.image_mean)
        crops = [expand2square(img, background)]
    elif mode == "square":
        crops = [img]
    elif mode == "anyres" or mode.startswith("anyres_max"):
        best = select_best_resolution(size, parse_grid_pinpoints(cfg.grid_pinpoints, cfg.image_size))
        padded = resize_and_pad_image(img, best)
        whole = img.resize((cfg.image_size, cfg.image_size))
        crops = [whole] + divide_to_patches(padded, cfg.image_size)
    else:
        raise ValueError(f"image aspect ratio mode {mode!r} is not supported (pad, square, anyres, anyres_max_N)")
    return torch.stack([siglip_preprocess(c, cfg) for c in crops]), size


def process_images(
    images: Sequence[ImageInput], cfg: ImageProcessingConfig
) -> tuple[list[torch.Tensor], list[tuple[int, int]]]:
    """Several images -> (list of (crops, 3, S, S) tensors, list of (width, height))."""
    pixel_values, sizes = [], []
    for image in images:
        pv, size = process_image(image, cfg)
        pixel_values.append(pv)
        sizes.append(size)
    return pixel_values, sizes


__all__ = [
    "ImageError",
    "ImageProcessingConfig",
    "load_image",
    "image_size",
    "siglip_preprocess",
    "expand2square",
    "parse_grid_pinpoints",
    "select_best_resolution",
    "resize_and_pad_image",
    "divide_to_patches",
    "anyres_grid_shape",
    "process_image",
    "process_images",
]
