"""File readers shared by every dataset: images, index masks, SBD/Context/Pascal-Part ``.mat``.

Everything here is plain NumPy + Pillow + SciPy (no TensorFlow), so the same code decodes
examples inside ``tf.data`` (through ``tf.numpy_function``), in the TFDS builders and in
``deeplab-tf data check``. Every failure raises :class:`DatasetError` naming the file.

Masks are read as class indices, never as colours: a palette ("P" mode) PNG gives its indices,
a grey ("L") PNG its values. OpenCV is not used because ``cv2.imread`` expands palette PNGs to
BGR colours, which silently turns VOC's class 1 into pixel value (0, 0, 128).
"""

from __future__ import annotations

import dataclasses
import os

import numpy as np

from deeplab_tf.data.palettes import IGNORE_LABEL, PERSON_PART_MERGE

#: Label file formats :func:`read_label` understands.
LABEL_FORMATS = ("png", "npy", "sbd_mat", "context_mat", "pascal_part_mat", "cocostuff_mat")

#: File extensions read as images: image folders of datasets, ``predict`` on a directory.
IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".gif", ".tif", ".tiff", ".webp", ".ppm")

#: Image files a dataset folder may hold: the RGB formats above (``.tif``/``.tiff`` with any
#: number of channels, read with tifffile) and NumPy ``.npy`` arrays; see :func:`read_image`.
DATASET_IMAGE_EXTENSIONS = IMAGE_EXTENSIONS + (".npy",)

#: Files :func:`read_image` reads as arrays (any channel count, the stored dtype).
ARRAY_IMAGE_EXTENSIONS = (".npy", ".tif", ".tiff")

#: Stored dtypes of array images. uint8 images stay uint8 (values 0..255, like RGB files); the
#: others become float32 with their values kept (the model's ``preprocessing="normalize"``
#: with per-channel ``channel_mean``/``channel_std`` maps them to the network's range).
ARRAY_IMAGE_DTYPES = ("uint8", "int8", "uint16", "int16", "float16", "float32", "float64")

#: Mask files of folder datasets: index PNGs and 2-D integer ``.npy`` arrays.
MASK_EXTENSIONS = (".png", ".npy")

#: Default ceiling on decoded pixels (width x height) of a user's image; 8K UHD is 33 MP.
DEFAULT_MAX_PIXELS = 40_000_000


class DatasetError(ValueError):
    """A dataset file is missing, unreadable or holds values the dataset does not define.

    Attributes:
        path: the offending file.
        example_id: id of the example the file belongs to, when known.
        kind: ``"missing"``, ``"corrupt"``, ``"format"``, ``"size_mismatch"`` or
            ``"unknown_values"``.
    """

    def __init__(
        self,
        message: str,
        path: str | None = None,
        example_id: str | None = None,
        kind: str = "format",
    ):
        super().__init__(message)
        self.path = path
        self.example_id = example_id
        self.kind = kind

    def as_problem(self) -> dict:
        """``{"id", "path", "kind", "error"}`` for reports."""
        return {"id": self.example_id, "path": self.path, "kind": self.kind, "error": str(self)}


@dataclasses.dataclass(frozen=True)
class Example:
    """One image/label pair on disk.

    Attributes:
        id: example id (``"2007_000032"``, ``"aachen_000000_000019"``, a file stem...).
        image_path: path of the RGB image.
        label_path: path of the label file, or None for unlabelled examples.
        label_format: one of :data:`LABEL_FORMATS`.
    """

    id: str
    image_path: str
    label_path: str | None
    label_format: str = "png"


