"""Reading and writing Caffe ``.caffemodel`` files without Caffe.

A ``.caffemodel`` is a serialized ``caffe.NetParameter`` protobuf. This module parses it with the
``protobuf`` runtime and the minimal schema in ``caffe.proto`` (``caffe_pb2``), accepting both
layer encodings Caffe ever wrote:

* V2 ``layer`` (field 100, ``LayerParameter``, string types such as ``"Convolution"``), used by
  the DeepLab v2 release;
* legacy V1 ``layers`` (field 2, ``V1LayerParameter``, enum types such as ``CONVOLUTION``);

and both blob shape encodings: ``BlobShape shape.dim`` and the legacy 4-D
``num/channels/height/width``.

The writer (:func:`write_caffemodel`) exists so that tests can produce caffemodels with the real
layer names and shapes of each architecture. It encodes the large float arrays on the wire by
hand (a packed ``repeated float`` is its little-endian bytes), because filling a protobuf
repeated field from Python costs about one second per million values.
"""

from __future__ import annotations

import dataclasses
import os

import numpy as np

#: V1 enum names -> V2 type strings, for the layer types that matter to conversion.
V1_TYPE_NAMES = {
    "CONVOLUTION": "Convolution",
    "DECONVOLUTION": "Deconvolution",
    "INNER_PRODUCT": "InnerProduct",
    "POOLING": "Pooling",
    "RELU": "ReLU",
    "DROPOUT": "Dropout",
    "ELTWISE": "Eltwise",
    "CONCAT": "Concat",
    "SOFTMAX": "Softmax",
    "SOFTMAX_LOSS": "SoftmaxWithLoss",
    "DATA": "Data",
    "IMAGE_DATA": "ImageData",
    "SPLIT": "Split",
    "SILENCE": "Silence",
    "NONE": "None",
}
_V2_TO_V1 = {v: k for k, v in V1_TYPE_NAMES.items()}


@dataclasses.dataclass
class ConvSpec:
    """Caffe ``ConvolutionParameter`` resolved to (height, width) pairs with Caffe's defaults."""

    num_output: int
    kernel: tuple[int, int]
    stride: tuple[int, int] = (1, 1)
    pad: tuple[int, int] = (0, 0)
    dilation: tuple[int, int] = (1, 1)
    group: int = 1
    bias_term: bool = True


@dataclasses.dataclass
class CaffeLayer:
    """One layer of a caffemodel, decoded.

    Attributes:
        name: layer name (``res4b22_branch2a``).
        type: V2 type string (``Convolution``, ``BatchNorm``, ``Scale``, ``InnerProduct``...);
            V1 enum types are translated (``CONVOLUTION`` -> ``Convolution``).
        bottom: input blob names.
        top: output blob names.
        blobs: parameter arrays (float32), shaped as stored (Caffe layouts: OIHW kernels).
        conv: convolution hyper-parameters (Convolution layers only).
        bn_eps: BatchNorm epsilon (BatchNorm layers only).
        inner_product_transpose: InnerProduct ``transpose`` flag.
        pool: ``(method, kernel, stride, pad)`` for Pooling layers (method ``MAX``/``AVE``).
    """

    name: str
    type: str
    bottom: list = dataclasses.field(default_factory=list)
    top: list = dataclasses.field(default_factory=list)
    blobs: list = dataclasses.field(default_factory=list)
    conv: ConvSpec | None = None
    bn_eps: float | None = None
    inner_product_transpose: bool = False
    pool: tuple | None = None


@dataclasses.dataclass
class CaffeNet:
    """A decoded caffemodel: its name, its layers in file order and which encoding it used."""

    name: str
    layers: list
    encoding: str  # "v2" (``layer``) or "v1" (``layers``)
    source: str = "<bytes>"

    def by_name(self) -> dict:
        return {layer.name: layer for layer in self.layers}


def _pb2():
    from deeplab_tf.convert import caffe_pb2

    return caffe_pb2


# ---------------------------------------------------------------------------------------------
# Reading
# ---------------------------------------------------------------------------------------------


