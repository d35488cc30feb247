"""SavedModel export for TF Serving (docs/architecture.md#savedmodel-tf-serving).

Layout: ``<base>/<version>/saved_model.pb`` + ``variables/`` + ``assets.extra/`` with warm-up
requests (:mod:`deeplab_tf.export.warmup`).

Version numbers are read the way TF Serving's file-system source reads them
(``file_system_storage_path_source.cc``: ``ParseVersionNumber`` is ``strings::safe_strto64``):
any child of the base path whose whole name is a decimal integer is a version, leading zeros
included (``007`` is version 7, ``0`` is version 0), and every other name (``abc``,
``1.tmp``, ``.tmp-...``) is ignored (:func:`version_number`). The automatic next version is one
above every version so read, and an explicit version counts as taken when any folder reads as
that number, so the server never sees two folders for one version.

Publishing. TF Serving loads a version as soon as its folder shows up in the base path (it
polls every ``--file_system_poll_wait_seconds``, default 1 s), so a version must never be
visible half-written:

* Local base paths (and ``file://`` URLs): the version is written into a hidden temporary
  folder beside it (its name is not a number, so TF Serving skips it) and renamed into place
  when complete. The rename never replaces an existing version unless asked (``overwrite``);
  without an explicit version the number is chosen at the rename, so two concurrent exports
  get two versions.
* Other URL schemes (``gs://``, ``s3://``, ... through ``tf.io.gfile``) are treated as object
  stores: no atomic folder rename, and a version appears to TF Serving the moment any
  object under ``<base>/<N>/`` exists (its GCS listing returns every descendant; it keeps the
  part before the first ``/``). So the export is built locally, uploaded to a staging prefix
  ``<base>/.tmp-...-export/`` (not a number: ignored), then copied object by object into
  ``<base>/<N>/`` (server-side copies on object stores) with ``saved_model.pb`` last, and the
  staging prefix is deleted. ``saved_model.pb`` is the completion marker TF Serving honours:
  its loader refuses a folder without it, and retries the load (``--max_num_load_retries``,
  default 5, every ``--load_retry_interval_micros``, default 60 s); whereas a folder with
  ``saved_model.pb`` but without ``variables/variables.index`` loads *successfully* with no
  weights restored (TensorFlow's ``loader.cc``: "The specified SavedModel has no variables";
  tensorflow/serving issue #1086), which is why every other file goes first. While the
  incomplete version fails to load, the previous one keeps serving (the default
  ``AvailabilityPreservingPolicy`` unloads an old version only once a newer one is ready).
  Replacing an existing version is refused there (no atomic swap, and a running server does
  not reload a version number it already serves). Two exports racing on one remote base path
  without explicit versions may pick the same number: give each a ``version``.

Signatures (inputs and outputs keep these names; ``saved_model_cli show --all`` prints them):

* ``serving_default``: ``images`` float32 ``(N, H, W, 3)`` RGB 0..255 ->
  ``labels`` int32 ``(N, H, W)``, ``probabilities`` float32 ``(N, H, W, C)``.
* ``serving_uint8``: the same with ``images`` uint8.
* ``serving_bytes``: ``image_bytes`` string ``(N,)`` (JPEG/PNG/BMP/GIF; the REST
  ``{"b64": ...}`` form) -> ``labels`` int32 ``(N, Hmax, Wmax)`` (padded with -1),
  ``heights``/``widths`` int32 ``(N,)`` (each image's own size) and ``label_png_bytes``
  string ``(N,)`` (each label map as a greyscale PNG of class ids, at the image's own size;
  the ``_bytes`` suffix makes TF Serving's REST API return it as ``{"b64": ...}``). Images
  over ``max_pixels`` (checked on the header, before decoding) are refused.
* ``serving_crf`` (with a CRF): ``images`` float32 -> ``labels``, ``probabilities`` after the
  dense CRF, plus ``labels_before_crf``.
"""

