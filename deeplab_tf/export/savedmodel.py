"""SavedModel export for TF Serving (docs/architecture.md#savedmodel-tf-serving).

Layout: ``<base>/<version>/saved_model.pb`` + ``variables/`` + ``assets.extra/`` with warm-up
requests. The version is written into a hidden temporary folder beside it (TF Serving only
loads integer-named folders) and renamed into place when complete, because TF Serving loads a
version the moment its folder appears. The rename never replaces an existing version unless
asked (``overwrite``); without an explicit version the number is chosen at the rename, so two
concurrent exports get two versions.

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

import keras
import numpy as np
import tensorflow as tf

from deeplab_tf import atomic
from deeplab_tf.export.warmup import write_warmup_requests
from deeplab_tf.inference.io import DEFAULT_MAX_PIXELS
from deeplab_tf.inference.multiscale import MultiScaleInference
from deeplab_tf.layers import check_images

SIGNATURES = ("serving_default", "serving_uint8", "serving_bytes", "serving_crf")


def _is_version_name(name: str) -> bool:
    return name.isdigit() and not name.startswith("0")


def existing_versions(base_dir: str) -> list[int]:
    """Integer version folders under ``base_dir`` (what TF Serving would load)."""
    if not os.path.isdir(base_dir):
        return []
    return sorted(int(n) for n in os.listdir(base_dir) if _is_version_name(n))


def check_export_target(base_dir, version=None, overwrite: bool = False) -> int:
    """Validates the output folder and version before any work; returns the version to write.

    Raises:
        ValueError: ``base_dir`` is a file, ``version`` is not a positive integer, or the
            version exists and ``overwrite`` is False.
    """
    base_dir = os.fspath(base_dir)
    if os.path.exists(base_dir) and not os.path.isdir(base_dir):
        raise ValueError(f"The export base path is a file, not a folder. Received: {base_dir!r}")
    if version is None:
        versions = existing_versions(base_dir)
        return versions[-1] + 1 if versions else 1
    if isinstance(version, bool) or not (
        isinstance(version, (int, np.integer)) or (isinstance(version, str) and version.isdigit())
    ):
        raise ValueError(
            f"version must be a positive integer (TF Serving's folder name). Received: {version!r}"
        )
    version = int(version)
    if version < 1:
        raise ValueError(f"version must be a positive integer. Received: {version!r}")
    target = os.path.join(base_dir, str(version))
    if os.path.exists(target) and not overwrite:
        raise ValueError(
            f"Version {version} already exists at {target!r}; pass overwrite=True "
            "(--overwrite) to replace it, or choose another version."
        )
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
        # One traced network shared by every signature (traced once, not once per endpoint).
        self._probs = tf.function(
            self._run_net, input_signature=[tf.TensorSpec([None, None, None, 3], tf.float32)]
        )

    def _run_net(self, images):
        return tf.cast(self.net(images, training=False), tf.float32)

    def probs(self, images):
        return self._probs(tf.cast(images, tf.float32))

    def default(self, images):
        images = check_images(images, where=f"serving_{_kind(images)}", runtime=True)
        probs = self.probs(images)
        return {"labels": tf.argmax(probs, axis=-1, output_type=tf.int32), "probabilities": probs}

    def with_crf(self, images):
        images = check_images(images, where="serving_crf", runtime=True)
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
    warmup_size=(64, 64),
    bytes_max_side: int | None = 1024,
    max_pixels: int | None = DEFAULT_MAX_PIXELS,
    overwrite: bool = False,
    verbose: bool = False,
) -> str:
    """Exports a DeepLab model as a TF Serving version folder, atomically.

    Args:
        model: a DeepLab ``keras.Model`` (logits) or a :class:`MultiScaleInference` wrapper.
        base_dir: the model's base path (``--model_base_path`` of TF Serving).
        version: positive integer; default: one above the highest existing version when the
            finished export is published (a concurrent export that published first pushes
            this one to the next number).
        scales, flip, fusion, upsample: multi-scale settings when ``model`` is a base model.
        crf: a ``deeplab_tf.crf.DenseCRF`` (or any callable ``(uint8 images, probs) ->
            probs`` made of TF ops) to add the ``serving_crf`` signature; None for none.
        warmup: write TF Serving warm-up requests (``assets.extra``; see
            :mod:`deeplab_tf.export.warmup`).
        warmup_size: (H, W) of the warm-up image.
        bytes_max_side: ``serving_bytes`` shrinks images whose longer side exceeds this before
            the network and resizes the scores back to the image's size; None disables.
        max_pixels: ``serving_bytes`` refuses (``InvalidArgumentError``) an image with more
            than this many pixels, read from the JPEG/PNG/GIF/BMP header before anything is
            decoded (a 200 KB PNG can hold 8000x8000 pixels, gigabytes once decoded and scored).
            Default: the same limit as ``deeplab-tf predict --max-pixels``; None disables.
        overwrite: replace an existing version folder (swapped in atomically). Without it an
            explicit ``version`` that another process publishes meanwhile raises ValueError.

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
    base_dir = os.fspath(base_dir)
    net = _inference_net(model, scales, flip, fusion, upsample)
    serving = _Serving(net, crf=crf, bytes_max_side=bytes_max_side, max_pixels=max_pixels)

    if not net.built:
        net.build((None, None, None, 3))
    archive = keras.export.ExportArchive()
    archive.track(net)
    if crf is not None and isinstance(crf, (tf.Module, keras.layers.Layer)):
        archive.track(crf)
    image_spec = lambda dtype: tf.TensorSpec([None, None, None, 3], dtype, name="images")
    archive.add_endpoint("serving_default", serving.default, [image_spec(tf.float32)])
    archive.add_endpoint("serving_uint8", serving.default, [image_spec(tf.uint8)])
    archive.add_endpoint(
        "serving_bytes", serving.encoded, [tf.TensorSpec([None], tf.string, name="image_bytes")]
    )
    if crf is not None:
        archive.add_endpoint("serving_crf", serving.with_crf, [image_spec(tf.float32)])

    # named after "export", not an integer: TF Serving skips it while it is being written
    with atomic.scratch(os.path.join(base_dir, "export"), mkdir=False) as tmp:
        archive.write_out(tmp, verbose=verbose)
        if warmup:
            write_warmup_requests(tmp, warmup_size)
        return publish_version(tmp, base_dir, version, overwrite)


def publish_version(tmp: str, base_dir: str, version=None, overwrite: bool = False) -> str:
    """Renames a complete export folder ``tmp`` to ``base_dir/<version>``, atomically.

    ``version=None`` takes the next free number at the moment of the rename. An explicit
    version replaces an existing folder only with ``overwrite`` (swapped in atomically).

    Raises:
        ValueError: ``version`` exists (published meanwhile by another process) and
            ``overwrite`` is False.
    """
    if version is None:
        return atomic.claim_next_version(tmp, base_dir, is_version=_is_version_name)
    target = os.path.join(base_dir, str(version))
    try:
        return atomic.publish(tmp, target, overwrite)
    except FileExistsError:
        raise ValueError(
            f"Version {version} already exists at {target!r} (another export published it "
            "while this one was being written); pass overwrite=True (--overwrite) to replace "
            "it, or choose another version."
        ) from None