class LabelMap:
    """Maps raw stored label values to training ids, rejecting values the dataset lacks.

    Args:
        table: dict ``{raw value: train id}``; train ids lie in ``0..num_classes-1`` or are
            ``ignore_label``. Raw values missing from the table are errors.
        num_classes: number of classes the mapped labels may hold.
        ignore_label: the ignore value (255).
        description: how the raw values are defined, for error messages.
    """

    def __init__(
        self,
        table: dict,
        num_classes: int,
        ignore_label: int = IGNORE_LABEL,
        description: str = "",
    ):
        if not table:
            raise ValueError("table must not be empty. Received: {}")
        size = max(int(k) for k in table) + 1
        lut = np.full((max(size, 256),), -1, dtype=np.int32)
        for raw, train in table.items():
            train = int(train)
            if not (0 <= train < num_classes or train == ignore_label):
                raise ValueError(
                    f"train ids must lie in [0, {num_classes - 1}] or be {ignore_label}. "
                    f"Received: {raw} -> {train}"
                )
            lut[int(raw)] = train
        self.lut = lut
        self.num_classes = int(num_classes)
        self.ignore_label = int(ignore_label)
        self.description = description or (
            f"class ids 0..{num_classes - 1} and {ignore_label} (ignore)"
        )

    @classmethod
    def identity(cls, num_classes: int, ignore_label: int = IGNORE_LABEL) -> LabelMap:
        """Raw values ``0..num_classes-1`` and ``ignore_label`` are kept; others are errors."""
        table = {i: i for i in range(num_classes)}
        table[ignore_label] = ignore_label
        return cls(table, num_classes, ignore_label)

    def known_values(self) -> np.ndarray:
        return np.flatnonzero(self.lut >= 0)

    def __call__(self, raw: np.ndarray, path: str = "", example_id: str | None = None):
        """Maps ``raw`` (integer array) to uint8 train ids; unknown values raise DatasetError."""
        raw = np.asarray(raw)
        if raw.size == 0:
            return raw.astype(np.uint8)
        lo, hi = int(raw.min()), int(raw.max())
        if lo < 0 or hi >= len(self.lut):
            bad = np.unique(raw[(raw < 0) | (raw >= len(self.lut))])
            raise self._unknown(bad, path, example_id)
        mapped = self.lut[raw.astype(np.int64)]
        if (mapped < 0).any():
            raise self._unknown(np.unique(raw[mapped < 0]), path, example_id)
        return mapped.astype(np.uint8)

    def _unknown(self, bad, path, example_id):
        shown = ", ".join(str(int(v)) for v in bad[:10]) + (" ..." if len(bad) > 10 else "")
        return DatasetError(
            f"{path}: label values outside the dataset's range: [{shown}]. "
            f"Expected {self.description}.",
            path=path,
            example_id=example_id,
            kind="unknown_values",
        )


def _open_pil(path: str, what: str, example_id=None):
    try:
        from PIL import Image
    except ImportError as err:  # pragma: no cover - pillow is a hard dependency
        raise ImportError("Reading datasets needs Pillow: pip install pillow") from err
    if not os.path.isfile(path):
        raise DatasetError(
            f"{path}: {what} file not found.", path=path, example_id=example_id, kind="missing"
        )
    try:
        img = Image.open(path)
        img.load()
    except Exception as err:  # noqa: BLE001 - Pillow raises many types for corrupt files
        raise DatasetError(
            f"{path}: cannot decode {what} ({type(err).__name__}: {err}).",
            path=path,
            example_id=example_id,
            kind="corrupt",
        ) from err
    return img


class ImageReadError(DatasetError):
    """An image file that cannot be used, with a message naming the file and saying why."""