from __future__ import annotations

import os
import re
import tempfile

import keras
import numpy as np
import tensorflow as tf

from deeplab_tf import atomic
from deeplab_tf.export.warmup import DEFAULT_SIZE, check_image_size, write_warmup_requests
from deeplab_tf.inference.io import DEFAULT_MAX_PIXELS
from deeplab_tf.inference.multiscale import MultiScaleInference
from deeplab_tf.layers import check_images
from deeplab_tf.models.deeplab import input_channels_of

SIGNATURES = ("serving_default", "serving_uint8", "serving_bytes", "serving_crf")


#: The file TF Serving's loader needs in a version folder; written last on object stores.
SAVED_MODEL_FILE = "saved_model.pb"
_INT64 = 2**63
# tsl safe_strto64 (older TF Serving builds): C isspace, an optional '-', ASCII digits, spaces;
# absl::SimpleAtoi (newer builds) also takes a '+'. The union is matched: a name counted
# here that a given server ignores can only push the next version higher, never collide.
_VERSION_NAME = re.compile(r"[ \t\n\v\f\r]*([+-]?[0-9]+)[ \t\n\v\f\r]*\Z")
_SCHEME = re.compile(r"^([A-Za-z][A-Za-z0-9+.-]*)://")


def version_number(name: str) -> int | None:
    """The version TF Serving reads from a folder name in a base path, or None if it ignores it.

    ``"7"`` and ``"007"`` are 7, ``"0"`` is 0; ``"abc"``, ``"1.tmp"``, ``"v2"`` and integers
    beyond int64 are no version. A listing entry such as ``"3/"`` or ``"3/saved_model.pb"``
    (object stores) stands for its first component, as TF Serving takes it.
    """
    m = _VERSION_NAME.match(name.split("/", 1)[0])
    if not m:
        return None
    value = int(m.group(1))
    return value if -_INT64 <= value < _INT64 else None


def is_remote(path) -> bool:
    """Whether ``path`` is a URL for ``tf.io.gfile`` (``gs://``, ``s3://``, ``ram://``, ...)
    rather than a local path (``file://`` URLs count as local)."""
    m = _SCHEME.match(os.fspath(path))
    return bool(m) and m.group(1).lower() != "file"


def _local(path) -> str:
    path = os.fspath(path)
    return path[len("file://") :] if path.lower().startswith("file://") else path


def _join(base: str, *names: str) -> str:
    if not is_remote(base):
        return os.path.join(base, *names)
    return "/".join([base.rstrip("/"), *names])


def version_folders(base_dir) -> dict[int, list[str]]:
    """``{version: [folder names]}`` of the base path, as TF Serving reads them (several names
    may read as one version, e.g. ``7`` and ``007``; the server then loads only one)."""
    base_dir = _local(base_dir)
    if is_remote(base_dir):
        names = tf.io.gfile.listdir(base_dir) if tf.io.gfile.isdir(base_dir) else []
    else:
        names = os.listdir(base_dir) if os.path.isdir(base_dir) else []
    found: dict[int, list[str]] = {}
    for name in names:
        version = version_number(name)
        if version is not None:
            found.setdefault(version, []).append(name.split("/", 1)[0])
    return found


def existing_versions(base_dir) -> list[int]:
    """The versions TF Serving sees under ``base_dir``, sorted."""
    return sorted(version_folders(base_dir))


def next_version(base_dir) -> int:
    """One above every version TF Serving sees under ``base_dir`` (1 for none)."""
    versions = existing_versions(base_dir)
    version = max([0, *versions]) + 1
    if version >= _INT64:
        raise ValueError(f"{base_dir!r} holds version {versions[-1]}: no higher int64 is left")
    return version


