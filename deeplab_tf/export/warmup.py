"""TF Serving warm-up requests, written without ``tensorflow-serving-api``.

TF Serving reads ``<version>/assets.extra/tf_serving_warmup_requests``, a TFRecord file of
``tensorflow.serving.PredictionLog`` protos, after loading a version and before marking it
available: it runs every record (``num_request_iterations`` times, default once; more than
:data:`MAX_RECORDS` records, or a record that fails, fails the load). Only what the records
exercise is warmed: a request of another signature, image size or batch size can still pay
first-run costs (TensorFlow Serving's ``saved_model_warmup_util.cc``, ``saved_model_warmup.md``).
So the export writes one PredictRequest per exported signature, batch 1, at the size the
clients will most likely send (:func:`warmup_records`).

The serving API package pins its own TensorFlow minor (``tensorflow-serving-api 2.21``
requires ``tensorflow>=2.21``), so instead of depending on it this module declares the few
messages a warm-up record needs, with the field numbers of
``tensorflow_serving/apis/{model,predict,prediction_log}.proto``, and builds them at run time
on TensorFlow's own ``TensorProto``. Protobuf's wire format carries field numbers and types,
not message names, so the bytes are those the official classes write (a test compares them
when ``tensorflow-serving-api`` is installed).
"""

from __future__ import annotations

import math
import os

import numpy as np
import tensorflow as tf
from google.protobuf import descriptor_pb2, descriptor_pool, message_factory
from tensorflow.core.framework import tensor_pb2

from deeplab_tf import atomic

WARMUP_FILE = "tf_serving_warmup_requests"
#: TF Serving refuses a version whose warm-up file holds more records than this
#: (``WarmupConsts::kMaxNumRecords``).
MAX_RECORDS = 1000
#: Warm-up image size for a model that takes any size: the evaluation crop, which covers every
#: VOC image (docs/architecture.md#data-augmentation).
DEFAULT_SIZE = (513, 513)

_FILE = "deeplab_tf/export/serving_warmup.proto"
_PACKAGE = "deeplab_tf.serving_warmup"


def _file_descriptor() -> descriptor_pb2.FileDescriptorProto:
    field = descriptor_pb2.FieldDescriptorProto
    fdp = descriptor_pb2.FileDescriptorProto(
        name=_FILE,
        package=_PACKAGE,
        syntax="proto3",
        dependency=[tensor_pb2.DESCRIPTOR.name],  # tensorflow/core/framework/tensor.proto
    )

    def add_field(message, name, number, kind, type_name=None, repeated=False):
        message.field.add(
            name=name,
            number=number,
            type=kind,
            type_name=type_name,
            label=field.LABEL_REPEATED if repeated else field.LABEL_OPTIONAL,
        )

    # model.proto: ModelSpec { string name = 1; ...; string signature_name = 3; }
    spec = fdp.message_type.add(name="ModelSpec")
    add_field(spec, "name", 1, field.TYPE_STRING)
    add_field(spec, "signature_name", 3, field.TYPE_STRING)
    # predict.proto: PredictRequest { ModelSpec model_spec = 1;
    #                                 map<string, TensorProto> inputs = 2; ... }
    request = fdp.message_type.add(name="PredictRequest")
    add_field(request, "model_spec", 1, field.TYPE_MESSAGE, f".{_PACKAGE}.ModelSpec")
    entry = request.nested_type.add(name="InputsEntry")
    entry.options.map_entry = True
    add_field(entry, "key", 1, field.TYPE_STRING)
    add_field(entry, "value", 2, field.TYPE_MESSAGE, ".tensorflow.TensorProto")
    add_field(
        request, "inputs", 2, field.TYPE_MESSAGE, f".{_PACKAGE}.PredictRequest.InputsEntry", True
    )
    # prediction_log.proto: PredictLog { PredictRequest request = 1; ... }
    log = fdp.message_type.add(name="PredictLog")
    add_field(log, "request", 1, field.TYPE_MESSAGE, f".{_PACKAGE}.PredictRequest")
    # PredictionLog { ...; oneof log_type { ...; PredictLog predict_log = 6; ... } }
    prediction_log = fdp.message_type.add(name="PredictionLog")
    prediction_log.oneof_decl.add(name="log_type")
    add_field(prediction_log, "predict_log", 6, field.TYPE_MESSAGE, f".{_PACKAGE}.PredictLog")
    prediction_log.field[0].oneof_index = 0
    return fdp


def _message_class(name: str):
    pool = descriptor_pool.Default()
    try:
        pool.FindFileByName(_FILE)
    except KeyError:
        pool.AddSerializedFile(_file_descriptor().SerializeToString())
    return message_factory.GetMessageClass(pool.FindMessageTypeByName(f"{_PACKAGE}.{name}"))


def predict_log_record(inputs: dict, signature_name: str = "serving_default") -> bytes:
    """One serialized ``PredictionLog`` holding a ``PredictRequest`` for ``signature_name``.

    Args:
        inputs: input name -> array (``tf.make_tensor_proto`` converts it).
        signature_name: the signature the request calls.

    Returns:
        The record's bytes, as ``tensorflow.serving.PredictionLog.SerializeToString()``.
    """
    log = _message_class("PredictionLog")()
    request = log.predict_log.request
    request.model_spec.signature_name = signature_name
    for name, value in inputs.items():
        request.inputs[name].CopyFrom(tf.make_tensor_proto(value))
    return log.SerializeToString()