def _pair(values, h=None, w=None, default=None, what="value"):
    """Caffe's rule for kernel/stride/pad/dilation: explicit _h/_w win, else 1 or 2 values."""
    if h is not None and w is not None:
        return (int(h), int(w))
    values = [int(v) for v in values]
    if not values:
        return default
    if len(values) == 1:
        return (values[0], values[0])
    if len(values) == 2:
        return (values[0], values[1])
    raise ValueError(f"Only 2-D layers are supported; got {len(values)} {what} values {values}.")


def _conv_spec(p, layer_name: str) -> ConvSpec:
    kernel = _pair(
        p.kernel_size,
        p.kernel_h if p.HasField("kernel_h") else None,
        p.kernel_w if p.HasField("kernel_w") else None,
        what="kernel_size",
    )
    stride = _pair(
        p.stride,
        p.stride_h if p.HasField("stride_h") else None,
        p.stride_w if p.HasField("stride_w") else None,
        default=(1, 1),
        what="stride",
    )
    pad = _pair(
        p.pad,
        p.pad_h if p.HasField("pad_h") else None,
        p.pad_w if p.HasField("pad_w") else None,
        default=(0, 0),
        what="pad",
    )
    dilation = _pair(p.dilation, default=(1, 1), what="dilation")
    return ConvSpec(
        num_output=int(p.num_output),
        kernel=kernel,
        stride=stride,
        pad=pad,
        dilation=dilation,
        group=int(p.group),
        bias_term=bool(p.bias_term),
    )


def _pool_spec(p):
    method = _pb2().PoolingParameter.PoolMethod.Name(p.pool)
    kernel = (p.kernel_h, p.kernel_w) if p.HasField("kernel_h") else (p.kernel_size, p.kernel_size)
    stride = (p.stride_h, p.stride_w) if p.HasField("stride_h") else (p.stride, p.stride)
    pad = (p.pad_h, p.pad_w) if p.HasField("pad_h") else (p.pad, p.pad)
    return (method, tuple(map(int, kernel)), tuple(map(int, stride)), tuple(map(int, pad)))


def _blob_array(blob, layer_name: str, index: int) -> np.ndarray:
    if blob.HasField("shape"):
        shape = tuple(int(d) for d in blob.shape.dim)
    elif blob.num or blob.channels or blob.height or blob.width:
        # Legacy 4-D encoding; Caffe treats it as (num, channels, height, width).
        shape = (int(blob.num), int(blob.channels), int(blob.height), int(blob.width))
    else:
        shape = None
    if len(blob.data):
        data = np.array(blob.data, dtype=np.float32)
    elif len(blob.double_data):
        data = np.array(blob.double_data, dtype=np.float64).astype(np.float32)
    else:
        data = np.zeros((0,), np.float32)
    if shape is None:
        shape = (data.size,)
    expected = int(np.prod(shape, dtype=np.int64))
    if data.size != expected:
        raise ValueError(
            f"Blob {index} of layer {layer_name!r} holds {data.size} values but its shape "
            f"{shape} needs {expected}: the file is truncated or corrupt."
        )
    return data.reshape(shape)


def _decode_layer(layer, v1: bool) -> CaffeLayer:
    pb2 = _pb2()
    if v1:
        enum_name = pb2.V1LayerParameter.LayerType.Name(layer.type)
        type_ = V1_TYPE_NAMES.get(enum_name, enum_name)
    else:
        type_ = layer.type
    out = CaffeLayer(
        name=layer.name,
        type=type_,
        bottom=list(layer.bottom),
        top=list(layer.top),
        blobs=[_blob_array(b, layer.name, i) for i, b in enumerate(layer.blobs)],
    )
    if type_ in ("Convolution", "Deconvolution"):
        out.conv = _conv_spec(layer.convolution_param, layer.name)
    elif type_ == "InnerProduct":
        out.inner_product_transpose = bool(layer.inner_product_param.transpose)
    elif type_ == "Pooling":
        out.pool = _pool_spec(layer.pooling_param)
    elif type_ == "BatchNorm" and not v1:
        out.bn_eps = float(layer.batch_norm_param.eps)
    return out