def _parse_version(version) -> int:
    text = version if isinstance(version, str) else None
    if isinstance(version, bool) or not (
        isinstance(version, (int, np.integer))
        or (text is not None and text.isascii() and text.isdigit())
    ):
        raise ValueError(
            f"version must be a positive integer (TF Serving's folder name). Received: {version!r}"
        )
    value = int(version)
    if not 1 <= value < _INT64:
        raise ValueError(f"version must be a positive integer below 2**63. Received: {version!r}")
    return value


def _taken(base_dir, version: int):
    """The folder names that read as ``version`` (empty: free)."""
    return version_folders(base_dir).get(version, [])


def check_export_target(base_dir, version=None, overwrite: bool = False) -> int:
    """Validates the output folder and version before any work; returns the version to write.

    Args:
        base_dir: the model's base path: a local folder, a ``file://`` URL or a URL that
            ``tf.io.gfile`` opens (``gs://``, ``s3://``, ...).
        version: a positive integer (or its decimal string; ``"007"`` is 7), or None for the
            next one (:func:`next_version`).
        overwrite: allow replacing an existing version (local base paths only).

    Raises:
        ValueError: ``base_dir`` is a file, ``version`` is not a positive integer, or a folder
            that reads as that version exists and ``overwrite`` is False (or the base path is
            remote, where a version cannot be replaced atomically).
    """
    base_dir = _local(base_dir)
    remote = is_remote(base_dir)
    isdir = tf.io.gfile.isdir if remote else os.path.isdir
    exists = tf.io.gfile.exists if remote else os.path.exists
    if exists(base_dir) and not isdir(base_dir):
        raise ValueError(f"The export base path is a file, not a folder. Received: {base_dir!r}")
    if version is None:
        return next_version(base_dir)
    version = _parse_version(version)
    taken = _taken(base_dir, version)
    canonical = taken == [str(version)]
    if taken and (not overwrite or remote or not canonical):
        where = ", ".join(repr(_join(base_dir, name)) for name in taken)
        if remote and overwrite:
            why = (
                "a version on an object store cannot be replaced atomically (and a running TF "
                "Serving does not reload a version number it already serves): export a new "
                "version instead"
            )
        elif overwrite:
            why = (
                "TF Serving reads these folder names as that same version; rename or remove "
                "them, or choose another version"
            )
        else:
            why = "pass overwrite=True (--overwrite) to replace it, or choose another version"
        raise ValueError(f"Version {version} already exists at {where}; {why}.")
    return version


def encoded_image_size(data):
    """``(height, width)`` int64 of an encoded image, read from its header without decoding.

    JPEG: ``tf.image.extract_jpeg_shape``; PNG: the IHDR chunk (big-endian width and height at
    bytes 16..24); GIF: the logical screen (little-endian uint16 at bytes 6..10); BMP: the
    info header (little-endian int32 at bytes 18..26, a negative height meaning top-down).
    Anything else (or a header too short to hold the size) gives ``(0, 0)``: the decoder then
    rejects it with its own error.
    """
    length = tf.strings.length(data)

    def field(pos, size, dtype, little_endian):
        raw = tf.io.decode_raw(tf.strings.substr(data, pos, size), dtype, little_endian)
        return tf.cast(raw, tf.int64)

    def jpeg():
        return tf.cast(tf.image.extract_jpeg_shape(data)[:2], tf.int64)

    def png():
        wh = field(16, 8, tf.int32, False)
        return tf.stack([wh[1], wh[0]])

    def gif():
        wh = field(6, 4, tf.uint16, True)
        return tf.stack([wh[1], wh[0]])

    def bmp():
        wh = field(18, 8, tf.int32, True)
        return tf.stack([tf.abs(wh[1]), wh[0]])

    def unknown():
        return tf.zeros([2], tf.int64)

    head = tf.strings.substr(data, 0, tf.minimum(length, 8))
    return tf.case(
        [
            (tf.strings.substr(head, 0, tf.minimum(length, 2)) == b"\xff\xd8", jpeg),
            (tf.logical_and(head == b"\x89PNG\r\n\x1a\n", length >= 24), png),
            (
                tf.logical_and(
                    tf.strings.substr(head, 0, tf.minimum(length, 3)) == b"GIF", length >= 10
                ),
                gif,
            ),
            (
                tf.logical_and(
                    tf.strings.substr(head, 0, tf.minimum(length, 2)) == b"BM", length >= 26
                ),
                bmp,
            ),
        ],
        default=unknown,
        exclusive=False,
    )


