"""The shared test base: one contract for every custom layer and every registry entry.

keras-hub's ``TestCase`` pattern for pytest. A test class derives from :class:`TestCase` and
calls

* :meth:`TestCase.run_layer_test` on a layer class with its arguments and inputs: the config
  JSON round trip is idempotent (``from_config(get_config())`` gives the same config, in
  memory and through ``serialize_keras_object`` / JSON / ``deserialize_keras_object`` in safe
  mode), a symbolic call and an eager call agree in shape, dtype and value, the output shape
  equals ``compute_output_shape`` where the layer defines it, and under the ``mixed_bfloat16``
  dtype policy the layer runs and returns the policy's compute dtype (or the documented one);
* :meth:`TestCase.run_model_test` on a registry name: odd and even input sizes give Caffe's
  output sizes (eager and symbolic), the parameter count equals the expected one (the
  registry's ``params_voc`` where it has one), and a ``.keras`` file saved here loads in a new
  process that imports only ``deeplab_tf`` and ``keras`` (safe mode) with equal outputs.

``tests/test_registered_layers.py`` applies the first to every ``deeplab_tf>`` layer in Keras'
registry, ``tests/test_registry_models.py`` the second to every ``deeplab_tf.list_models()``.
"""

from __future__ import annotations

import contextlib
import copy
import json

import keras
import numpy as np

import deeplab_tf
from deeplab_tf.layers import caffe_conv_output_size, caffe_pool_output_size
from tests._fresh_process import load_in_new_process

PACKAGE_PREFIX = "deeplab_tf>"


def registered_layers() -> dict[str, type]:
    """``{registered name: class}`` of every Keras layer (models included) of this package.

    Read from Keras' registry after ``import deeplab_tf``, which registers every serializable
    class of the library (``deeplab_tf._registration``).
    """
    deeplab_tf._registration.register_all()
    return {
        name: obj
        for name, obj in keras.saving.get_custom_objects().items()
        if name.startswith(PACKAGE_PREFIX)
        and isinstance(obj, type)
        and issubclass(obj, keras.layers.Layer)
    }


def caffe_output_size(backbone: str, n: int) -> int:
    """Output length at output stride 8, chaining Caffe's rules over the release's layer table
    (the Caffe release's layer table): ceil-mode pooling, floor-mode convolution."""
    if backbone == "vgg16":
        for stride in (2, 2, 2, 1, 1):
            n = caffe_pool_output_size(n, 3, stride, 1)
        return n
    if backbone == "mobilenetv2":  # Conv1, block_1, block_3 have stride 2 at output stride 8
        for _ in range(3):
            n = caffe_conv_output_size(n, 3, 2, 1)
        return n
    n = caffe_pool_output_size(caffe_conv_output_size(n, 7, 2, 3), 3, 2, 1)
    return caffe_conv_output_size(n, 1, 2, 0)  # res3a_branch2a


def count_params_without_bn_statistics(model: keras.Model) -> int:
    """``count_params()`` less the BatchNorm moving means and variances (not parameters in the
    paper's or the Caffe release's counts)."""
    moving = sum(
        int(np.prod(layer.moving_mean.shape)) + int(np.prod(layer.moving_variance.shape))
        for layer in model._flatten_layers()
        if isinstance(layer, keras.layers.BatchNormalization)
    )
    return model.count_params() - moving


def tiny_segmenter(num_classes: int = 3, name: str = "tiny") -> keras.Model:
    """A few-kilobyte stride-8 segmentation network of this package's layers, for wrappers.

    RGB 0..255 images of any size in, logits at Caffe's stride-8 sizes out, with the ``logits``
    layer recording the stride (what the multi-scale wrappers read).
    """
    from deeplab_tf.layers import CaffeAveragePooling2D, CaffeMaxPooling2D, PaddedConv2D, Preprocess
    from deeplab_tf.models import Logits

    images = keras.Input((None, None, 3), name="images")
    x = Preprocess(mode="tf", name="preprocess")(images)
    x = PaddedConv2D(pad=1, filters=4, kernel_size=3, strides=2, activation="relu", name="c1")(x)
    x = CaffeMaxPooling2D(3, 2, 1, name="pool1")(x)
    x = CaffeAveragePooling2D(3, 2, 1, name="pool2")(x)
    x = keras.layers.Conv2D(num_classes, 1, name="classifier")(x)
    return keras.Model(images, Logits(output_stride=8, name="logits")(x), name=name)


class PoisonWeights(keras.callbacks.Callback):
    """Sets the last convolution kernel to NaN before batch ``at`` of the run (counted over
    the whole run), as a diverging update would: the logits and the loss become NaN."""

    def __init__(self, at):
        super().__init__()
        self.at, self.seen = at, 0

    def on_train_batch_begin(self, batch, logs=None):
        if self.seen == self.at:
            kernel = [v for v in self.model.trainable_weights if len(v.shape) == 4][-1]
            kernel.assign(np.full(kernel.shape, np.nan, np.float32))
        self.seen += 1