def parse_caffemodel(data: bytes, source: str = "<bytes>") -> CaffeNet:
    """Decodes the bytes of a ``.caffemodel`` (a serialized ``NetParameter``).

    Args:
        data: the file's bytes.
        source: a name for error messages.

    Returns:
        A :class:`CaffeNet`.

    Raises:
        ValueError: if the bytes are not a NetParameter (corrupt or truncated), hold no layers,
            mix the V1 and V2 encodings, or a blob's data does not fill its shape.
    """
    from google.protobuf.message import DecodeError

    net = _pb2().NetParameter()
    try:
        net.ParseFromString(data)
    except (DecodeError, RuntimeError, ValueError) as err:
        raise ValueError(
            f"{source} is not a readable Caffe NetParameter (truncated or corrupt file?): {err}. "
            f"Received: {len(data)} bytes."
        ) from None
    if len(net.layer) and len(net.layers):
        raise ValueError(
            f"{source} mixes V2 'layer' ({len(net.layer)}) and V1 'layers' ({len(net.layers)}) "
            "fields; Caffe itself refuses such a file."
        )
    v1 = not len(net.layer)
    raw = net.layers if v1 else net.layer
    if not len(raw):
        raise ValueError(
            f"{source} holds no Caffe layers: it is not a .caffemodel, or it is corrupt. "
            f"Received: {len(data)} bytes."
        )
    layers = [_decode_layer(layer, v1) for layer in raw]
    return CaffeNet(name=net.name, layers=layers, encoding="v1" if v1 else "v2", source=source)


def read_caffemodel(path) -> CaffeNet:
    """Reads a ``.caffemodel`` file (V1 or V2 layers, either blob shape encoding).

    Args:
        path: the file's path.

    Returns:
        A :class:`CaffeNet` whose layers carry float32 numpy blobs in Caffe's layouts.

    Raises:
        FileNotFoundError: if the file does not exist.
        ValueError: if it is not a readable caffemodel (see :func:`parse_caffemodel`).

    Example:
        >>> net = read_caffemodel("train_iter_20000.caffemodel")  # doctest: +SKIP
        >>> [(l.name, l.type, [b.shape for b in l.blobs]) for l in net.layers][:2]  # doctest: +SKIP
    """
    path = os.fspath(path)
    if not os.path.isfile(path):
        raise FileNotFoundError(f"No such caffemodel file. Received: path={path!r}")
    with open(path, "rb") as f:
        data = f.read()
    return parse_caffemodel(data, source=path)


# ---------------------------------------------------------------------------------------------
# Writing
# ---------------------------------------------------------------------------------------------


def _varint(n: int) -> bytes:
    out = bytearray()
    while True:
        byte = n & 0x7F
        n >>= 7
        if n:
            out.append(byte | 0x80)
        else:
            out.append(byte)
            return bytes(out)


def _len_field(field_number: int, payload: bytes) -> bytes:
    """A length-delimited (wire type 2) field: tag, length, payload."""
    return _varint((field_number << 3) | 2) + _varint(len(payload)) + payload


def _encode_blob(array: np.ndarray, shape_encoding: str) -> bytes:
    pb2 = _pb2()
    array = np.asarray(array, dtype=np.float32)
    header = pb2.BlobProto()
    if shape_encoding == "shape":
        header.shape.dim.extend(int(d) for d in array.shape)
    else:
        dims = tuple(array.shape)
        if len(dims) > 4:
            raise ValueError(f"Legacy blob shapes have at most 4 dims. Received: {dims}")
        dims = (1,) * (4 - len(dims)) + dims
        header.num, header.channels, header.height, header.width = (int(d) for d in dims)
    # BlobProto.data is field 5, packed floats: the raw little-endian float32 bytes.
    return header.SerializeToString() + _len_field(5, array.astype("<f4").tobytes())