class _Serving:
    """Builds the serving functions around a full-resolution probability model."""

    def __init__(
        self, net, crf=None, bytes_max_side: int | None = 1024, max_pixels: int | None = None
    ):
        self.net = net
        self.crf = crf
        self.bytes_max_side = bytes_max_side
        self.max_pixels = max_pixels
        self.channels = input_channels_of(net)
        # One traced network shared by every signature (traced once, not once per endpoint).
        self._probs = tf.function(
            self._run_net,
            input_signature=[tf.TensorSpec([None, None, None, self.channels], tf.float32)],
        )

    def _run_net(self, images):
        return tf.cast(self.net(images, training=False), tf.float32)

    def probs(self, images):
        return self._probs(tf.cast(images, tf.float32))

    def default(self, images):
        images = check_images(
            images, where=f"serving_{_kind(images)}", runtime=True, channels=self.channels
        )
        probs = self.probs(images)
        return {"labels": tf.argmax(probs, axis=-1, output_type=tf.int32), "probabilities": probs}

    def with_crf(self, images):
        images = check_images(images, where="serving_crf", runtime=True, channels=self.channels)
        probs = self.probs(images)
        pixels = tf.cast(tf.clip_by_value(tf.round(tf.cast(images, tf.float32)), 0, 255), tf.uint8)
        refined = tf.cast(self.crf(pixels, probs), tf.float32)
        return {
            "labels": tf.argmax(refined, axis=-1, output_type=tf.int32),
            "probabilities": refined,
            "labels_before_crf": tf.argmax(probs, axis=-1, output_type=tf.int32),
        }

    def _one_encoded(self, data):
        if self.max_pixels:
            # Checked on the header, before decoding: a small file can hold a huge image.
            hw = encoded_image_size(data)
            check = tf.debugging.Assert(
                hw[0] * hw[1] <= self.max_pixels,
                [
                    "serving_bytes: image of (height, width)",
                    hw,
                    f"is over the limit of {self.max_pixels} pixels set at export "
                    "(export_saved_model(max_pixels=...), deeplab-tf export --max-pixels); "
                    "downscale it before sending",
                ],
            )
            with tf.control_dependencies([check]):
                data = tf.identity(data)
        image = tf.io.decode_image(data, channels=3, expand_animations=False)
        image.set_shape([None, None, 3])
        size = tf.shape(image)[:2]
        x = tf.cast(image, tf.float32)[None]
        if self.bytes_max_side:
            longest = tf.cast(tf.reduce_max(size), tf.float32)
            factor = tf.minimum(1.0, float(self.bytes_max_side) / longest)
            small = tf.maximum(1, tf.cast(tf.floor(tf.cast(size, tf.float32) * factor), tf.int32))
            x = tf.raw_ops.ResizeBilinear(images=x, size=small, align_corners=True)
        probs = self.probs(x)
        probs = tf.raw_ops.ResizeBilinear(images=probs, size=size, align_corners=True)
        labels = tf.argmax(probs[0], axis=-1, output_type=tf.int32)
        png = tf.io.encode_png(tf.cast(labels, tf.uint8)[..., None])
        return labels, size, png

    def encoded(self, image_bytes):
        image_bytes = tf.ensure_shape(image_bytes, [None], name="check_image_bytes_shape")
        count = tf.debugging.Assert(
            tf.size(image_bytes) > 0,
            ["serving_bytes: image_bytes must hold at least one encoded image; got shape",
             tf.shape(image_bytes)],
        )  # fmt: skip
        with tf.control_dependencies([count]):
            image_bytes = tf.identity(image_bytes)

        def run(data):
            labels, size, png = self._one_encoded(data)
            return tf.reshape(labels, [-1]), size, png

        flat, sizes, pngs = tf.map_fn(
            run,
            image_bytes,
            fn_output_signature=(
                tf.RaggedTensorSpec([None], tf.int32, ragged_rank=0),
                tf.TensorSpec([2], tf.int32),
                tf.TensorSpec([], tf.string),
            ),
        )
        return {
            "labels": _pad_flat_maps(flat, sizes),
            "heights": sizes[:, 0],
            "widths": sizes[:, 1],
            "label_png_bytes": pngs,
        }


