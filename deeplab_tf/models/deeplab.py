"""``DeepLabV2``: a config-bearing functional model (Chen et al., TPAMI 2017, sections 3.1-3.2)."""

from __future__ import annotations

import contextlib
import json
import os

import keras

from deeplab_tf.layers import PACKAGE, Preprocess
from deeplab_tf.models.heads import conv_head, vgg_head
from deeplab_tf.models.mobilenetv2 import mobilenetv2_features
from deeplab_tf.models.resnet import resnet_features
from deeplab_tf.models.specs import BACKBONES, resolve_rates
from deeplab_tf.models.vgg import vgg16_features


@keras.saving.register_keras_serializable(package=PACKAGE)
class Logits(keras.layers.Layer):
    """Identity that names the model's output and records its output stride.

    Downstream code (multi-scale inference, label shrinking, export) reads
    ``model.get_layer("logits").output_stride`` instead of guessing it.

    float32 unless given another ``dtype``, whatever the global policy: under mixed precision
    the logits leave the network in float32 (Keras's advice for the output layer), so losses,
    metrics, predictions and exports see float32.
    """

    def __init__(self, output_stride: int = 8, **kwargs):
        kwargs.setdefault("dtype", "float32")
        super().__init__(**kwargs)
        self.output_stride = int(output_stride)

    def call(self, x):
        return x

    def compute_output_shape(self, s):
        return s

    def get_config(self):
        return {**super().get_config(), "output_stride": self.output_stride}


def find_deeplab(model) -> DeepLabV2 | None:
    """The :class:`DeepLabV2` a model is or wraps (a multi-scale wrapper's ``.model``), or None."""
    seen = 0
    while model is not None and seen < 8:
        if isinstance(model, DeepLabV2):
            return model
        model = getattr(model, "model", None)
        seen += 1
    return None


def input_channels_of(model) -> int:
    """The number of image channels a model takes: a multi-scale wrapper's ``channels``, else
    the last axis of its input shape (a :class:`DeepLabV2`'s ``input_channels``), else 3."""
    channels = getattr(model, "channels", None)
    if channels is None:
        try:
            channels = model.input_shape[-1]
        except (AttributeError, TypeError, ValueError):
            channels = None
    return int(channels or 3)


def deeplab_config(model) -> dict:
    """The :meth:`DeepLabV2.get_config` of a model or of the DeepLabV2 it wraps.

    Raises:
        TypeError: for a model that is not (and does not wrap) a :class:`DeepLabV2`, such as a
            plain functional model loaded from a ``.keras`` file written by deeplab_tf 0.1; the
            message gives the one-line migration.
    """
    net = find_deeplab(model)
    if net is None:
        raise TypeError(
            "Expected a DeepLabV2 (or a multi-scale wrapper of one), which carries its own "
            f"description. Received: {type(model).__name__} {getattr(model, 'name', '')!r}. "
            f"{MIGRATION}"
        )
    return net.get_config()


#: How to turn a deeplab_tf 0.1 ``.keras`` file (a plain functional model) into a DeepLabV2.
MIGRATION = (
    "A .keras file written by deeplab_tf 0.1 holds a plain functional model: rebuild it once "
    "with `m = DeepLabV2(backbone=..., head=..., num_classes=...); m.load_weights('old.keras'); "
    "m.save('new.keras')` (weights load by layer name)."
)


def output_stride_of(model) -> int:
    """Output stride of a DeepLab model: its config, else the stride its ``logits`` layer records.

    Raises:
        ValueError: the model is neither a DeepLabV2 nor has a ``logits`` layer (nothing records
            its stride; no default is guessed).
    """
    net = find_deeplab(model)
    if net is not None:
        return int(net.output_stride)
    try:
        return int(model.get_layer("logits").output_stride)
    except (ValueError, AttributeError):
        raise ValueError(
            "The model records no output stride: expected a DeepLabV2 or a model whose output "
            f"layer is deeplab_tf's `Logits`. Received: {type(model).__name__} "
            f"{getattr(model, 'name', '')!r}"
        ) from None


def default_preprocessing(backbone: str) -> str:
    """``"caffe"`` (BGR minus mean) for the Caffe backbones, ``"tf"`` ([-1, 1]) for MobileNetV2."""
    return "tf" if backbone == "mobilenetv2" else "caffe"


PREPROCESSING_MODES = ("caffe", "tf", "normalize")