def _layer_message(layer: CaffeLayer, encoding: str):
    pb2 = _pb2()
    if encoding == "v2":
        msg = pb2.LayerParameter(name=layer.name, type=layer.type)
    else:
        enum_name = _V2_TO_V1.get(layer.type)
        if enum_name is None:
            raise ValueError(
                f"Layer type {layer.type!r} ({layer.name!r}) has no V1 encoding; write it with "
                "encoding='v2'."
            )
        msg = pb2.V1LayerParameter(
            name=layer.name, type=pb2.V1LayerParameter.LayerType.Value(enum_name)
        )
    msg.bottom.extend(layer.bottom)
    msg.top.extend(layer.top)
    if layer.conv is not None:
        c, p = layer.conv, msg.convolution_param
        p.num_output = c.num_output
        p.bias_term = c.bias_term
        if c.kernel[0] == c.kernel[1]:
            p.kernel_size.append(c.kernel[0])
        else:
            p.kernel_h, p.kernel_w = c.kernel
        if c.stride != (1, 1):
            if c.stride[0] == c.stride[1]:
                p.stride.append(c.stride[0])
            else:
                p.stride_h, p.stride_w = c.stride
        if c.pad != (0, 0):
            if c.pad[0] == c.pad[1]:
                p.pad.append(c.pad[0])
            else:
                p.pad_h, p.pad_w = c.pad
        if c.dilation != (1, 1):
            p.dilation.extend(
                [c.dilation[0]] if c.dilation[0] == c.dilation[1] else list(c.dilation)
            )
        if c.group != 1:
            p.group = c.group
    if layer.pool is not None:
        method, kernel, stride, pad = layer.pool
        p = msg.pooling_param
        p.pool = pb2.PoolingParameter.PoolMethod.Value(method)
        p.kernel_size, p.stride, p.pad = kernel[0], stride[0], pad[0]
    if layer.type == "InnerProduct" and layer.inner_product_transpose:
        msg.inner_product_param.transpose = True
    if layer.type == "BatchNorm":
        msg.batch_norm_param.use_global_stats = True
        if layer.bn_eps is not None:
            msg.batch_norm_param.eps = layer.bn_eps
    if layer.type == "Scale" and len(layer.blobs) > 1:
        msg.scale_param.bias_term = True
    return msg


def serialize_caffemodel(
    layers, name: str = "deeplab", encoding: str = "v2", shape_encoding: str = "shape"
) -> bytes:
    """Encodes layers as the bytes of a ``.caffemodel`` (see :func:`write_caffemodel`)."""
    if encoding not in ("v1", "v2"):
        raise ValueError(f"encoding must be 'v1' or 'v2'. Received: encoding={encoding!r}")
    if shape_encoding not in ("shape", "legacy"):
        raise ValueError(
            "shape_encoding must be 'shape' or 'legacy'. "
            f"Received: shape_encoding={shape_encoding!r}"
        )
    pb2 = _pb2()
    blob_field = 7 if encoding == "v2" else 6  # LayerParameter.blobs / V1LayerParameter.blobs
    layer_field = 100 if encoding == "v2" else 2  # NetParameter.layer / NetParameter.layers
    parts = [pb2.NetParameter(name=name).SerializeToString()]
    for layer in layers:
        body = _layer_message(layer, encoding).SerializeToString()
        body += b"".join(
            _len_field(blob_field, _encode_blob(b, shape_encoding)) for b in layer.blobs
        )
        parts.append(_len_field(layer_field, body))
    return b"".join(parts)


def write_caffemodel(
    path, layers, name: str = "deeplab", encoding: str = "v2", shape_encoding: str = "shape"
) -> str:
    """Writes layers as a ``.caffemodel`` that Caffe (and :func:`read_caffemodel`) can read.

    Args:
        path: output file (written atomically: temp file, then rename).
        layers: :class:`CaffeLayer` objects with float blobs in Caffe layouts.
        name: the NetParameter's name.
        encoding: ``"v2"`` (``layer`` field, string types) or ``"v1"`` (legacy ``layers``
            field, enum types; no BatchNorm/Scale exist there).
        shape_encoding: ``"shape"`` (``BlobShape``) or ``"legacy"`` (num/channels/height/width,
            shapes left-padded with 1s to 4-D as old Caffe did).

    Returns:
        The path written.
    """
    path = os.fspath(path)
    from deeplab_tf.atomic import write_bytes

    return write_bytes(path, serialize_caffemodel(layers, name, encoding, shape_encoding))