def decode_image(path, max_pixels: int | None = None, orient: bool = True, example_id=None):
    """Decodes an image file into RGB uint8, converting what can be converted: the one image
    reader of the package (datasets, ``predict``, ``evaluate``).

    Greyscale, palette, CMYK, 16-bit and alpha images are converted to RGB (alpha is dropped;
    16-bit greyscale is scaled to 8 bits by its maximum, or 65535/255 when that is above 255)
    and each conversion is reported in ``notes``.

    Args:
        path: file path.
        max_pixels: largest accepted ``width * height`` (None: Pillow's own bomb limit only).
        orient: apply the EXIF orientation (a photo). Dataset images are read as stored
            (``False``), because their label masks are aligned with the stored pixels.
        example_id: id for error messages.

    Returns:
        ``(image, notes)``: an ``(H, W, 3)`` uint8 array and a list of strings.

    Raises:
        ImageReadError: unreadable path (``kind="missing"``), not an image, undecodable or
            empty (``"corrupt"``), larger than ``max_pixels`` or of an unsupported mode
            (``"format"``).
    """
    try:
        from PIL import Image, ImageOps, UnidentifiedImageError
    except ImportError as err:  # pragma: no cover - pillow is a hard dependency
        raise ImportError("Reading images needs Pillow: pip install pillow") from err

    path = os.fspath(path)

    def fail(message, kind="corrupt"):
        return ImageReadError(f"{path}: {message}", path=path, example_id=example_id, kind=kind)

    if not os.path.exists(path):
        raise fail("no such file", "missing")
    if os.path.isdir(path):
        raise fail("is a directory, expected an image file", "missing")
    if not os.access(path, os.R_OK):
        raise fail("permission denied")
    if os.path.getsize(path) == 0:
        raise fail("file is empty (0 bytes)")
    notes = []
    try:
        with Image.open(path) as img:
            width, height = img.size
            if width == 0 or height == 0:
                raise fail(f"image is empty ({width}x{height} pixels)")
            if max_pixels is not None and width * height > max_pixels:
                raise fail(
                    f"image is {width}x{height} = {width * height:,} pixels, above the "
                    f"limit of {max_pixels:,} (raise it with --max-pixels, or downscale the image)",
                    "format",
                )
            if getattr(img, "n_frames", 1) > 1:
                notes.append(f"{img.n_frames} frames, used the first")
            img.load()
            if orient:
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
                    raise fail("floating-point images are not supported", "format")
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
            raise fail(f"image is empty ({size[0]}x{size[1]} pixels)") from None
        raise fail("not an image file Pillow can read") from None
    except Image.DecompressionBombError as err:
        raise fail(f"refused as a decompression bomb ({err})", "format") from None
    except (OSError, SyntaxError, ValueError) as err:
        raise fail(f"cannot decode image ({err})") from None
    except Exception as err:  # noqa: BLE001 - Pillow raises many types for corrupt files
        raise fail(f"cannot decode image ({type(err).__name__}: {err})") from None
    if image.ndim != 3 or image.shape[2] != 3:
        raise fail(f"decoded to shape {image.shape}, expected (H, W, 3)", "format")
    return image, notes


def _png_header_size(path):
    """(width, height) from a PNG's IHDR chunk (Pillow refuses 0-sized PNGs), else None."""
    with open(path, "rb") as f:
        head = f.read(24)
    if len(head) == 24 and head[:8] == b"\x89PNG\r\n\x1a\n" and head[12:16] == b"IHDR":
        return int.from_bytes(head[16:20], "big"), int.from_bytes(head[20:24], "big")
    return None


@dataclasses.dataclass(frozen=True)
class ImageFormat:
    """What a dataset's images hold: ``channels`` and the ``dtype`` the loader yields
    (``"uint8"``, or ``"float32"`` for array images stored in another dtype), with the stored
    dtype and the file they were read from (for messages)."""

    channels: int = 3
    dtype: str = "uint8"
    stored_dtype: str = "uint8"
    path: str | None = None

    def describe(self) -> str:
        stored = "" if self.stored_dtype == self.dtype else f", stored as {self.stored_dtype}"
        return f"{self.channels} channel(s) of {self.dtype}{stored}"


#: The format of RGB image files (every conversion of :func:`decode_image` ends there).
RGB_FORMAT = ImageFormat()


def _tifffile(path):
    try:
        import tifffile
    except ImportError as err:
        raise ImportError(
            f"Reading {path} (a TIFF image with any number of channels) needs tifffile: "
            'pip install "deeplab_tf[tiff]"'
        ) from err
    return tifffile


def _array_fail(path, message, example_id=None, kind="format"):
    return ImageReadError(f"{path}: {message}", path=path, example_id=example_id, kind=kind)


def _to_hwc(shape, axes, path, example_id):
    """The transpose order taking an array with tifffile ``axes`` to ``(H, W, C)``."""
    if "Y" not in axes or "X" not in axes:
        raise _array_fail(path, f"TIFF axes {axes!r} have no Y and X", example_id)
    rest = [i for i, a in enumerate(axes) if a not in "YX"]
    if len(rest) > 1:
        raise _array_fail(
            path,
            f"TIFF holds a {len(shape)}-D array (axes {axes!r}, shape {tuple(shape)}); expected "
            "(H, W) or (H, W, C) / (C, H, W) channels",
            example_id,
        )
    return [axes.index("Y"), axes.index("X")] + rest