def warmup_image(image_size, seed: int = 0) -> np.ndarray:
    """A smooth, photo-like RGB uint8 image ``(H, W, 3)`` (random colours at 1/16 resolution,
    bilinearly enlarged): it compresses like a photo, unlike pixel noise."""
    h, w = check_image_size(image_size)
    rng = np.random.default_rng(seed)
    coarse = rng.integers(0, 256, (1, h // 16 + 2, w // 16 + 2, 3)).astype(np.float32)
    image = tf.image.resize(coarse, (h, w), method="bilinear")[0].numpy()
    return np.clip(np.round(image), 0, 255).astype(np.uint8)


def check_image_size(image_size, what: str = "image_size"):
    """``(H, W)`` as two ints.

    Raises:
        ValueError: not two positive integers (the message names ``what``).
    """
    try:
        h, w = image_size
    except (TypeError, ValueError):
        h = w = None
    if any(isinstance(v, bool) or not isinstance(v, (int, np.integer)) or v < 1 for v in (h, w)):
        raise ValueError(f"{what} must be (height, width) in pixels. Received: {image_size!r}")
    return int(h), int(w)


def _fit(size, max_pixels):
    """``size`` shrunk (aspect kept) to at most ``max_pixels`` pixels."""
    h, w = size
    if not max_pixels or h * w <= max_pixels:
        return h, w
    factor = math.sqrt(max_pixels / (h * w))
    return max(1, math.floor(h * factor)), max(1, math.floor(w * factor))


def warmup_inputs(specs, image_size=DEFAULT_SIZE, max_pixels: int | None = None) -> dict:
    """The inputs of one warm-up request (batch 1) for a signature taking ``specs``.

    Args:
        specs: the signature's input ``tf.TensorSpec`` s (their names are the input keys):
            ``(N, H, W, 3)`` images of a real or integer dtype get one smooth RGB image of
            ``image_size``; a ``(N,)`` string input gets that image as a real JPEG file,
            shrunk to at most ``max_pixels`` pixels (``serving_bytes`` refuses bigger ones,
            and one failing record fails the whole load).
        image_size: ``(H, W)``.
        max_pixels: the export's pixel limit on encoded images, or None.

    Returns:
        ``{input name: array}``.

    Raises:
        ValueError: an input that is neither an image batch nor a batch of encoded images.
    """
    size = check_image_size(image_size)
    image = warmup_image(size)
    inputs = {}
    for spec in specs:
        dtype = tf.as_dtype(spec.dtype)
        shape = tf.TensorShape(spec.shape)
        if dtype == tf.string and shape.rank == 1:
            fitted = _fit(size, max_pixels)
            small = image if fitted == size else warmup_image(fitted)
            jpeg = tf.io.encode_jpeg(small, quality=90).numpy()
            inputs[spec.name] = np.array([jpeg], dtype=object)
        elif (dtype.is_floating or dtype.is_integer) and shape.rank == 4 and shape[-1] == 3:
            inputs[spec.name] = image[None].astype(dtype.as_numpy_dtype)
        elif (dtype.is_floating or dtype.is_integer) and shape.rank == 4 and shape[-1]:
            # a model built with input_channels=N: the smooth image's channels, cycled
            channels = [image[..., i % 3] for i in range(int(shape[-1]))]
            inputs[spec.name] = np.stack(channels, axis=-1)[None].astype(dtype.as_numpy_dtype)
        else:
            raise ValueError(
                f"No warm-up input for {spec.name!r} of {dtype.name} {shape}: expected "
                "(N, H, W, C) images or (N,) encoded image strings"
            )
    return inputs


def warmup_records(signatures: dict, image_size=DEFAULT_SIZE, max_pixels=None) -> list[bytes]:
    """One serialized ``PredictionLog`` per signature, in the order given.

    Args:
        signatures: signature name -> its input ``tf.TensorSpec`` s.
        image_size: ``(H, W)`` of the warm-up images.
        max_pixels: the pixel limit of encoded-image inputs (see :func:`warmup_inputs`).

    Raises:
        ValueError: no signatures, more than :data:`MAX_RECORDS` of them, or an input
            :func:`warmup_inputs` cannot fill.
    """
    if not signatures or len(signatures) > MAX_RECORDS:
        raise ValueError(
            f"Expected 1 to {MAX_RECORDS} signatures to warm up (TF Serving's limit on warm-up "
            f"records). Received: {len(signatures or ())}"
        )
    return [
        predict_log_record(warmup_inputs(specs, image_size, max_pixels), name)
        for name, specs in signatures.items()
    ]


def write_warmup_requests(
    export_dir: str, signatures: dict, image_size=DEFAULT_SIZE, max_pixels: int | None = None
) -> str:
    """Writes ``assets.extra/tf_serving_warmup_requests`` into a local SavedModel folder.

    One record per signature (:func:`warmup_records`), written atomically; an existing file is
    never replaced.

    Args:
        export_dir: the SavedModel folder (not yet published: TF Serving reads the file once,
            when it loads the version).
        signatures: signature name -> its input ``tf.TensorSpec`` s.
        image_size: ``(H, W)`` of the warm-up images.
        max_pixels: the pixel limit of encoded-image inputs.

    Returns:
        The path of the written file.

    Raises:
        FileExistsError: the file exists.
    """
    records = warmup_records(signatures, image_size, max_pixels)
    folder = os.path.join(export_dir, "assets.extra")
    os.makedirs(folder, exist_ok=True)

    def write(tmp):
        with tf.io.TFRecordWriter(tmp) as writer:
            for record in records:
                writer.write(record)

    return atomic.atomic_write(os.path.join(folder, WARMUP_FILE), write, overwrite=False)