def _kind(images):
    return "uint8" if images.dtype == tf.uint8 else "default"


def _pad_flat_maps(flat, sizes):
    """Ragged rows of flattened ``(H_i, W_i)`` maps -> ``(N, Hmax, Wmax)`` padded with -1."""
    hmax = tf.reduce_max(sizes[:, 0])
    wmax = tf.reduce_max(sizes[:, 1])
    y = tf.range(hmax)[None, :, None]
    x = tf.range(wmax)[None, None, :]
    h = sizes[:, 0][:, None, None]
    w = sizes[:, 1][:, None, None]
    starts = tf.cast(flat.row_starts(), tf.int32)[:, None, None]
    valid = (y < h) & (x < w)
    index = tf.where(valid, starts + y * w + x, 0)
    return tf.where(valid, tf.gather(flat.values, index), -1)


def _inference_net(model, scales, flip, fusion, upsample):
    if isinstance(model, MultiScaleInference):
        return model
    if not isinstance(model, keras.Model):
        raise ValueError(f"model must be a keras.Model. Received: {type(model).__name__}")
    return MultiScaleInference(model, scales=scales, flip=flip, fusion=fusion, upsample=upsample)


def export_saved_model(
    model,
    base_dir,
    version=None,
    *,
    scales=(1.0,),
    flip: bool = False,
    fusion: str = "max",
    upsample: str = "caffe",
    crf=None,
    warmup: bool = True,
    warmup_size=None,
    bytes_max_side: int | None = 1024,
    max_pixels: int | None = DEFAULT_MAX_PIXELS,
    overwrite: bool = False,
    verbose: bool = False,
) -> str:
    """Exports a DeepLab model as a TF Serving version folder, atomically.

    Args:
        model: a DeepLab ``keras.Model`` (logits) or a :class:`MultiScaleInference` wrapper.
        base_dir: the model's base path (``--model_base_path`` of TF Serving): a local folder,
            a ``file://`` URL, or a ``tf.io.gfile`` URL (``gs://``, ``s3://``; see the module
            docstring for how a version is published there).
        version: positive integer; default: one above every version TF Serving sees there
            (:func:`next_version`), chosen when the finished export is published (locally a
            concurrent export that published first pushes this one to the next number).
        scales, flip, fusion, upsample: multi-scale settings when ``model`` is a base model.
        crf: a ``deeplab_tf.crf.DenseCRF`` (or any callable ``(uint8 images, probs) ->
            probs`` made of TF ops) to add the ``serving_crf`` signature; None for none.
        warmup: write TF Serving warm-up requests (``assets.extra``): one PredictRequest per
            signature (``serving_bytes`` with a real JPEG), see :mod:`deeplab_tf.export.warmup`.
        warmup_size: (H, W) of the warm-up images; default: the model's input size if it is
            fixed, else 513x513.
        bytes_max_side: ``serving_bytes`` shrinks images whose longer side exceeds this before
            the network and resizes the scores back to the image's size; None disables.
        max_pixels: ``serving_bytes`` refuses (``InvalidArgumentError``) an image with more
            than this many pixels, read from the JPEG/PNG/GIF/BMP header before anything is
            decoded (a 200 KB PNG can hold 8000x8000 pixels, gigabytes once decoded and scored).
            Default: the same limit as ``deeplab-tf predict --max-pixels``; None disables.
        overwrite: replace an existing version folder (swapped in atomically; local base
            paths only). Without it an explicit ``version`` that another process publishes
            meanwhile raises ValueError. A running TF Serving does not reload a version number
            it already serves: export a new version to roll out a new model.

    Returns:
        The path of the written version folder.

    Example:
        >>> export_saved_model(model, "/models/deeplab", version=3, scales=(1.0, 0.75, 0.5))
    """
    checked = check_export_target(base_dir, version, overwrite)
    version = None if version is None else checked
    for key, value in (("max_pixels", max_pixels), ("bytes_max_side", bytes_max_side)):
        if value is not None and (
            isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 1
        ):
            raise ValueError(f"{key} must be a positive integer or None. Received: {key}={value!r}")
    base_dir = _local(base_dir)
    net = _inference_net(model, scales, flip, fusion, upsample)
    if warmup:
        if warmup_size is None:
            warmup_size = declared_input_size(net) or DEFAULT_SIZE
        warmup_size = check_image_size(warmup_size, "warmup_size")
    serving = _Serving(net, crf=crf, bytes_max_side=bytes_max_side, max_pixels=max_pixels)

    if not net.built:
        net.build((None, None, None, serving.channels))
    archive = keras.export.ExportArchive()
    archive.track(net)
    if crf is not None and isinstance(crf, (tf.Module, keras.layers.Layer)):
        archive.track(crf)
    channels = serving.channels
    image_spec = lambda dtype: tf.TensorSpec([None, None, None, channels], dtype, name="images")
    endpoints = {
        "serving_default": (serving.default, [image_spec(tf.float32)]),
        "serving_uint8": (serving.default, [image_spec(tf.uint8)]),
    }
    if channels == 3:  # JPEG/PNG bytes are RGB: no bytes signature for other channel counts
        endpoints["serving_bytes"] = (
            serving.encoded,
            [tf.TensorSpec([None], tf.string, name="image_bytes")],
        )
    if crf is not None:
        endpoints["serving_crf"] = (serving.with_crf, [image_spec(tf.float32)])
    for name, (fn, specs) in endpoints.items():
        archive.add_endpoint(name, fn, specs)

    def write(tmp):
        archive.write_out(tmp, verbose=verbose)
        if warmup:
            specs = {name: specs for name, (_, specs) in endpoints.items()}
            write_warmup_requests(tmp, specs, warmup_size, max_pixels=max_pixels)

    if is_remote(base_dir):
        with tempfile.TemporaryDirectory(prefix="deeplab_tf-export-") as work:
            tmp = os.path.join(work, "export")
            write(tmp)
            return publish_remote_version(tmp, base_dir, version)
    # named after "export", not an integer: TF Serving skips it while it is being written
    with atomic.scratch(os.path.join(base_dir, "export"), mkdir=False) as tmp:
        write(tmp)
        return publish_version(tmp, base_dir, version, overwrite)