def _read_array(path, example_id=None, header_only=False):
    """``(array or None, shape (H, W, C), stored dtype)`` of a ``.npy`` or TIFF image."""
    ext = os.path.splitext(path)[1].lower()
    if ext == ".npy":
        try:
            arr = np.load(path, mmap_mode="r" if header_only else None, allow_pickle=False)
        except Exception as err:  # noqa: BLE001 - NumPy raises many types for corrupt files
            raise _array_fail(
                path, f"cannot read .npy array ({type(err).__name__}: {err})", example_id, "corrupt"
            ) from None
        if arr.ndim not in (2, 3):
            raise _array_fail(
                path, f"array has shape {arr.shape}; expected (H, W) or (H, W, C)", example_id
            )
        shape = arr.shape if arr.ndim == 3 else (*arr.shape, 1)
        return (None if header_only else arr.reshape(shape)), shape, arr.dtype
    tifffile = _tifffile(path)
    try:
        with tifffile.TiffFile(path) as tif:
            series = tif.series[0]
            order = _to_hwc(series.shape, series.axes, path, example_id)
            shape = tuple(series.shape[i] for i in order)
            shape = shape if len(shape) == 3 else (*shape, 1)
            arr = None if header_only else np.transpose(series.asarray(), order).reshape(shape)
            return arr, shape, np.dtype(series.dtype)
    except ImageReadError:
        raise
    except Exception as err:  # noqa: BLE001 - tifffile raises many types for corrupt files
        raise _array_fail(
            path, f"cannot read TIFF ({type(err).__name__}: {err})", example_id, "corrupt"
        ) from None


def _check_array_dtype(dtype, path, example_id):
    if np.dtype(dtype).name not in ARRAY_IMAGE_DTYPES:
        raise _array_fail(
            path,
            f"image dtype {np.dtype(dtype).name} is not supported; expected one of "
            f"{', '.join(ARRAY_IMAGE_DTYPES)}",
            example_id,
        )


def is_array_image(path) -> bool:
    """Whether :func:`read_image` reads ``path`` as an array that keeps its channels and values
    (``.npy``; TIFFs when tifffile is installed or Pillow cannot read them as RGB / grey)."""
    ext = os.path.splitext(os.fspath(path))[1].lower()
    if ext == ".npy":
        return True
    if ext not in ARRAY_IMAGE_EXTENSIONS:
        return False
    try:
        import tifffile  # noqa: F401
    except ImportError:
        # Without tifffile, TIFFs Pillow decodes (RGB, grey, palette) are read as before; a
        # multi-channel one fails in Pillow and then asks for tifffile.
        return not _pillow_reads(path)
    return True


def _pillow_reads(path) -> bool:
    """Whether Pillow reads the TIFF as what it is: one or three samples per pixel, stored
    interleaved (Pillow silently reads only the first plane of a planar or 4+-sample TIFF)."""
    try:
        from PIL import Image

        with Image.open(path) as img:
            tags = getattr(img, "tag_v2", {})
            samples, planar = int(tags.get(277, 1)), int(tags.get(284, 1))
            img.load()
            return samples in (1, 3) and (planar == 1 or samples == 1)
    except Exception:  # noqa: BLE001 - any failure means Pillow cannot read it
        return False


def probe_image(path, example_id: str | None = None) -> ImageFormat:
    """The :class:`ImageFormat` of one dataset image, reading as little as possible (the
    header of ``.npy`` and TIFF files; RGB files give :data:`RGB_FORMAT`).

    Raises:
        DatasetError: a missing or unreadable file, or an array of an unsupported shape or
            dtype; the message names the file.
        ImportError: a TIFF Pillow cannot read without tifffile installed.
    """
    path = os.fspath(path)
    if not os.path.isfile(path):
        raise ImageReadError(
            f"{path}: no such file", path=path, example_id=example_id, kind="missing"
        )
    if not is_array_image(path):
        return dataclasses.replace(RGB_FORMAT, path=path)
    _, shape, dtype = _read_array(path, example_id, header_only=True)
    _check_array_dtype(dtype, path, example_id)
    out = "uint8" if dtype == np.uint8 else "float32"
    return ImageFormat(int(shape[2]), out, np.dtype(dtype).name, path)


