"""Maps the layers of a parsed caffemodel onto a DeepLab v2 Keras model, checking everything.

Mapping (docs/architecture.md#released-weights):

* ``Convolution``: kernel OIHW -> HWIO, bias as is. Every convolution's kernel (from the weight
  blob), stride, dilation and pad is checked against the Keras layer (kernel from its weights,
  stride and dilation from its config, pad from the ``{name}_pad`` ``CaffePadding`` layer in front
  of it or, for dilated convolutions, from the ``PaddedConv2D`` itself), as are ``group == 1``
  and the presence of a bias.
* ``BatchNorm`` + ``Scale``: one Keras ``BatchNormalization`` named like the Caffe BatchNorm
  (``bn2a_branch1``): moving mean and variance are the stored sums divided by the scale-factor
  blob (Caffe: a zero factor means zero statistics), gamma/beta come from the ``Scale`` layer
  that works in place on the BatchNorm's output. The epsilon must match (Caffe's 1e-5).
* ``InnerProduct``: onto a ``Dense`` (kernel transposed) or a convolution whose kernel holds the
  same numbers (``(O, C*kh*kw)`` reshaped to OIHW).
* The MSC copies of the release's multi-scale nets (``*_res075``, ``*_res05``), which share their
  parameters with the full-scale layers, are skipped.
* Classifiers are matched by role, not by dataset tag: ``fc8_<tag>[_i]`` -> ``fc8_voc12[_i]``
  and ``fc1_<tag>_c<i>`` -> ``fc1_voc12_c<i>``, so a COCO- or Cityscapes-tagged file loads too.

Every mismatch, every weighted layer of the file without a place in the model and every weighted
layer of the model without weights in the file is reported in one ``ConversionError`` before a
single weight is assigned, so a failed conversion never leaves a half-loaded model.
"""

from __future__ import annotations

import dataclasses
import re

import numpy as np

from deeplab_tf.convert.caffemodel import CaffeNet, read_caffemodel

MSC_SUFFIXES = ("_res075", "_res05")
WEIGHTED_TYPES = ("Convolution", "InnerProduct", "BatchNorm", "Scale")

_RESNET_CLASSIFIER = re.compile(r"^fc1(?:_([A-Za-z][A-Za-z0-9]*))?_c(\d+)$")
_VGG_CLASSIFIER = re.compile(r"^fc8(?:_([A-Za-z][A-Za-z0-9]*))?(?:_(\d+))?$")
_ANY_CLASSIFIER = re.compile(r"^fc[18](_|$)")


class ConversionError(ValueError):
    """Raised when a caffemodel does not fit the Keras model; lists every problem found."""


@dataclasses.dataclass
class ConversionReport:
    """What a conversion did.

    Attributes:
        mapped: ``(caffe layer names, keras layer name)`` pairs, in file order.
        skipped_msc: MSC copies that were skipped.
        skipped_classifier: file classifier layers left out (``include_classifier=False``).
        encoding: ``"v1"`` or ``"v2"``.
        classifier_tag: dataset tag of the file's classifier names (``voc12``), if any.
        num_tensors: number of Keras variables assigned.
    """

    mapped: list = dataclasses.field(default_factory=list)
    skipped_msc: list = dataclasses.field(default_factory=list)
    skipped_classifier: list = dataclasses.field(default_factory=list)
    encoding: str = "v2"
    classifier_tag: str | None = None
    num_tensors: int = 0


def is_msc_copy(name: str) -> bool:
    """True for the shared multi-scale copies of the release (``conv1_res075``, ``res2a_res05``)."""
    return name.endswith(MSC_SUFFIXES)


def keras_classifier_name(caffe_name: str):
    """``fc1_coco_c2`` -> ``("fc1_voc12_c2", "coco")``; ``fc8_voc12_3`` -> ``("fc8_voc12_3", ...)``.

    Returns ``(None, None)`` for names that are not DeepLab classifier names.
    """
    m = _RESNET_CLASSIFIER.match(caffe_name)
    if m:
        return f"fc1_voc12_c{m.group(2)}", m.group(1)
    m = _VGG_CLASSIFIER.match(caffe_name)
    if m:
        return "fc8_voc12" + (f"_{m.group(2)}" if m.group(2) else ""), m.group(1)
    return None, None