def _check_channels(input_channels, preprocessing, channel_mean, channel_std):
    """``(preprocessing, mean, std)`` for ``input_channels``: N != 3 needs ``"normalize"`` with
    one mean and one std per channel."""
    n = input_channels
    if isinstance(n, bool) or not isinstance(n, int) or n < 1:
        raise ValueError(f"input_channels must be an integer >= 1. Received: input_channels={n!r}")
    given = channel_mean is not None or channel_std is not None
    if n != 3 and preprocessing not in (None, "normalize"):
        raise ValueError(
            f"input_channels={n} needs preprocessing='normalize' (per-channel channel_mean and "
            f"channel_std). Received: preprocessing={preprocessing!r}"
        )
    if n != 3 or given:
        if preprocessing not in (None, "normalize"):
            raise ValueError(
                "channel_mean and channel_std are for preprocessing='normalize'. Received: "
                f"preprocessing={preprocessing!r}"
            )
        preprocessing = "normalize"
    if preprocessing != "normalize":
        return preprocessing, None, None
    mean = None if channel_mean is None else [float(v) for v in channel_mean]
    std = None if channel_std is None else [float(v) for v in channel_std]
    if mean is None or std is None or len(mean) != n or len(std) != n:
        raise ValueError(
            f"preprocessing='normalize' with input_channels={n} needs channel_mean and "
            f"channel_std with {n} values each (see deeplab_tf.models.channels for the values "
            f"that keep pretrained weights' input range). Received: channel_mean={channel_mean!r}"
            f", channel_std={channel_std!r}"
        )
    if not all(v > 0 for v in std):
        raise ValueError(f"channel_std values must be > 0. Received: channel_std={std!r}")
    return preprocessing, mean, std


def _check_args(backbone, head, num_classes, rates, dropout, output_stride, pool5a, input_shape,
                preprocessing, input_channels=3):  # fmt: skip
    if backbone not in BACKBONES:
        raise ValueError(f"backbone must be one of {BACKBONES}. Received: backbone={backbone!r}")
    rates = resolve_rates(head, rates)
    if not isinstance(num_classes, int) or isinstance(num_classes, bool) or num_classes < 1:
        raise ValueError(
            f"num_classes must be a positive int. Received: num_classes={num_classes!r}"
        )
    if not 0.0 <= float(dropout) < 1.0:
        raise ValueError(f"dropout must be in [0, 1). Received: dropout={dropout!r}")
    if output_stride not in (8, 16) or (output_stride == 16 and backbone == "vgg16"):
        raise ValueError(
            "output_stride must be 8 (the paper) or, for the ResNet and MobileNetV2 backbones, "
            f"16. Received: backbone={backbone!r}, output_stride={output_stride!r}"
        )
    if pool5a and backbone != "vgg16":
        raise ValueError(f"pool5a exists for vgg16 only. Received: backbone={backbone!r}")
    input_shape = tuple(input_shape)
    if len(input_shape) == 3 and input_shape[-1] is None:
        input_shape = (*input_shape[:2], input_channels)
    if len(input_shape) != 3 or input_shape[-1] != input_channels:
        raise ValueError(
            f"input_shape must be (H, W, {input_channels}) with H, W ints or None "
            f"(input_channels={input_channels}). Received: {input_shape!r}"
        )
    preprocessing = default_preprocessing(backbone) if preprocessing is None else preprocessing
    if preprocessing not in PREPROCESSING_MODES:
        raise ValueError(
            f"preprocessing must be one of {PREPROCESSING_MODES} or None (the backbone's). "
            f"Received: preprocessing={preprocessing!r}"
        )
    return rates, input_shape, preprocessing