def read_image(
    path: str,
    example_id: str | None = None,
    expect: ImageFormat | None = None,
    max_pixels: int | None = None,
):
    """Reads a dataset image as ``(H, W, C)``, as stored (no EXIF rotation): the one dataset
    image reader.

    JPEG, PNG and the other RGB formats give ``(H, W, 3)`` uint8 RGB with the conversions of
    :func:`decode_image`. ``.npy`` arrays (``(H, W)`` or ``(H, W, C)``) and TIFFs (read with
    tifffile, the ``[tiff]`` extra: ``(H, W)``, ``(H, W, C)`` or planar ``(C, H, W)``) keep
    their channels: uint8 stays uint8, the other :data:`ARRAY_IMAGE_DTYPES` become float32
    with their values kept.

    Args:
        path: the image file.
        example_id: id for error messages.
        expect: the dataset's :class:`ImageFormat` (from :func:`probe_image` on its first
            image); an image with other channels or another dtype is an error.
        max_pixels: largest accepted ``width * height`` (None: no limit for arrays), checked
            from the file's header before its pixels are read.

    Raises:
        DatasetError: the file is missing or cannot be decoded (an :class:`ImageReadError`),
            or has an unsupported dtype, or differs from ``expect``; the message names it.
    """
    path = os.fspath(path)
    if not is_array_image(path):
        image = decode_image(path, max_pixels, orient=False, example_id=example_id)[0]
        got = RGB_FORMAT
    else:
        if not os.path.isfile(path):
            raise ImageReadError(
                f"{path}: no such file", path=path, example_id=example_id, kind="missing"
            )
        if max_pixels is not None:
            _, (h, w, _), _ = _read_array(path, example_id, header_only=True)
            if h * w > max_pixels:
                raise _array_fail(
                    path,
                    f"image is {w}x{h} = {w * h:,} pixels, above the limit of {max_pixels:,} "
                    "(raise it with --max-pixels, or downscale the image)",
                    example_id,
                    "format",
                )
        image, shape, dtype = _read_array(path, example_id)
        _check_array_dtype(dtype, path, example_id)
        if 0 in shape:
            raise _array_fail(path, f"image is empty (shape {tuple(shape)})", example_id, "corrupt")
        got = ImageFormat(int(shape[2]), "uint8" if dtype == np.uint8 else "float32", dtype.name)
        image = np.ascontiguousarray(image, dtype=got.dtype)
    if expect is not None and (got.channels, got.dtype) != (expect.channels, expect.dtype):
        raise mismatch_error(path, got, expect, example_id)
    return image


def mismatch_error(path, got: ImageFormat, expect: ImageFormat, example_id=None):
    """The DatasetError for an image whose format differs from the dataset's."""
    return ImageReadError(
        f"{path}: image has {got.describe()} but the dataset's images have {expect.describe()}"
        + (f" (read from {expect.path})" if expect.path else "")
        + "; every image of a dataset needs the same channels and dtype.",
        path=path,
        example_id=example_id,
        kind="channels" if got.channels != expect.channels else "dtype",
    )


def read_npy_mask(path: str, example_id: str | None = None) -> np.ndarray:
    """Reads a ``.npy`` mask: a 2-D integer (or bool) array of raw label values, as int32.

    Raises:
        DatasetError: missing or unreadable, not 2-D or not integer; the message names it.
    """
    if not os.path.isfile(path):
        raise DatasetError(
            f"{path}: mask file not found.", path=path, example_id=example_id, kind="missing"
        )
    try:
        arr = np.load(path, allow_pickle=False)
    except Exception as err:  # noqa: BLE001 - NumPy raises many types for corrupt files
        raise DatasetError(
            f"{path}: cannot read .npy mask ({type(err).__name__}: {err}).",
            path=path,
            example_id=example_id,
            kind="corrupt",
        ) from None
    if arr.ndim == 3 and arr.shape[2] == 1:
        arr = arr[..., 0]
    if arr.ndim != 2 or not (np.issubdtype(arr.dtype, np.integer) or arr.dtype == np.bool_):
        raise DatasetError(
            f"{path}: a .npy mask must be a 2-D integer array of class ids. Received "
            f"{arr.dtype} {arr.shape}.",
            path=path,
            example_id=example_id,
        )
    return arr.astype(np.int32)


