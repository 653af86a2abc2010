"""Decoding images the way people's folders hold them: any mode, EXIF rotation, broken files named.

Every way a file can fail becomes a RecordError with a reason code (missing_image, unreadable_image,
empty_file, not_an_image, corrupt_image, decompression_bomb), so a stage counts it and goes on.
"""

from __future__ import annotations

import warnings
from pathlib import Path

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from unimo_pipe.pipeline.errors import RecordError

IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".bmp", ".gif", ".webp", ".tif", ".tiff"}
DEFAULT_MAX_PIXELS = 89_478_485  # PIL's own decompression-bomb limit
# PIL holds 16-bit grayscale as I;16* or, from some decoders, as 32-bit I with values in 0..65535
_SIXTEEN_BIT_GRAY_MODES = ("I;16", "I;16L", "I;16B", "I;16N", "I")


def load_rgb(path: Path, *, max_pixels: int = DEFAULT_MAX_PIXELS) -> Image.Image:
    """An RGB image, EXIF orientation applied, transparent areas composited on white."""
    try:
        if path.stat().st_size == 0:
            raise RecordError("empty_file", str(path))
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            image = Image.open(path)
            if image.width * image.height > max_pixels:
                raise RecordError("decompression_bomb", f"{image.width}x{image.height} pixels > {max_pixels}")
            image.load()
            image = ImageOps.exif_transpose(image)
    except RecordError:
        raise
    except UnidentifiedImageError:
        raise RecordError("not_an_image", str(path)) from None
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as exc:
        raise RecordError("decompression_bomb", str(exc)) from None
    except FileNotFoundError:
        raise RecordError("missing_image", f"{path} does not exist") from None
    except PermissionError as exc:
        raise RecordError("unreadable_image", f"{path}: {exc.strerror}: check the file's permissions") from None
    except (OSError, SyntaxError, ValueError) as exc:
        raise RecordError("corrupt_image", f"{path}: {exc}") from None
    return _to_rgb(image)


def _to_rgb(image: Image.Image) -> Image.Image:
    if image.mode in _SIXTEEN_BIT_GRAY_MODES:
        image = _sixteen_bit_gray_to_8_bits(image)
    has_alpha = image.mode in ("RGBA", "LA", "PA") or (image.mode == "P" and "transparency" in image.info)
    if has_alpha:
        rgba = image.convert("RGBA")
        background = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        return Image.alpha_composite(background, rgba).convert("RGB")
    return image.convert("RGB")


def _sixteen_bit_gray_to_8_bits(image: Image.Image) -> Image.Image:
    """0..65535 scaled to 0..255 (rounded v / 257). PIL's convert clips at 255 instead, which turns
    nearly every pixel of a 16-bit image white."""
    values = np.asarray(image).astype(np.int64).clip(0, 65535)
    return Image.fromarray(((values + 128) // 257).astype(np.uint8))


def shortest_edge_size(height: int, width: int, short: int, max_size: int) -> tuple[int, int]:
    """detectron2's ResizeShortestEdge target (new_h, new_w), with its int(x + 0.5) rounding, each side at
    least 1 pixel (a 1x3000 image would round its short side to 0, which no resize accepts)."""
    scale = short / min(height, width)
    new_h, new_w = (short, scale * width) if height < width else (scale * height, short)
    if max(new_h, new_w) > max_size:
        shrink = max_size / max(new_h, new_w)
        new_h, new_w = new_h * shrink, new_w * shrink
    return max(1, int(new_h + 0.5)), max(1, int(new_w + 0.5))


def list_images(root: Path) -> list[Path]:
    """Image files under `root`, recursively, in a stable order (hidden files and folders skipped)."""
    found = []
    for path in root.rglob("*"):
        relative = path.relative_to(root)
        if any(part.startswith(".") for part in relative.parts):
            continue
        if path.suffix.lower() in IMAGE_SUFFIXES and path.is_file():
            found.append(path)
    return sorted(found, key=lambda p: p.relative_to(root).as_posix())