@keras.saving.register_keras_serializable(package=PACKAGE)
class DeepLabV2(keras.Model):
    """A DeepLab v2 network: a functional ``keras.Model`` that knows how it was built.

    The model takes RGB images with values 0..255 (uint8 or float, any size, batched),
    preprocesses them in-graph (BGR, mean subtraction for the Caffe backbones) and returns
    class logits at output stride 8: ``(N, H', W', num_classes)`` with Caffe's rounding
    (321 -> 41, 513 -> 65). Layer names are the authors' Caffe names.

    Like keras-hub's backbones, the class builds a functional graph in ``__init__``; its
    ``get_config()`` is the builder's arguments (backbone, head, rates, num_classes,
    output_stride, preprocessing, freeze_batchnorm, dropout, pool5a, input_shape), so training,
    inference, export and conversion read the model's own description instead of its name, and
    ``from_config`` rebuilds it. Saved ``.keras`` files record ``deeplab_tf>DeepLabV2``.

    Paper: section 3.1 (atrous convolution), 3.2 (ASPP); the layer tables are in
    ``docs/architecture.md``.

    Args:
        backbone: ``vgg16``, ``resnet50``, ``resnet101``, ``resnet152`` or ``mobilenetv2``
            (beyond the paper; dilated as in DeepLab v3).
        head: ``largefov`` (rate 12), ``aspp_s`` (2, 4, 8, 12), ``aspp_l`` (6, 12, 18, 24) or
            ``aspp`` with explicit ``rates``.
        num_classes: number of classes C; ``None`` takes the weights preset's (182 for the
            COCO-Stuff presets), else 21 (PASCAL VOC).
        rates: atrous rates for ``head="aspp"``.
        weights: ``None`` (random init); ``"imagenet"`` (Keras Applications ImageNet weights
            mapped into the dilated backbone; for VGG-16 also the decimated fc6/fc7); a
            weights preset, by name or by its short tag for this architecture (``"voc12"``,
            ``"coco_init"``, ``"cocostuff164k"``...: ``deeplab_tf.list_presets()``), fetched,
            verified and converted once, then loaded from the cache; or the path of a weights
            file: Keras (``.weights.h5``, SHA-256 checked against a manifest beside it, or a
            ``.keras`` file), the authors' ``.caffemodel`` or the PyTorch port's ``.pth``
            (converted with every layer, shape, kernel, stride, pad and dilation checked).
            Not part of the config.
        freeze_batchnorm: BatchNorm uses moving statistics and its gamma/beta do not train
            (the paper). Ignored for VGG-16, which has no BatchNorm.
        dropout: dropout rate after fc6 and fc7 of the VGG heads (0 disables).
        input_shape: ``(H, W, 3)``; ``None`` for dynamic sizes. A fixed size gives TFLite plain
            dilated ``CONV_2D`` ops.
        output_stride: 8 (the paper) for every backbone; the ResNets and MobileNetV2 also
            allow 16 (a memory option for training: about a quarter of the activations after
            res3; the same weights load; the head's rates are kept as given).
        pool5a: VGG-16 only: the parameter-free 3x3 average pool before fc6 found in v1
            LargeFOV reimplementations.
        input_channels: channels of the input images (3: RGB). Another count (1 for grey or
            medical images, 4+ for remote sensing) needs ``preprocessing="normalize"`` with
            ``channel_mean`` / ``channel_std``; pretrained weights get their first convolution
            adapted by the rule in :mod:`deeplab_tf.models.channels`.
        channel_mean: per-channel means for ``preprocessing="normalize"`` (input order).
        channel_std: per-channel standard deviations for ``preprocessing="normalize"``.
        preprocessing: ``"caffe"``, ``"tf"`` or ``"normalize"`` (``(x - channel_mean) /
            channel_std``); ``None`` takes the backbone's (``"tf"`` for
            MobileNetV2, whose ImageNet weights expect [-1, 1]).
        dtype: the dtype policy of the network's layers, passed the way keras-hub's backbones
            take it: ``None`` (Keras's global policy), ``"float32"``, ``"mixed_bfloat16"`` or
            ``"mixed_float16"`` (mixed precision, docs/training.md#mixed-precision: variables
            stay float32, convolutions compute in bfloat16 / float16), or a
            ``keras.DTypePolicy``. Preprocessing and the ``logits`` layer stay float32 under
            any policy, so the model takes 0..255 images at full precision and returns float32
            logits (losses, metrics, predictions and exports see float32). Recorded in the
            config (as the policy's name) and kept by ``.keras`` files.
        name: model name; defaults to ``deeplabv2_{backbone}_{head}``. Nothing reads it.

    Example:
        >>> from deeplab_tf import DeepLabV2
        >>> model = DeepLabV2(backbone="vgg16", head="largefov", num_classes=21)
        >>> model.count_params()
        20505429
        >>> model.get_config()["rates"]
        (12,)
    """

    def __init__(
        self,
        backbone: str = "resnet101",
        head: str = "aspp_l",
        num_classes: int | None = None,
        rates=None,
        weights=None,
        freeze_batchnorm: bool = True,
        dropout: float = 0.5,
        input_shape=(None, None, 3),
        output_stride: int = 8,
        pool5a: bool = False,
        preprocessing: str | None = None,
        input_channels: int = 3,
        channel_mean=None,
        channel_std=None,
        name: str | None = None,
        dtype=None,
        **kwargs,
    ):
        policy = _check_dtype(dtype)
        weights, preset = _check_weights(weights, backbone, head)
        if num_classes is None:
            num_classes = (preset or {}).get("num_classes") or 21
        preprocessing, channel_mean, channel_std = _check_channels(
            input_channels, preprocessing, channel_mean, channel_std
        )
        if input_shape == (None, None, 3) and input_channels != 3:
            input_shape = (None, None, input_channels)
        rates, input_shape, preprocessing = _check_args(
            backbone, head, num_classes, rates, dropout, output_stride, pool5a, input_shape,
            preprocessing, input_channels,
        )  # fmt: skip
        images = keras.Input(shape=input_shape, name="images")
        if preprocessing == "normalize":
            pre = Preprocess("normalize", mean=channel_mean, std=channel_std, name="preprocess")
        else:
            pre = Preprocess(mode=preprocessing, name="preprocess")
        x = pre(images)
        # The builders' layers take the policy as their default (they are created while it is
        # the global one); the previous global policy is restored whatever happens.
        with _global_dtype_policy(policy):
            if backbone == "vgg16":
                x = vgg16_features(x)
                x = vgg_head(x, num_classes, rates, dropout=dropout, pool5a=pool5a)
            elif backbone == "mobilenetv2":
                x = mobilenetv2_features(x, output_stride, freeze_batchnorm)
                x = conv_head(x, num_classes, rates)
            else:
                depth = int(backbone[len("resnet") :])
                x = resnet_features(x, depth, freeze_batchnorm, output_stride)
                x = conv_head(x, num_classes, rates)
        # float32 output under any policy (Keras's mixed-precision advice for the last layer).
        logits = Logits(output_stride, name="logits")(x)
        super().__init__(images, logits, name=name or f"deeplabv2_{backbone}_{head}", **kwargs)
        # Functional models take no dtype argument; keras-hub sets the policy afterwards too.
        # Keras's compile() reads it (mixed_float16: wraps the optimizer in LossScaleOptimizer).
        self.dtype_policy = policy

        self.backbone = backbone
        self.head = head
        self.rates = rates
        self.num_classes = num_classes
        self.output_stride = int(output_stride)
        self.preprocessing = preprocessing
        self.freeze_batchnorm = bool(freeze_batchnorm)
        self.dropout = float(dropout)
        self.pool5a = bool(pool5a)
        self.image_shape = input_shape
        self.input_channels = int(input_channels)
        self.channel_mean = channel_mean
        self.channel_std = channel_std

        # The classifier's variables say so themselves (as Keras marks variables with
        # `overwrite_with_gradient`): CaffeSGD gives them Caffe's 10x / 20x multipliers, in this
        # process and in any process that loads the model (from_config rebuilds and re-marks).
        for layer_name in self.classifier_layer_names:
            for variable in self.get_layer(layer_name).weights:
                variable.deeplab_classifier = True

        if weights == "imagenet":
            from deeplab_tf.models.imagenet import load_imagenet_weights

            load_imagenet_weights(self, backbone)
        elif preset is not None:
            from deeplab_tf.weights.cache import load_preset_weights

            load_preset_weights(self, preset["name"])
        elif weights is not None and weights.lower().endswith(SOURCE_EXTENSIONS):
            from deeplab_tf.weights.cache import converter

            converter()(self, weights, True)
        elif weights is not None:
            from deeplab_tf.weights import load_keras_weights

            load_keras_weights(self, weights)
        # The weights preset this model was built with (a dict), or None. Not saved.
        self._preset = json.dumps(preset) if preset is not None else None

    @property
    def preset(self):
        """The weights preset (or preset folder metadata) the model was built from, or None:
        its name, class names key, source, training data and reported mIoU."""
        return json.loads(self._preset) if self._preset else None

    @preset.setter
    def preset(self, value):
        self._preset = json.dumps(value) if value is not None else None

    @classmethod
    def from_preset(cls, preset, **kwargs):
        """Builds a model from a weights preset or from a folder written by
        :func:`deeplab_tf.save_to_preset`.

        Args:
            preset: a preset name (``deeplab_tf.list_presets()``; fetched, verified and
                converted on first use, then read from the cache) or a preset folder
                (``config.json`` + ``model.weights.h5`` + ``metadata.json``).
            **kwargs: builder arguments that override the preset's (``input_shape``,
                ``name``...); for a preset name, architecture arguments must agree with it.

        Returns:
            The model, with ``model.preset`` the preset's description (class names, source,
            reported mIoU).

        Example:
            >>> model = DeepLabV2.from_preset("deeplabv2_resnet101_cocostuff164k")  # doctest: +SKIP
            >>> model.get_config()["num_classes"]  # doctest: +SKIP
            182
        """
        path = os.fspath(preset) if isinstance(preset, (str, os.PathLike)) else None
        if path is not None and os.path.isdir(path):
            from deeplab_tf.weights import load_h5_weights
            from deeplab_tf.weights.folder import read_preset_folder

            config, weights_path, metadata = read_preset_folder(path)
            config.update(kwargs)
            model = cls.from_config(config)
            load_h5_weights(model, weights_path)
            model.preset = metadata
            return model
        from deeplab_tf.weights.presets import get_preset

        entry = get_preset(preset)  # raises with the known names
        args = {"backbone": entry["backbone"], "head": entry["head"], "name": entry["model"]}
        args.update(kwargs)
        return cls(weights=entry["name"], **args)

    @property
    def classifier_layer_names(self) -> tuple[str, ...]:
        """Names of the layers whose weights are the classifier (the per-rate class convs).

        VGG-16: ``fc8_voc12`` or ``fc8_voc12_1..``; ResNet / MobileNetV2: ``fc1_voc12_c0..``.
        Their variables carry ``deeplab_classifier = True``, from which the optimizer gives them
        Caffe's classifier multipliers (10x / 20x); the converter maps
        the file's classifier onto them, ``include_classifier=False`` leaves them alone.
        """
        n = len(self.rates)
        if self.backbone == "vgg16":
            return ("fc8_voc12",) if n == 1 else tuple(f"fc8_voc12_{i}" for i in range(1, n + 1))
        return tuple(f"fc1_voc12_c{i}" for i in range(n))

    def get_config(self):
        return {
            "name": self.name,
            "trainable": self.trainable,
            "backbone": self.backbone,
            "head": self.head,
            "rates": list(self.rates),
            "num_classes": self.num_classes,
            "output_stride": self.output_stride,
            "preprocessing": self.preprocessing,
            "freeze_batchnorm": self.freeze_batchnorm,
            "dropout": self.dropout,
            "pool5a": self.pool5a,
            "input_shape": list(self.image_shape),
            "input_channels": self.input_channels,
            "channel_mean": self.channel_mean,
            "channel_std": self.channel_std,
            "dtype": self.dtype_policy.name,
        }

    @classmethod
    def from_config(cls, config, custom_objects=None):
        return cls(**config)