def declared_input_size(model):
    """``(H, W)`` of a model's input when fixed (e.g. ``with_input_shape``), else None; for a
    :class:`MultiScaleInference` wrapper, that of the wrapped model."""
    base = model.model if isinstance(model, MultiScaleInference) else model
    try:
        shape = tuple(base.inputs[0].shape)
    except (AttributeError, IndexError, TypeError, ValueError):
        return None
    if len(shape) != 4 or not all(isinstance(d, int) and d > 0 for d in shape[1:3]):
        return None
    return int(shape[1]), int(shape[2])


def publish_version(tmp: str, base_dir: str, version=None, overwrite: bool = False) -> str:
    """Renames a complete export folder ``tmp`` to ``base_dir/<version>``, atomically.

    ``version=None`` takes the next free number at the moment of the rename (one above every
    name TF Serving reads as a version, :func:`version_number`). An explicit version replaces
    an existing folder only with ``overwrite`` (swapped in atomically).

    Raises:
        ValueError: ``version`` exists (published meanwhile by another process) and
            ``overwrite`` is False.
    """
    if version is None:
        return atomic.claim_next_version(tmp, base_dir, version_of=version_number)
    target = os.path.join(base_dir, str(version))
    try:
        if _taken(base_dir, version) not in ([], [str(version)]):
            raise FileExistsError(target)  # as "007": the server would see version 7 twice
        return atomic.publish(tmp, target, overwrite)
    except FileExistsError:
        raise ValueError(
            f"Version {version} already exists at {target!r} (another export published it "
            "while this one was being written); pass overwrite=True (--overwrite) to replace "
            "it, or choose another version."
        ) from None


