"""Reading user images robustly and writing outputs atomically.

Every failure becomes an :class:`ImageReadError` with a message naming the file, what was
found and what was expected, so that batch commands can report it and carry on.
"""

from __future__ import annotations

import glob
import os

import numpy as np

from deeplab_tf.atomic import atomic_write  # noqa: F401  (re-exported for existing callers)

#: Default ceiling on decoded pixels (width x height); 8K UHD is 33 MP.
DEFAULT_MAX_PIXELS = 40_000_000

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".gif", ".tif", ".tiff", ".webp", ".ppm")


class ImageReadError(ValueError):
    """A user image that cannot be used, with a message saying why."""


def read_image(path, max_pixels: int = DEFAULT_MAX_PIXELS):
    """Decodes an image file into RGB uint8, converting what can be converted.

    Greyscale, palette, CMYK, 16-bit and alpha images are converted to RGB (alpha is dropped)
    and EXIF orientation is applied; each conversion is reported in ``notes``.

    Args:
        path: file path.
        max_pixels: largest accepted ``width * height``.

    Returns:
        ``(image, notes)``: an ``(H, W, 3)`` uint8 array and a list of strings.

    Raises:
        ImageReadError: unreadable path, not an image, empty or larger than ``max_pixels``.
    """
    from PIL import Image, ImageOps, UnidentifiedImageError

    path = os.fspath(path)
    if not os.path.exists(path):
        raise ImageReadError(f"{path}: no such file")
    if os.path.isdir(path):
        raise ImageReadError(f"{path}: is a directory, expected an image file")
    if not os.access(path, os.R_OK):
        raise ImageReadError(f"{path}: permission denied")
    if os.path.getsize(path) == 0:
        raise ImageReadError(f"{path}: file is empty (0 bytes)")
    notes = []
    try:
        with Image.open(path) as img:
            width, height = img.size
            if width == 0 or height == 0:
                raise ImageReadError(f"{path}: image is empty ({width}x{height} pixels)")
            if width * height > max_pixels:
                raise ImageReadError(
                    f"{path}: image is {width}x{height} = {width * height:,} pixels, above the "
                    f"limit of {max_pixels:,} (raise it with --max-pixels, or downscale the image)"
                )
            if getattr(img, "n_frames", 1) > 1:
                notes.append(f"{img.n_frames} frames, used the first")
            img.load()
            transposed = ImageOps.exif_transpose(img)
            if transposed is not None and transposed.size != img.size:
                notes.append("rotated by its EXIF orientation")
            img = transposed if transposed is not None else img
            mode = img.mode
            if mode != "RGB":
                if mode in ("I;16", "I;16B", "I;16L", "I"):
                    a = np.asarray(img, dtype=np.float64)
                    top = a.max() if a.max() > 255 else 255.0
                    img = Image.fromarray((a / top * 255.0).round().astype(np.uint8))
                    notes.append(f"{mode} greyscale scaled to 8 bits and converted to RGB")
                elif mode == "F":
                    raise ImageReadError(f"{path}: floating-point images are not supported")
                elif mode in ("RGBA", "LA", "PA") or (mode == "P" and "transparency" in img.info):
                    notes.append(f"{mode} image: alpha channel dropped, converted to RGB")
                else:
                    notes.append(f"{mode} image converted to RGB")
                img = img.convert("RGB")
            image = np.asarray(img, dtype=np.uint8)
    except ImageReadError:
        raise
    except UnidentifiedImageError:
        size = _png_header_size(path)
        if size is not None and 0 in size:
            raise ImageReadError(f"{path}: image is empty ({size[0]}x{size[1]} pixels)") from None
        raise ImageReadError(f"{path}: not an image file Pillow can read") from None
    except Image.DecompressionBombError as err:
        raise ImageReadError(f"{path}: refused as a decompression bomb ({err})") from None
    except (OSError, SyntaxError, ValueError) as err:
        raise ImageReadError(f"{path}: cannot decode image ({err})") from None
    if image.ndim != 3 or image.shape[2] != 3:
        raise ImageReadError(f"{path}: decoded to shape {image.shape}, expected (H, W, 3)")
    return image, notes


def _png_header_size(path):
    """(width, height) from a PNG's IHDR chunk (Pillow refuses 0-sized PNGs), else None."""
    with open(path, "rb") as f:
        head = f.read(24)
    if len(head) == 24 and head[:8] == b"\x89PNG\r\n\x1a\n" and head[12:16] == b"IHDR":
        return int.from_bytes(head[16:20], "big"), int.from_bytes(head[20:24], "big")
    return None


def expand_inputs(patterns) -> tuple[list[str], list[str]]:
    """Expands files, directories (their image files, sorted) and glob patterns.

    Args:
        patterns: iterable of paths or glob patterns.

    Returns:
        ``(paths, errors)``: de-duplicated paths in order, and one message per pattern that
        matched nothing.
    """
    paths, errors, seen = [], [], set()

    def add(p):
        key = os.path.abspath(p)
        if key not in seen:
            seen.add(key)
            paths.append(p)

    for pattern in patterns:
        pattern = os.fspath(pattern)
        if os.path.isdir(pattern):
            found = sorted(
                os.path.join(pattern, f)
                for f in os.listdir(pattern)
                if f.lower().endswith(IMAGE_EXTENSIONS) and os.path.isfile(os.path.join(pattern, f))
            )
            if not found:
                errors.append(
                    f"{pattern}: directory holds no image files ({', '.join(IMAGE_EXTENSIONS)})"
                )
            for p in found:
                add(p)
        elif os.path.exists(pattern):
            add(pattern)
        elif glob.has_magic(pattern):
            found = sorted(p for p in glob.glob(pattern, recursive=True) if os.path.isfile(p))
            if not found:
                errors.append(f"{pattern}: pattern matched no files")
            for p in found:
                add(p)
        else:
            errors.append(f"{pattern}: no such file or directory")
    return paths, errors
