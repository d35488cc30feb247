"""TF Serving warm-up requests, written without ``tensorflow-serving-api``.

TF Serving replays ``<version>/assets.extra/tf_serving_warmup_requests`` (a TFRecord file of
``tensorflow.serving.PredictionLog`` protos) before it marks a version available, so the first
real request does not pay for graph initialisation. The serving API package pins its own
TensorFlow minor (``tensorflow-serving-api 2.21`` requires ``tensorflow>=2.21``), so instead of
depending on it this module declares the few messages a warm-up record needs, with the field
numbers of ``tensorflow_serving/apis/{model,predict,prediction_log}.proto``, and builds them at
run time on TensorFlow's own ``TensorProto``. Protobuf's wire format carries field numbers and
types, not message names, so the bytes are those the official classes write (a test compares
them when ``tensorflow-serving-api`` is installed).
"""

from __future__ import annotations

import os

import numpy as np
import tensorflow as tf
from google.protobuf import descriptor_pb2, descriptor_pool, message_factory
from tensorflow.core.framework import tensor_pb2

WARMUP_FILE = "tf_serving_warmup_requests"

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


def write_warmup_requests(export_dir: str, image_size=(64, 64), num_requests: int = 1) -> str:
    """Writes ``assets.extra/tf_serving_warmup_requests`` into a SavedModel folder.

    Each record is a ``serving_default`` PredictRequest with one float32 RGB image of
    ``image_size``, so TF Serving runs the graph once before the first real request.

    Returns:
        The path of the written file.
    """
    folder = os.path.join(export_dir, "assets.extra")
    os.makedirs(folder, exist_ok=True)
    h, w = image_size
    rng = np.random.default_rng(0)
    path = os.path.join(folder, WARMUP_FILE)
    with tf.io.TFRecordWriter(path) as writer:
        for _ in range(num_requests):
            image = rng.uniform(0, 255, (1, h, w, 3)).astype(np.float32)
            writer.write(predict_log_record({"images": image}))
    return path