@contextlib.contextmanager
def global_dtype_policy(name: str):
    """Sets Keras' global dtype policy for the block (restored afterwards)."""
    previous = keras.config.dtype_policy()
    keras.config.set_dtype_policy(name)
    try:
        yield keras.config.dtype_policy()
    finally:
        keras.config.set_dtype_policy(previous)


def _shape(x):
    return tuple(x.shape)


def _dtype(x):
    return keras.backend.standardize_dtype(x.dtype)


def _defines(cls: type, method: str) -> bool:
    """Whether a class (or a base below ``keras.layers.Layer``) implements ``method``."""
    for klass in cls.__mro__:
        if method in klass.__dict__:
            return klass not in (keras.layers.Layer, keras.Model)
    return False


def _config_json(config) -> str:
    try:
        return json.dumps(config, sort_keys=True)
    except TypeError as e:  # pragma: no cover - the message is the point
        raise AssertionError(f"get_config() is not JSON serialisable: {e}\n{config!r}") from e


class TestCase:
    """Base class of harness-driven test classes (pytest collects subclasses named ``Test*``).

    Layer arguments may be a dict or a callable returning one; a callable is called for every
    new instance (wrappers need a fresh inner model, built under the dtype policy under test).
    """

    __test__ = False

    def __init_subclass__(cls, **kwargs):
        super().__init_subclass__(**kwargs)
        if "__test__" not in cls.__dict__:
            cls.__test__ = True

    # === Layers ==================================================================================

    def run_serialization_test(self, layer: keras.layers.Layer):
        """``from_config(get_config())`` reproduces the config (in memory and through JSON and
        safe-mode deserialization), so a second round trip changes nothing either."""
        cls = type(layer)
        config = layer.get_config()
        expected = _config_json(config)
        revived = cls.from_config(copy.deepcopy(config))
        assert type(revived) is cls
        assert _config_json(revived.get_config()) == expected, f"{cls.__name__}: from_config"

        blob = keras.saving.serialize_keras_object(layer)
        assert blob["registered_name"] == keras.saving.get_registered_name(cls)
        assert blob["registered_name"].startswith(PACKAGE_PREFIX), blob["registered_name"]
        text = json.dumps(blob, sort_keys=True)
        revived = keras.saving.deserialize_keras_object(json.loads(text), safe_mode=True)
        assert type(revived) is cls
        assert _config_json(revived.get_config()) == expected, f"{cls.__name__}: JSON round trip"

    def run_layer_test(
        self,
        cls: type,
        init_kwargs,
        input_data,
        expected_output_shape: tuple | None = None,
        expected_output_dtype: str | None = None,
        mixed_precision_dtype: str | None = None,
        mixed_precision_symbolic_dtype: str | None = None,
        run_mixed_precision_check: bool = True,
        atol: float = 1e-6,
    ):
        """Runs the layer contract (see the module docstring) on ``cls(**init_kwargs)``.

        Args:
            cls: the layer class.
            init_kwargs: its arguments, or a callable returning them (called per instance).
            input_data: a NumPy array, or a list of them for a layer called on a list.
            expected_output_shape: the eager output's shape, where the test knows it.
            expected_output_dtype: the output dtype under float32 (default: the layer's
                compute dtype).
            mixed_precision_dtype: the documented output dtype under ``mixed_bfloat16``
                (default: the policy's compute dtype, ``bfloat16``).
            mixed_precision_symbolic_dtype: only where a known, reported bug makes the symbolic
                output's dtype differ from the eager one under ``mixed_bfloat16`` (the case
                says which); asserted, so the fix shows up as a failure to update the case.
            run_mixed_precision_check: False only for layers that cannot run in bfloat16.
            atol: tolerance between the symbolic graph's and the eager call's values.
        """
        make = (
            (lambda: cls(**init_kwargs()))
            if callable(init_kwargs)
            else (lambda: cls(**init_kwargs))
        )
        what = cls.__name__

        self.run_serialization_test(make())

        # Symbolic and eager calls on one instance (so the same weights): shape, dtype, value.
        layer = make()
        static = keras.tree.map_structure(
            lambda x: keras.Input(batch_shape=x.shape, dtype=_dtype(x)), input_data
        )
        symbolic = layer(static)
        eager = layer(input_data)
        assert isinstance(symbolic, keras.KerasTensor), f"{what}: one tensor out"
        assert _shape(symbolic) == _shape(eager), f"{what}: symbolic {symbolic.shape} vs eager"
        assert _dtype(symbolic) == _dtype(eager), f"{what}: symbolic {symbolic.dtype} vs eager"
        graph = keras.Model(static, symbolic)
        np.testing.assert_allclose(
            keras.ops.convert_to_numpy(graph(input_data)),
            keras.ops.convert_to_numpy(eager),
            rtol=atol,
            atol=atol,
            err_msg=f"{what}: symbolic graph vs eager call",
        )
        assert _dtype(eager) == (expected_output_dtype or layer.compute_dtype), what
        if expected_output_shape is not None:
            assert _shape(eager) == tuple(expected_output_shape), f"{what}: {eager.shape}"

        # Unknown batch size: the same output shape but for the batch.
        dynamic = keras.tree.map_structure(
            lambda x: keras.Input(shape=x.shape[1:], dtype=_dtype(x)), input_data
        )
        out = make()(dynamic)
        assert _shape(out) == (None, *_shape(eager)[1:]), f"{what}: batch None -> {out.shape}"

        if _defines(cls, "compute_output_shape"):
            for batch in ("static", None):
                shapes = keras.tree.map_structure(
                    lambda x, b=batch: (x.shape[0] if b else None, *x.shape[1:]), input_data
                )
                if isinstance(input_data, np.ndarray):
                    shapes = tuple(shapes)
                expected = _shape(eager) if batch else (None, *_shape(eager)[1:])
                got = tuple(layer.compute_output_shape(shapes))
                assert got == expected, f"{what}.compute_output_shape({shapes}) = {got}"

        if run_mixed_precision_check:
            self.run_mixed_precision_test(
                make, input_data, mixed_precision_dtype, mixed_precision_symbolic_dtype
            )

    def run_mixed_precision_test(self, make, input_data, expected_dtype=None, symbolic_dtype=None):
        """Under the global ``mixed_bfloat16`` policy the layer (and any model it wraps, built
        under the policy too) runs, returns ``expected_dtype`` (default: the policy's compute
        dtype) in both the eager and the symbolic call, and keeps float32 variables."""
        with global_dtype_policy("mixed_bfloat16") as policy:
            layer = make()
            eager = layer(input_data)
            symbolic = layer(
                keras.tree.map_structure(
                    lambda x: keras.Input(batch_shape=x.shape, dtype=_dtype(x)), input_data
                )
            )
        what = f"{type(layer).__name__} under mixed_bfloat16"
        expected = expected_dtype or policy.compute_dtype
        assert _dtype(eager) == expected, f"{what}: eager output {eager.dtype}"
        expected_symbolic = symbolic_dtype or expected
        assert _dtype(symbolic) == expected_symbolic, f"{what}: symbolic output {symbolic.dtype}"
        assert np.isfinite(keras.ops.convert_to_numpy(keras.ops.cast(eager, "float32"))).all()
        for weight in layer.weights:
            if "float" in _dtype(weight):
                assert _dtype(weight) == policy.variable_dtype, f"{what}: {weight.path}"

    # === Registry entries ========================================================================

    def run_model_test(
        self,
        name: str,
        tmp_path=None,
        num_classes: int = 3,
        sizes=((33, 48), (50, 41)),
        expected_params: int | None = None,
        check_sizes: bool = True,
        check_save_load: bool = True,
    ):
        """Runs the model contract on registry entry ``name`` (public API only).

        Args:
            name: a ``deeplab_tf.list_models()`` name.
            tmp_path: a folder for the saved model (needed with ``check_save_load``).
            num_classes: classes of the small builds (sizes, save/load).
            sizes: ``(height, width)`` inputs; together they must hold odd and even lengths.
            expected_params: parameters of the 21-class (VOC) build without BatchNorm moving
                statistics; checked on a build without a forward pass. None skips the check.
            check_sizes: run the output-size check.
            check_save_load: run the fresh-process save/load check.
        """
        assert name in deeplab_tf.list_models(), name
        config = deeplab_tf.get_model_config(name)
        if expected_params is not None:
            model = deeplab_tf.create_model(name, num_classes=21)
            assert count_params_without_bn_statistics(model) == expected_params, name
            keras.backend.clear_session()
        if not (check_sizes or check_save_load):
            return
        model = deeplab_tf.create_model(name, num_classes=num_classes)
        assert model.name == name
        rng = np.random.default_rng(0)
        if check_sizes:
            lengths = [n for size in sizes for n in size]
            assert {n % 2 for n in lengths} == {0, 1}, f"sizes need odd and even: {sizes}"
            assert deeplab_tf.output_stride_of(model) == 8, name
            for h, w in sizes:
                expected = (
                    1,
                    caffe_output_size(config["backbone"], h),
                    caffe_output_size(config["backbone"], w),
                    num_classes,
                )
                images = rng.integers(0, 256, (1, h, w, 3)).astype("uint8")
                out = model(images, training=False)
                assert _shape(out) == expected, f"{name} on {h}x{w}: {out.shape} != {expected}"
                spec = model.compute_output_spec(keras.KerasTensor((1, h, w, 3), "uint8"))
                assert _shape(spec) == expected, f"{name} symbolic {h}x{w}: {spec.shape}"
                assert np.isfinite(keras.ops.convert_to_numpy(out)).all(), name
        if check_save_load:
            assert tmp_path is not None, "check_save_load needs tmp_path"
            h, w = sizes[0]
            images = rng.integers(0, 256, (1, h, w, 3)).astype("uint8")
            (report,) = load_in_new_process(tmp_path, {name: (model, images, None)}).values()
            assert report["class"] == type(model).__name__, report
