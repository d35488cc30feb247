"""The Keras registration contract, and the supported Keras / TensorFlow versions.

Every class this library saves into a ``.keras`` file (layers, models, wrappers, the optimizer,
its schedule, the loss and the metric) is registered with
``keras.saving.register_keras_serializable(package="deeplab_tf")`` when its module is imported.
:func:`register_all` imports all of those modules, so that after ``import deeplab_tf`` alone a
new process loads any saved model with ``keras.saving.load_model(path)`` in safe mode.

``import deeplab_tf`` calls it, except in the ``deeplab-tf`` command's own process, where the
command line calls it once it has parsed a verb (so ``deeplab-tf --help`` does not start
TensorFlow).

A renamed class keeps its old registered name as well: beside the class, its module maps the
old name to it in ``keras.saving.get_custom_objects()``, so files saved before the rename load
as the new class (``deeplab_tf>MultiScale`` -> ``MultiScaleInference``,
``deeplab_tf>MultiScaleModel`` -> ``MultiScaleTraining``).
"""

from __future__ import annotations

import importlib
import os
import re
import sys

#: Supported ranges, ``[lower, upper)``: the lower bounds are the first releases with every API
#: the library uses (Keras 3.10: ``Optimizer.add_optimizer_variables``; TensorFlow 2.16: Keras 3
#: as ``tf.keras``); the upper bounds are the newest minors the test suite has run on, because
#: several classes override private Keras methods that may change in any minor release.
#: Keep in step with ``install_requires`` in setup.cfg.
SUPPORTED = {"keras": ("3.10", "3.16"), "tensorflow": ("2.16", "2.22")}

#: Every module that defines a registered (``deeplab_tf>...``) class or keeps an old registered
#: name. (The multi-scale core, ``deeplab_tf.models.multiscale``, registers nothing: the two
#: wrappers built on it do.)
SERIALIZABLE_MODULES = (
    "deeplab_tf.layers",
    "deeplab_tf.models.deeplab",
    "deeplab_tf.inference.multiscale",
    "deeplab_tf.training.losses",
    "deeplab_tf.training.metrics",
    "deeplab_tf.training.msc",
    "deeplab_tf.training.optimizer",
)

_registered = False
_COMMAND_SCRIPTS = {"deeplab-tf", "deeplab-tf.exe", "deeplab-tf-script.py"}
_CLI = "deeplab_tf.cli"


def _minor(version: str) -> tuple[int, int]:
    match = re.match(r"(\d+)\.(\d+)", version)
    return (int(match[1]), int(match[2])) if match else (0, 0)


def check_version(package: str, version: str) -> None:
    """Raises ImportError when ``version`` of ``package`` is outside :data:`SUPPORTED`."""
    lower, upper = SUPPORTED[package]
    if not _minor(lower) <= _minor(version) < _minor(upper):
        raise ImportError(
            f"deeplab_tf supports {package} >={lower},<{upper}. Received: {package} {version}. "
            f'Install a supported version, e.g. pip install "{package}>={lower},<{upper}".'
        )


def model_crf_preset(name: str):
    """The dense-CRF parameters of a backbone (``"resnet101"``, ``"vgg16"``...) or of a
    registered model name, from the model registry; None for another name."""
    from deeplab_tf.models import registry

    key = name.lower()
    if key in ("resnet", "resnet101", "resnet50", "resnet152", "mobilenetv2"):
        return registry.CRF_RESNET
    if key in ("vgg", "vgg16"):
        return registry.CRF_VGG
    if key in registry.list_models():
        return registry.get_model_config(key)["crf"]
    return None


def register_all() -> None:
    """Imports every module that registers a ``deeplab_tf>`` Keras class (idempotent), hands
    the model registry's CRF presets to the CRF (:mod:`deeplab_tf.crf.presets`, which does not
    import the models) and the Caffe / PyTorch converter to the weights cache
    (:mod:`deeplab_tf.weights.cache`, which does not import the converter).

    Raises:
        ImportError: Keras or TensorFlow is missing or outside the supported range.
    """
    global _registered
    if _registered:
        return
    import keras
    import tensorflow as tf

    check_version("keras", keras.version())
    check_version("tensorflow", tf.__version__)
    for module in SERIALIZABLE_MODULES:
        importlib.import_module(module)
    from deeplab_tf.crf import presets

    presets.register_catalogue(model_crf_preset)
    # The weights cache converts Caffe / PyTorch sources with the converter, which builds on
    # the models (the cache sits below them): hand it over here, as the CRF gets its presets.
    from deeplab_tf.convert.weights import load_source_weights
    from deeplab_tf.weights import cache

    cache.register_converter(load_source_weights)
    _registered = True


def launched_as_command() -> bool:
    """True in the process of the ``deeplab-tf`` command (console script or ``python -m``)."""
    if sys.argv and os.path.basename(sys.argv[0]) in _COMMAND_SCRIPTS:
        return True
    # ``python -m deeplab_tf``: the package is imported before runpy rewrites sys.argv[0].
    argv = list(getattr(sys, "orig_argv", ()))[1:]
    skip = False
    for i, arg in enumerate(argv):
        if skip:
            skip = False
        elif arg == "-m":
            return argv[i + 1 : i + 2] == ["deeplab_tf"] or argv[i + 1 : i + 2] == [_CLI]
        elif arg.startswith("-m"):
            return arg[2:] in ("deeplab_tf", _CLI)
        elif arg in ("-X", "-W"):
            skip = True
        elif arg == "-c" or not arg.startswith("-"):
            return False  # a -c program or a script
    return False