def read_index_png(
    path: str, example_id: str | None = None, palette: np.ndarray | None = None
) -> np.ndarray:
    """Reads a mask PNG as ``(H, W)`` raw integer values (indices, never colours).

    Palette ("P") images give their palette indices; grey ("L", "I", "I;16") images their
    values. An RGB mask is accepted only when ``palette`` is given: each colour must be a
    palette entry and becomes that entry's index; a colour not in the palette is an error.

    Args:
        path: mask file.
        example_id: id for error messages.
        palette: ``(K, 3)`` colours for RGB masks, or None to reject RGB masks.

    Returns:
        ``(H, W)`` int32 array of raw values.

    Raises:
        DatasetError: missing, undecodable, or an unsupported / unknown colour mask.
    """
    img = _open_pil(path, "mask", example_id)
    if img.mode in ("P", "L", "I", "I;16", "I;16B", "I;16L", "1"):
        return np.asarray(img).astype(np.int32)
    if img.mode in ("LA", "PA"):
        return np.asarray(img)[..., 0].astype(np.int32)
    if img.mode in ("RGB", "RGBA"):
        if palette is None:
            raise DatasetError(
                f"{path}: mask is an {img.mode} colour image; expected a palette (P) or grey (L) "
                "PNG of class ids. Pass a palette to map colours to class ids.",
                path=path,
                example_id=example_id,
            )
        return rgb_to_index(np.asarray(img.convert("RGB")), palette, path, example_id)
    raise DatasetError(
        f"{path}: unsupported mask mode {img.mode!r}; expected a palette (P) or grey (L) PNG.",
        path=path,
        example_id=example_id,
    )


def rgb_to_index(rgb, palette, path: str = "", example_id: str | None = None) -> np.ndarray:
    """Maps an ``(H, W, 3)`` colour mask to palette indices; unknown colours raise."""
    palette = np.asarray(palette, dtype=np.int64)
    rgb = np.asarray(rgb, dtype=np.int64)
    codes = (rgb[..., 0] << 16) | (rgb[..., 1] << 8) | rgb[..., 2]
    pal_codes = (palette[:, 0] << 16) | (palette[:, 1] << 8) | palette[:, 2]
    # First palette entry wins for duplicated colours (VOC's palette has no duplicates
    # among class ids and 255).
    uniq, first = np.unique(pal_codes[::-1], return_index=True)
    index_of = {int(c): len(pal_codes) - 1 - int(i) for c, i in zip(uniq, first)}
    values, inverse = np.unique(codes, return_inverse=True)
    out = np.empty(len(values), dtype=np.int32)
    for k, c in enumerate(values):
        if int(c) not in index_of:
            col = (int(c) >> 16, (int(c) >> 8) & 255, int(c) & 255)
            raise DatasetError(
                f"{path}: mask colour {col} is not in the dataset's palette.",
                path=path,
                example_id=example_id,
            )
        out[k] = index_of[int(c)]
    return out[inverse].reshape(codes.shape)


def _loadmat(path: str, example_id=None, hdf5_key: str | None = None, **options) -> dict:
    """Reads a ``.mat`` file with SciPy (``squeeze_me``, structs as objects, unless
    ``options`` say otherwise). A MATLAB v7.3 (HDF5) file, which SciPy cannot read, gives
    ``{hdf5_key: array}`` read with h5py when ``hdf5_key`` is named, else a clear error."""
    try:
        import scipy.io
    except ImportError as err:  # pragma: no cover - scipy is a hard dependency
        raise ImportError("Reading .mat annotations needs SciPy: pip install scipy") from err
    if not os.path.isfile(path):
        raise DatasetError(
            f"{path}: label file not found.", path=path, example_id=example_id, kind="missing"
        )
    try:
        return scipy.io.loadmat(path, **{"squeeze_me": True, "struct_as_record": False, **options})
    except NotImplementedError as err:  # SciPy's answer to MATLAB v7.3 (HDF5) files
        if hdf5_key is None:
            raise DatasetError(
                f"{path}: a MATLAB v7.3 (HDF5) .mat file; this dataset's release uses v5/v7 "
                "files (re-save it with MATLAB's save -v7).",
                path=path,
                example_id=example_id,
            ) from err
        return {hdf5_key: _read_hdf5_mat_array(path, hdf5_key, example_id)}
    except Exception as err:  # noqa: BLE001 - scipy raises many types for corrupt files
        raise DatasetError(
            f"{path}: cannot read .mat file ({type(err).__name__}: {err}).",
            path=path,
            example_id=example_id,
            kind="corrupt",
        ) from err