def _tree(folder: str) -> tuple[list[tuple[str, ...]], list[tuple[str, ...]]]:
    """The sub-folders and files of a local folder, as relative path parts; the files in
    upload order: ``saved_model.pb`` last (see the module docstring)."""
    folders, files = [], []
    for root, dirs, names in os.walk(folder):
        rel = os.path.relpath(root, folder)
        parts = () if rel == os.curdir else tuple(rel.split(os.sep))
        folders += [(*parts, d) for d in sorted(dirs)]
        files += [(*parts, n) for n in sorted(names)]
    files.sort(key=lambda parts: parts == (SAVED_MODEL_FILE,))
    return folders, files


def _copy_tree(src: str, dst: str, tree) -> None:
    """Copies the ``tree`` (:func:`_tree`) of ``src`` to ``dst`` through ``tf.io.gfile``, file
    by file in the tree's order, never replacing a file. The listing comes from the local
    original, not from the object store (whose listings are prefix matches)."""
    folders, files = tree
    for parts in [(), *folders]:
        tf.io.gfile.makedirs(_join(dst, *parts))  # object stores: a marker object at most
    for parts in files:
        tf.io.gfile.copy(_join(src, *parts), _join(dst, *parts), overwrite=False)


def _remove_stale_remote_temps(base_dir: str) -> None:
    """Deletes the staging prefixes in ``base_dir`` left by dead processes of this host."""
    for name in tf.io.gfile.listdir(base_dir):
        name = name.rstrip("/")
        if atomic.temp_owner(name) and atomic.is_stale_temp(base_dir, name):
            try:
                tf.io.gfile.rmtree(_join(base_dir, name))
            except tf.errors.OpError:
                pass  # cleaning up is never a reason to fail an export


def publish_remote_version(tmp: str, base_dir: str, version=None) -> str:
    """Publishes a complete local export folder ``tmp`` as ``base_dir/<version>`` on a
    file system without atomic folder renames (``gs://``, ``s3://``): uploaded to a staging
    prefix that TF Serving ignores, then copied into the version folder with
    ``saved_model.pb`` last (the module docstring says why).

    Args:
        tmp: the complete local SavedModel folder.
        base_dir: the remote base path.
        version: the version, or None for :func:`next_version` (read just before the copy).

    Returns:
        The version folder's URL.

    Raises:
        ValueError: ``version`` exists (published meanwhile by another process).
    """
    gfile = tf.io.gfile
    gfile.makedirs(base_dir)
    _remove_stale_remote_temps(base_dir)
    staging = _join(base_dir, atomic.temp_name("export"))
    try:
        tree = _tree(tmp)
        _copy_tree(tmp, staging, tree)
        number = next_version(base_dir) if version is None else version
        target = _join(base_dir, str(number))
        if _taken(base_dir, number):
            raise ValueError(
                f"Version {number} already exists at {target!r} (another export published it "
                "while this one was being written); choose another version."
            )
        _copy_tree(staging, target, tree)
        return target
    finally:
        try:
            gfile.rmtree(staging)
        except tf.errors.OpError:
            pass