#: Files that the converter reads (through the weights cache's registered converter).
SOURCE_EXTENSIONS = (".caffemodel", ".pth", ".pt")


#: The dtype policies DeepLabV2 takes by name (a ``keras.DTypePolicy`` of one of them works too).
DTYPE_POLICIES = ("float32", "mixed_bfloat16", "mixed_float16", "bfloat16", "float16")


def _check_dtype(dtype):
    """The ``keras.DTypePolicy`` for ``dtype`` (None: the global one), else a ValueError."""
    if dtype is None:
        return keras.config.dtype_policy()
    name = dtype.get("config", {}).get("name") if isinstance(dtype, dict) else None
    name = name or getattr(dtype, "name", dtype)
    if name not in DTYPE_POLICIES:
        raise ValueError(
            f"dtype must be None (the global policy) or one of {DTYPE_POLICIES}. "
            f"Received: dtype={dtype!r}"
        )
    return keras.dtype_policies.get(name)


@contextlib.contextmanager
def _global_dtype_policy(policy):
    previous = keras.config.dtype_policy()
    keras.config.set_dtype_policy(policy)
    try:
        yield
    finally:
        keras.config.set_dtype_policy(previous)


def _check_weights(weights, backbone, head):
    """``(weights, preset)``: a checked ``weights=`` value and the preset it names (or None)."""
    if weights is None or weights == "imagenet":
        return weights, None
    path = os.fspath(weights) if isinstance(weights, (str, os.PathLike)) else None
    if path is not None and os.path.isfile(path):
        return path, None
    from deeplab_tf.weights.presets import is_preset, resolve_preset

    if is_preset(path):
        return None, resolve_preset(path, backbone, head)  # raises if it does not fit
    raise ValueError(
        "weights must be None, 'imagenet', a weights preset (`deeplab_tf.list_presets()`) or "
        "the path of an existing .weights.h5, .keras, .caffemodel or .pth file. "
        f"Received: weights={weights!r}"
    )