def infer_num_classes(net: CaffeNet):
    """Number of classes of the file's classifier (its first classifier conv's outputs), or None."""
    for layer in net.layers:
        if is_msc_copy(layer.name) or layer.type not in ("Convolution", "InnerProduct"):
            continue
        if keras_classifier_name(layer.name)[0] and layer.blobs:
            w = layer.blobs[0]
            return int(w.shape[0] if layer.type == "Convolution" else _as_matrix(w).shape[0])
    return None


def _vector(a: np.ndarray, n: int, what: str, errors: list):
    a = np.asarray(a)
    if a.size != n or sum(d != 1 for d in a.shape) > 1:
        errors.append(f"{what}: file shape {tuple(a.shape)}, model expects ({n},)")
        return None
    return a.reshape(n).astype(np.float32)


def _as_matrix(a: np.ndarray) -> np.ndarray:
    """InnerProduct weights: ``(O, I)``, also from the legacy ``(1, 1, O, I)`` encoding."""
    a = np.asarray(a)
    while a.ndim > 2 and a.shape[0] == 1:
        a = a[0]
    return a


def _keras_weighted_layers(model) -> dict:
    import keras

    out = {}
    for layer in model.layers:
        if isinstance(layer, keras.Model):
            raise ConversionError(
                f"Nested model {layer.name!r}: conversion expects a flat DeepLabV2 model."
            )
        if layer.weights:
            out[layer.name] = layer
    return out


def _keras_pad(model, name: str):
    from deeplab_tf.layers import CaffePadding, PaddedConv2D

    if isinstance(model.get_layer(name), PaddedConv2D):  # padding inside the conv
        return (model.get_layer(name).pad, model.get_layer(name).pad)
    try:
        pad_layer = model.get_layer(f"{name}_pad")
    except ValueError:
        return (0, 0)
    if not isinstance(pad_layer, CaffePadding):
        return None
    return (pad_layer.pad, pad_layer.pad)


def _plan_conv(layer, keras_layer, model, errors, adapt=None):
    """Checks a Convolution/InnerProduct against a Keras Conv2D; returns {var: array} or None.

    ``adapt``: ``(first conv name, fn)`` for a model built with ``input_channels`` / per-channel
    normalisation: that layer's 3-channel kernel is adapted before the checks
    (:mod:`deeplab_tf.models.channels`)."""
    import keras

    caffe, kname = layer.name, keras_layer.name
    where = f"{caffe} -> {kname}" if caffe != kname else caffe
    kernel_shape = tuple(keras_layer.kernel.shape)  # (kh, kw, cin, cout)
    w = layer.blobs[0] if layer.blobs else None
    if w is None:
        errors.append(f"{where}: the file's layer has no weight blob")
        return None
    if layer.type == "InnerProduct":
        m = _as_matrix(w)
        if layer.inner_product_transpose:
            m = m.T
        kh, kw, cin, cout = kernel_shape
        if m.ndim != 2 or m.shape != (cout, cin * kh * kw):
            errors.append(
                f"{where}: InnerProduct weights {tuple(w.shape)} cannot fill the kernel "
                f"{kernel_shape} (needs ({cout}, {cin * kh * kw}))"
            )
            return None
        w = m.reshape(cout, cin, kh, kw)
        spec = None
    else:
        spec = layer.conv
    if w.ndim != 4:
        errors.append(f"{where}: convolution weights must be 4-D OIHW; file has {tuple(w.shape)}")
        return None
    if adapt is not None and kname == adapt[0] and w.shape[1] == 3:
        w = adapt[1](np.asarray(w).transpose(2, 3, 1, 0)).transpose(3, 2, 0, 1)
    o, i, kh, kw = w.shape
    if not isinstance(keras_layer, keras.layers.Conv2D) or keras_layer.padding != "valid":
        errors.append(f"{where}: model layer is not a padding='valid' Conv2D")
        return None
    checks = [("kernel (from the weights)", (kh, kw), tuple(keras_layer.kernel_size))]
    checks.append(("output channels", o, kernel_shape[3]))
    checks.append(("input channels", i, kernel_shape[2]))
    if spec is not None:
        if spec.kernel is not None and tuple(spec.kernel) != (kh, kw):
            errors.append(
                f"{where}: the file is inconsistent: kernel_size {spec.kernel} but weights "
                f"{tuple(w.shape)}"
            )
        checks.append(("stride", tuple(spec.stride), tuple(keras_layer.strides)))
        checks.append(("dilation", tuple(spec.dilation), tuple(keras_layer.dilation_rate)))
        pad = _keras_pad(model, kname)
        if pad is None:
            errors.append(f"{where}: model layer {kname}_pad is not a CaffePadding layer")
        else:
            checks.append(("pad", tuple(spec.pad), pad))
        checks.append(("group", spec.group, keras_layer.groups))
    has_bias = len(layer.blobs) > 1
    checks.append(("bias", has_bias, bool(keras_layer.use_bias)))
    ok = True
    for what, file_value, model_value in checks:
        if file_value != model_value:
            errors.append(f"{where}: {what} in file {file_value} != model {model_value}")
            ok = False
    if not ok:
        return None
    values = {"kernel": np.ascontiguousarray(w.transpose(2, 3, 1, 0), dtype=np.float32)}
    if has_bias:
        bias = _vector(layer.blobs[1], o, f"{where}: bias", errors)
        if bias is None:
            return None
        values["bias"] = bias
    return values