def _mat_field(mat, path, example_id, *names):
    obj = mat
    for name in names:
        try:
            obj = obj[name] if isinstance(obj, dict) else getattr(obj, name)
        except (KeyError, AttributeError) as err:
            raise DatasetError(
                f"{path}: .mat file has no field {'.'.join(names)!r} (layout not recognised).",
                path=path,
                example_id=example_id,
            ) from err
    return obj


def _as_2d_int(arr, path, example_id, field):
    arr = np.asarray(arr)
    if arr.ndim != 2 or not np.issubdtype(arr.dtype, np.number):
        raise DatasetError(
            f"{path}: {field} must be a 2-D numeric array. Received {arr.dtype} {arr.shape}.",
            path=path,
            example_id=example_id,
        )
    return arr.astype(np.int32)


def read_sbd_mat(path: str, example_id: str | None = None) -> np.ndarray:
    """Reads an SBD ``cls/*.mat`` file: ``GTcls.Segmentation`` as ``(H, W)`` int32 class ids."""
    mat = _loadmat(path, example_id)
    seg = _mat_field(mat, path, example_id, "GTcls", "Segmentation")
    return _as_2d_int(seg, path, example_id, "GTcls.Segmentation")


def read_context_mat(path: str, example_id: str | None = None) -> np.ndarray:
    """Reads a PASCAL-Context ``trainval/*.mat`` file: ``LabelMap`` (459-class ids)."""
    mat = _loadmat(path, example_id)
    return _as_2d_int(_mat_field(mat, path, example_id, "LabelMap"), path, example_id, "LabelMap")


def _read_hdf5_mat_array(path: str, key: str, example_id=None) -> np.ndarray:
    """Reads the numeric variable ``key`` of a MATLAB v7.3 (HDF5) ``.mat`` file.

    MATLAB stores arrays column-major, so h5py sees them transposed; the transpose is undone.
    """
    try:
        import h5py
    except ImportError as err:  # pragma: no cover - h5py comes with Keras
        raise ImportError(
            f"{path} is a MATLAB v7.3 (HDF5) .mat file; reading it needs h5py: pip install h5py"
        ) from err
    try:
        with h5py.File(path, "r") as f:
            if key not in f:
                raise DatasetError(
                    f"{path}: MATLAB v7.3 .mat file has no variable {key!r} (it holds "
                    f"{sorted(k for k in f if not k.startswith('#'))}).",
                    path=path,
                    example_id=example_id,
                )
            node = f[key]
            if not isinstance(node, h5py.Dataset):
                raise DatasetError(
                    f"{path}: variable {key!r} of the MATLAB v7.3 .mat file is a "
                    f"{type(node).__name__}, expected a numeric array.",
                    path=path,
                    example_id=example_id,
                )
            return np.asarray(node[()]).T
    except DatasetError:
        raise
    except Exception as err:  # noqa: BLE001 - h5py raises many types for corrupt files
        raise DatasetError(
            f"{path}: cannot read MATLAB v7.3 (HDF5) .mat file ({type(err).__name__}: {err}).",
            path=path,
            example_id=example_id,
            kind="corrupt",
        ) from err


def read_cocostuff_mat(path: str, example_id: str | None = None) -> np.ndarray:
    """Reads a COCO-Stuff 10k ``annotations/*.mat`` file: its label map ``S`` as stored.

    ``S`` holds MATLAB's 1-based ids: 0 = unlabeled and 1..182 = COCO-Stuff ids 0..181 (the
    dataset's label map turns them into train ids, as the PyTorch port does: ``S - 1``, with
    -1 -> 255). The release's files are MATLAB v5/v7 (SciPy); a file re-saved as v7.3 (HDF5)
    is read with h5py.

    Raises:
        DatasetError: missing or unreadable file, no ``S`` variable, or ``S`` not a 2-D
            numeric array; the message names the file.
    """
    mat = _loadmat(path, example_id, hdf5_key="S", squeeze_me=False, variable_names=["S"])
    return _as_2d_int(_mat_field(mat, path, example_id, "S"), path, example_id, "S")


