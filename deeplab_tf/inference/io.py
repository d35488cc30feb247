"""Reading user images robustly, and expanding the inputs of a batch command.

Images are decoded by the package's one reader (:func:`deeplab_tf.data.readers.decode_image`).
Every failure becomes an :class:`ImageReadError` with a message naming the file, what was
found and what was expected, so that batch commands can report it and carry on.
"""

from __future__ import annotations

import glob
import os

from deeplab_tf.data.readers import (  # noqa: F401  (this module's public names)
    DEFAULT_MAX_PIXELS,
    IMAGE_EXTENSIONS,
    ImageReadError,
    decode_image,
)


def read_image(path, max_pixels: int = DEFAULT_MAX_PIXELS):
    """Decodes a user's image into RGB uint8: :func:`deeplab_tf.data.readers.decode_image`
    with the EXIF orientation applied and at most ``max_pixels`` pixels.

    Returns:
        ``(image, notes)``: an ``(H, W, 3)`` uint8 array and a list of strings.

    Raises:
        ImageReadError: unreadable path, not an image, empty or larger than ``max_pixels``.
    """
    return decode_image(path, max_pixels)


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