def _plan_dense(layer, keras_layer, errors):
    where = layer.name
    if layer.type != "InnerProduct" or not layer.blobs:
        errors.append(f"{where}: a {layer.type} layer cannot fill Dense layer {keras_layer.name}")
        return None
    m = _as_matrix(layer.blobs[0])
    kernel = m if layer.inner_product_transpose else m.T
    if tuple(kernel.shape) != tuple(keras_layer.kernel.shape):
        errors.append(
            f"{where}: InnerProduct weights {tuple(layer.blobs[0].shape)} do not fit Dense kernel "
            f"{tuple(keras_layer.kernel.shape)}"
        )
        return None
    values = {"kernel": kernel.astype(np.float32)}
    has_bias = len(layer.blobs) > 1
    if has_bias != bool(keras_layer.use_bias):
        errors.append(f"{where}: bias in file {has_bias} != model {bool(keras_layer.use_bias)}")
        return None
    if has_bias:
        bias = _vector(layer.blobs[1], kernel.shape[1], f"{where}: bias", errors)
        if bias is None:
            return None
        values["bias"] = bias
    return values


def _plan_bn(bn, scale, keras_layer, errors):
    where = bn.name
    n = int(keras_layer.moving_mean.shape[0])
    if len(bn.blobs) != 3:
        errors.append(
            f"{where}: BatchNorm needs 3 blobs (mean, variance, factor); has {len(bn.blobs)}"
        )
        return None
    factor = float(np.asarray(bn.blobs[2]).reshape(-1)[0])
    inv = 0.0 if factor == 0 else 1.0 / factor  # Caffe's rule for a zero factor
    mean = _vector(bn.blobs[0], n, f"{where}: mean", errors)
    var = _vector(bn.blobs[1], n, f"{where}: variance", errors)
    if mean is None or var is None:
        return None
    eps = bn.bn_eps if bn.bn_eps is not None else 1e-5
    if not np.isclose(eps, keras_layer.epsilon, rtol=1e-4, atol=0):
        errors.append(f"{where}: epsilon in file {eps:g} != model {keras_layer.epsilon:g}")
        return None
    values = {
        "moving_mean": (mean.astype(np.float64) * inv).astype(np.float32),
        "moving_variance": (var.astype(np.float64) * inv).astype(np.float32),
    }
    gamma = np.ones(n, np.float32)
    beta = np.zeros(n, np.float32)
    if scale is not None:
        if not scale.blobs:
            errors.append(f"{scale.name}: Scale layer has no blobs")
            return None
        gamma = _vector(scale.blobs[0], n, f"{scale.name}: gamma", errors)
        if len(scale.blobs) > 1:
            beta = _vector(scale.blobs[1], n, f"{scale.name}: beta", errors)
        if gamma is None or beta is None:
            return None
    if keras_layer.scale:
        values["gamma"] = gamma
    elif not np.allclose(gamma, 1.0):
        errors.append(f"{where}: the file scales (Scale layer) but the model's BN has scale=False")
    if keras_layer.center:
        values["beta"] = beta
    elif not np.allclose(beta, 0.0):
        errors.append(f"{where}: the file shifts (Scale bias) but the model's BN has center=False")
    return values