def read_pascal_part_mat(path: str, example_id: str | None = None) -> np.ndarray:
    """Reads a PASCAL-Part ``Annotations_Part/*.mat`` file as Person-Part ids (0..6).

    Every ``person`` object's part masks are painted with their merged id
    (``PERSON_PART_MERGE``: head, torso, upper/lower arms, upper/lower legs); the rest is 0.
    """
    mat = _loadmat(path, example_id)
    anno = _mat_field(mat, path, example_id, "anno")
    objects = np.atleast_1d(_mat_field(anno, path, example_id, "objects"))
    out = None
    for obj in objects:
        cls = str(getattr(obj, "class", ""))
        mask = np.asarray(getattr(obj, "mask", np.zeros((0, 0))))
        if out is None and mask.ndim == 2 and mask.size:
            out = np.zeros(mask.shape, np.int32)
        if cls != "person":
            continue
        for part in np.atleast_1d(getattr(obj, "parts", [])):
            name = str(getattr(part, "part_name", ""))
            if name not in PERSON_PART_MERGE:
                raise DatasetError(
                    f"{path}: unknown person part name {name!r}; expected one of "
                    f"{sorted(PERSON_PART_MERGE)}.",
                    path=path,
                    example_id=example_id,
                )
            pmask = np.asarray(part.mask)
            if out is None:
                out = np.zeros(pmask.shape, np.int32)
            if pmask.shape != out.shape:
                raise DatasetError(
                    f"{path}: part mask {name!r} has shape {pmask.shape}, image masks {out.shape}.",
                    path=path,
                    example_id=example_id,
                )
            out[pmask > 0] = PERSON_PART_MERGE[name]
    if out is None:
        raise DatasetError(
            f"{path}: no object masks found, cannot tell the image size.",
            path=path,
            example_id=example_id,
        )
    return out


def read_label(
    path: str, label_format: str = "png", example_id: str | None = None, palette=None
) -> np.ndarray:
    """Reads a label file of any supported format as raw ``(H, W)`` int32 values."""
    if label_format == "png":
        return read_index_png(path, example_id, palette=palette)
    if label_format == "npy":
        return read_npy_mask(path, example_id)
    if label_format == "sbd_mat":
        return read_sbd_mat(path, example_id)
    if label_format == "context_mat":
        return read_context_mat(path, example_id)
    if label_format == "pascal_part_mat":
        return read_pascal_part_mat(path, example_id)
    if label_format == "cocostuff_mat":
        return read_cocostuff_mat(path, example_id)
    raise ValueError(f"label_format must be one of {LABEL_FORMATS}. Received: {label_format!r}")


def decode_example(
    example: Example, label_map: LabelMap, rgb_palette=None, image_format=None
) -> tuple[np.ndarray, np.ndarray]:
    """Reads one example: ``(image (H, W, C), label (H, W) uint8 train ids)``.

    The image is ``(H, W, 3)`` uint8 RGB, or what ``image_format`` (the dataset's
    :class:`ImageFormat`) says for array images. Unlabelled examples (``label_path`` None) get
    an all-``ignore_label`` mask.

    Raises:
        DatasetError: missing or corrupt files, unknown label values, image/label sizes that
            differ, or an image whose channels or dtype differ from ``image_format``; the
            message names the file.
    """
    image = read_image(example.image_path, example.id, expect=image_format)
    if example.label_path is None:
        return image, np.full(image.shape[:2], label_map.ignore_label, np.uint8)
    raw = read_label(example.label_path, example.label_format, example.id, palette=rgb_palette)
    if raw.shape != image.shape[:2]:
        raise DatasetError(
            f"{example.label_path}: label size {raw.shape[1]}x{raw.shape[0]} (WxH) differs from "
            f"image {example.image_path} size {image.shape[1]}x{image.shape[0]}.",
            path=example.label_path,
            example_id=example.id,
            kind="size_mismatch",
        )
    return image, label_map(raw, example.label_path, example.id)


def read_id_list(path: str) -> list[str]:
    """Reads a split file: one id per line (blank lines skipped, first column only)."""
    with open(path, encoding="utf-8") as f:
        return [line.split()[0] for line in f if line.strip()]
