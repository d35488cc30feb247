"""A trained model as a folder (keras-hub style): ``config.json`` + ``model.weights.h5`` +
``metadata.json``.

``save_to_preset(model, folder)`` writes the folder in one atomic step (built under a temporary
name, then renamed); ``DeepLabV2.from_preset(folder)`` rebuilds the model from ``config.json``
and loads the weights strictly after checking their SHA-256 against ``metadata.json``. Unlike a
``.keras`` file, a preset folder holds no optimizer state and carries the metadata a user of the
model needs: class names, the palette key, where the weights came from.
"""

from __future__ import annotations

import json
import os
import sys
import time

CONFIG_FILE = "config.json"
WEIGHTS_FILE = "model.weights.h5"
METADATA_FILE = "metadata.json"
FORMAT_VERSION = 1


def save_to_preset(model, folder, class_names=None, metadata=None, overwrite: bool = False):
    """Writes ``model`` (a :class:`~deeplab_tf.DeepLabV2`) as a preset folder.

    Args:
        model: the model; its ``get_config()`` must describe a DeepLabV2 (backbone, head...).
        folder: the folder to create.
        class_names: one name per class (default: the model's preset's, if any).
        metadata: more JSON-serialisable facts to record (training data, mIoU...).
        overwrite: replace an existing folder (atomically); otherwise it is an error.

    Returns:
        ``folder``.

    Raises:
        ValueError: the model is not a DeepLabV2, or ``class_names`` has the wrong length.
        FileExistsError: ``folder`` exists and ``overwrite`` is False.
    """
    from deeplab_tf.atomic import atomic_dir, write_json
    from deeplab_tf.weights.manifest import sha256_of

    config = model.get_config() if hasattr(model, "get_config") else None
    if not isinstance(config, dict) or "backbone" not in config or "num_classes" not in config:
        raise ValueError(
            "save_to_preset takes a DeepLabV2 model (whose config records backbone, head and "
            f"num_classes). Received: {type(model).__name__}"
            + (f" named {model.name!r}" if hasattr(model, "name") else "")
        )
    preset = getattr(model, "preset", None) or {}
    if class_names is None:
        class_names = preset.get("class_names")
        if class_names is None and preset.get("classes"):
            from deeplab_tf.data.palettes import label_set

            class_names = list(label_set(preset["classes"])[0])
    if class_names is not None:
        class_names = [str(c) for c in class_names]
        if len(class_names) != config["num_classes"]:
            raise ValueError(
                f"class_names has {len(class_names)} names; the model has "
                f"{config['num_classes']} classes. Received: class_names={class_names[:5]}..."
            )
    folder = os.fspath(folder)
    with atomic_dir(folder, overwrite=overwrite) as tmp:
        write_json(
            os.path.join(tmp, CONFIG_FILE),
            {"class_name": "deeplab_tf>DeepLabV2", "config": config},
        )
        weights = os.path.join(tmp, WEIGHTS_FILE)
        model.save_weights(weights)
        meta = {
            "format_version": FORMAT_VERSION,
            # the package is imported whenever one of its modules is
            "deeplab_tf_version": sys.modules["deeplab_tf"].__version__,
            "saved": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
            "weights_sha256": sha256_of(weights),
            "class_names": class_names,
            "classes": preset.get("classes"),
            "source_preset": preset.get("name") or preset.get("source_preset"),
        }
        meta.update(metadata or {})
        write_json(os.path.join(tmp, METADATA_FILE), meta)
    return folder


def read_preset_folder(folder):
    """Reads and checks a preset folder.

    Returns:
        ``(config, weights_path, metadata)``.

    Raises:
        ValueError: a file is missing, unreadable or not a DeepLabV2 preset.
        ChecksumError: the weights differ from the SHA-256 in ``metadata.json``.
    """
    from deeplab_tf.weights.manifest import ChecksumError, sha256_of

    folder = os.fspath(folder)
    files = {}
    for name in (CONFIG_FILE, WEIGHTS_FILE, METADATA_FILE):
        path = os.path.join(folder, name)
        if not os.path.isfile(path):
            raise ValueError(
                f"{folder!r} is not a preset folder: {name} is missing (expected {CONFIG_FILE}, "
                f"{WEIGHTS_FILE} and {METADATA_FILE}, as deeplab_tf.save_to_preset writes)."
            )
        files[name] = path
    parsed = {}
    for name in (CONFIG_FILE, METADATA_FILE):
        try:
            with open(files[name], encoding="utf-8") as f:
                parsed[name] = json.load(f)
        except (OSError, ValueError) as err:
            raise ValueError(f"{files[name]} is not valid JSON: {err}") from None
    config = parsed[CONFIG_FILE]
    if not isinstance(config, dict) or config.get("class_name") != "deeplab_tf>DeepLabV2":
        raise ValueError(
            f"{files[CONFIG_FILE]} does not describe a DeepLabV2 (class_name "
            f"{config.get('class_name') if isinstance(config, dict) else None!r}; expected "
            "'deeplab_tf>DeepLabV2')."
        )
    metadata = parsed[METADATA_FILE]
    expected = metadata.get("weights_sha256") if isinstance(metadata, dict) else None
    actual = sha256_of(files[WEIGHTS_FILE])
    if expected != actual:
        raise ChecksumError(
            f"Refusing {files[WEIGHTS_FILE]}: its SHA-256 {actual} differs from the one in "
            f"{files[METADATA_FILE]} ({expected}). The weights changed after the folder was "
            "written; save the model again with save_to_preset."
        )
    return dict(config["config"]), files[WEIGHTS_FILE], metadata