def _bullet(items, limit=12):
    items = list(items)
    shown = ", ".join(items[:limit])
    return shown + (f", ... ({len(items) - limit} more)" if len(items) > limit else "")


def map_caffe_to_keras(net: CaffeNet, model, include_classifier: bool = True):
    """Works out, and checks, every assignment of a caffemodel's weights to a Keras model.

    Args:
        net: a parsed caffemodel (:func:`read_caffemodel`).
        model: the Keras model (e.g. :func:`DeepLabV2` of the same architecture).
        include_classifier: map the file's classifier; ``False`` leaves the model's classifier
            as initialised and ignores the file's (e.g. COCO ``init.caffemodel`` -> VOC).

    Returns:
        ``(plan, report)`` where ``plan`` maps Keras layer names to ``{variable name: array}``.

    Raises:
        ConversionError: listing every mismatch and every layer left unmapped on either side.
    """
    import keras

    from deeplab_tf.models.deeplab import deeplab_config, find_deeplab

    keras_layers = _keras_weighted_layers(model)
    # The model says which layers are its classifier (its config), the file's are found by role.
    net_classifier = find_deeplab(model)
    if net_classifier is None:
        deeplab_config(model)  # raises TypeError with the migration hint
    classifier = set(net_classifier.classifier_layer_names)
    from deeplab_tf.models.channels import first_conv_adapter

    adapt = first_conv_adapter(net_classifier)  # input_channels != 3: conv1 adapted
    report = ConversionReport(encoding=net.encoding)
    errors: list[str] = []
    plan: dict = {}
    sources: dict = {}  # keras name -> caffe names
    unmapped_file: list[str] = []
    bn_by_blob: dict = {}  # in-place blob name -> BatchNorm layer
    scale_for: dict = {}  # BatchNorm name -> Scale layer
    seen = set()

    ordered = []
    for layer in net.layers:
        if not layer.blobs and layer.type not in ("BatchNorm",):
            continue  # ReLU, Pooling, Eltwise, Interp, data layers... (no parameters)
        if is_msc_copy(layer.name):
            report.skipped_msc.append(layer.name)
            continue
        if layer.name in seen:
            errors.append(f"{layer.name}: appears twice in the file")
            continue
        seen.add(layer.name)
        if not include_classifier and _ANY_CLASSIFIER.match(layer.name):
            report.skipped_classifier.append(layer.name)
            continue
        if layer.type == "BatchNorm":
            for blob in layer.top or [layer.name]:
                bn_by_blob[blob] = layer
            ordered.append(layer)
        elif layer.type == "Scale":
            bn = bn_by_blob.get(layer.bottom[0]) if layer.bottom else None
            if bn is None:
                bn_name = (
                    "bn" + layer.name[len("scale") :] if layer.name.startswith("scale") else None
                )
                bn = next((x for x in ordered if x.name == bn_name and x.type == "BatchNorm"), None)
            if bn is None:
                unmapped_file.append(f"{layer.name} (Scale with no BatchNorm before it)")
            else:
                scale_for[bn.name] = layer
        else:
            ordered.append(layer)

    for layer in ordered:
        if layer.type in ("Convolution", "InnerProduct"):
            kname, tag = layer.name, None
            if kname not in keras_layers or kname in classifier:
                mapped, tag = keras_classifier_name(layer.name)
                if mapped is not None:
                    kname = mapped
            if kname not in keras_layers:
                unmapped_file.append(f"{layer.name} ({layer.type} {tuple(layer.blobs[0].shape)})")
                continue
            if tag is not None:
                report.classifier_tag = tag
            target = keras_layers[kname]
            if isinstance(target, keras.layers.Dense):
                values = _plan_dense(layer, target, errors)
            else:
                values = _plan_conv(layer, target, model, errors, adapt)
        elif layer.type == "BatchNorm":
            kname = layer.name
            target = keras_layers.get(kname)
            if not isinstance(target, keras.layers.BatchNormalization):
                unmapped_file.append(f"{layer.name} (BatchNorm)")
                continue
            values = _plan_bn(layer, scale_for.get(layer.name), target, errors)
        else:
            unmapped_file.append(f"{layer.name} ({layer.type} with {len(layer.blobs)} blobs)")
            continue
        if kname in sources:
            errors.append(
                f"{layer.name}: model layer {kname} is already filled by {sources[kname]}"
            )
            continue
        names = [layer.name] + ([scale_for[layer.name].name] if layer.name in scale_for else [])
        sources[kname] = names
        if values is not None:
            plan[kname] = values
            report.mapped.append((names, kname))

    missing = [
        n
        for n in keras_layers
        if n not in sources and not (not include_classifier and n in classifier)
    ]
    if unmapped_file:
        errors.append("layers of the file with no place in the model: " + _bullet(unmapped_file))
    if missing:
        errors.append("model layers with no weights in the file: " + _bullet(missing))
    if errors:
        from deeplab_tf.convert.architectures import guess_architecture

        guess = guess_architecture(net)
        hint = f" The file looks like {guess}." if guess else ""
        if (
            include_classifier
            and any(_ANY_CLASSIFIER.match(u.split(" ")[0]) for u in unmapped_file)
            and not any(m not in classifier for m in missing)
        ):
            hint += (
                " Its classifier does not fit: pass include_classifier=False "
                "(--no-classifier) to keep the model's own classifier."
            )
        raise ConversionError(
            f"{net.source} does not match model {model.name!r} ({len(errors)} problem(s)):"
            + "".join(f"\n  - {e}" for e in errors)
            + (f"\n {hint}" if hint else "")
        )
    return plan, report


def assign_plan(model, plan: dict) -> int:
    """Assigns checked values (``{keras layer: {variable: array}}``) to a model's variables."""
    count = 0
    for kname, values in plan.items():
        layer = model.get_layer(kname)
        variables = {v.name.split("/")[-1]: v for v in layer.weights}
        for var_name, value in values.items():
            var = variables[var_name]
            if tuple(var.shape) != tuple(value.shape):
                raise ConversionError(
                    f"{kname}/{var_name}: shape {tuple(value.shape)} != variable {tuple(var.shape)}"
                )
            var.assign(value.astype(var.dtype))
            count += 1
    return count


def convert_caffemodel(
    source,
    model=None,
    arch=None,
    num_classes: int | None = None,
    include_classifier: bool = True,
):
    """Loads a Caffe ``.caffemodel`` into a DeepLab v2 Keras model, checking every layer.

    Args:
        source: path of a ``.caffemodel`` or an already parsed :class:`CaffeNet`.
        model: the Keras model to fill; if ``None``, one is built from ``arch``.
        arch: architecture name (``"resnet101-aspp-l"``, ``"vgg16-largefov"``...), used when
            ``model`` is ``None``.
        num_classes: classes of the model to build; by default read from the file's classifier
            (21 when the classifier is excluded or absent).
        include_classifier: also load the classifier (see :func:`map_caffe_to_keras`).

    Returns:
        ``(model, report)``: the filled model and a :class:`ConversionReport`.

    Raises:
        FileNotFoundError / ValueError: unreadable file.
        ConversionError: the file does not fit the architecture (every problem listed).

    Example:
        >>> model, report = convert_caffemodel(
        ...     "train_iter_20000.caffemodel", arch="resnet101-aspp-l")  # doctest: +SKIP
        >>> model.save_weights("deeplabv2_resnet101_voc12.weights.h5")  # doctest: +SKIP
    """
    net = source if isinstance(source, CaffeNet) else read_caffemodel(source)
    if model is None:
        if arch is None:
            raise ValueError("Pass either model= or arch=. Received: model=None, arch=None")
        from deeplab_tf.convert.architectures import build_model

        if num_classes is None:
            num_classes = (infer_num_classes(net) if include_classifier else None) or 21
        model = build_model(arch, num_classes)
    plan, report = map_caffe_to_keras(net, model, include_classifier)
    report.num_tensors = assign_plan(model, plan)
    return model, report
