"""Keras weight files: the SHA-256 manifest and a loader that checks it.

``weights/manifest.json`` (repository root) lists the converted release files::

    {"format_version": 1,
     "models": [{"name": "...", "architecture": "resnet101-aspp-l", "file": "NAME.weights.h5",
                 "source_file": "train_iter_20000.caffemodel", "training_data": "...",
                 "num_classes": 21, "reported_miou": {...}, "sha256": "<hex>" or null}]}

:func:`load_keras_weights` refuses a file whose SHA-256 differs from its manifest entry; an
entry whose ``sha256`` is ``null`` (not yet converted by the maintainers) loads with a warning
instead.
"""

from __future__ import annotations

import hashlib
import json
import os
import warnings

MANIFEST_NAME = "manifest.json"


class ChecksumError(ValueError):
    """A weights file does not match the SHA-256 recorded in its manifest."""


def sha256_of(path) -> str:
    """Hex SHA-256 of a file, read in 1 MiB chunks."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def read_manifest(manifest) -> dict:
    """Loads a manifest from a path (or returns a dict unchanged), checking its structure."""
    if isinstance(manifest, dict):
        data = manifest
        where = "manifest dict"
    else:
        where = os.fspath(manifest)
        try:
            with open(where, encoding="utf-8") as f:
                data = json.load(f)
        except FileNotFoundError:
            raise FileNotFoundError(f"No such manifest. Received: manifest={where!r}") from None
        except (json.JSONDecodeError, UnicodeDecodeError) as err:
            raise ValueError(f"{where} is not valid JSON: {err}") from None
        except IsADirectoryError:
            raise ValueError(f"The manifest is a folder. Received: manifest={where!r}") from None
    if not isinstance(data, dict) or not isinstance(data.get("models"), list):
        raise ValueError(
            f"{where}: a manifest is a JSON object with a 'models' list. "
            f"Received keys: {sorted(data) if isinstance(data, dict) else type(data).__name__}"
        )
    for i, entry in enumerate(data["models"]):
        if not isinstance(entry, dict) or not isinstance(entry.get("name"), str):
            raise ValueError(
                f"{where}: models[{i}] must be an object with a 'name' string. Received: {entry!r}"
            )
        sha = entry.get("sha256")
        if sha is not None and not (
            isinstance(sha, str)
            and len(sha) == 64
            and all(c in "0123456789abcdefABCDEF" for c in sha)
        ):
            raise ValueError(
                f"{where}: models[{i}].sha256 must be 64 hex digits or null. Received: {sha!r}"
            )
    return data


def find_entry(manifest, path=None, name: str | None = None):
    """The manifest entry for ``name`` (if given) or for the file name of ``path``; else None."""
    data = read_manifest(manifest)
    for entry in data["models"]:
        if name is not None and entry.get("name") == name:
            return entry
        if name is None and path is not None and entry.get("file") == os.path.basename(path):
            return entry
    if name is not None:
        known = [e.get("name") for e in data["models"]]
        raise ValueError(f"No manifest entry named {name!r}. Known: {known}")
    return None


def verify_weights(path, manifest="auto", name: str | None = None):
    """Checks a weights file against its manifest entry.

    Args:
        path: the weights file.
        manifest: a manifest path or dict; ``"auto"`` uses ``manifest.json`` next to the file if
            there is one; ``None`` skips the check.
        name: look the entry up by name instead of by file name.

    Returns:
        The manifest entry, or ``None`` when no manifest or no entry applies.

    Raises:
        ChecksumError: the file's SHA-256 differs from the recorded one.
    """
    if manifest is None:
        return None
    if isinstance(manifest, str) and manifest == "auto":
        candidate = os.path.join(os.path.dirname(os.path.abspath(path)), MANIFEST_NAME)
        if not os.path.isfile(candidate):
            return None
        manifest = candidate
    entry = find_entry(manifest, path=path, name=name)
    if entry is None:
        return None
    expected = entry.get("sha256")
    if not expected:
        warnings.warn(
            f"Manifest entry {entry.get('name')!r} records no sha256 yet; {path} is loaded "
            "unverified. Record it with `deeplab-tf convert-caffe ... --manifest`.",
            stacklevel=3,
        )
        return entry
    actual = sha256_of(path)
    if actual.lower() != str(expected).lower():
        raise ChecksumError(
            f"Refusing to load {path}: its SHA-256 does not match manifest entry "
            f"{entry.get('name')!r}. Expected sha256={expected}, received sha256={actual}. "
            "The file is corrupt, truncated or a different conversion; re-convert it from "
            f"{entry.get('source_file', 'the release file')}."
        )
    return entry


def record_in_manifest(manifest_path, entry: dict, overwrite: bool = True) -> dict:
    """Adds or replaces (by ``name``) an entry in a manifest file, written atomically.

    The read-modify-write holds an exclusive lock on the manifest's folder, so concurrent
    recorders do not lose each other's entries.

    Raises:
        ValueError: an entry of that name exists and ``overwrite`` is False.
    """
    from deeplab_tf.atomic import folder_lock, write_json

    manifest_path = os.fspath(manifest_path)
    with folder_lock(os.path.dirname(os.path.abspath(manifest_path))):
        if os.path.isfile(manifest_path):
            data = read_manifest(manifest_path)
        else:
            data = {"format_version": 1, "models": []}
        if not overwrite and any(m.get("name") == entry["name"] for m in data["models"]):
            raise ValueError(manifest_entry_exists(manifest_path, entry["name"]))
        models = [m for m in data["models"] if m.get("name") != entry["name"]]
        models.append(entry)
        data["models"] = models
        write_json(manifest_path, data)
    return data


def manifest_entry_exists(manifest_path, name) -> str | None:
    """The message for an existing entry ``name`` in a manifest file, or None if there is none."""
    manifest_path = os.fspath(manifest_path)
    if not os.path.isfile(manifest_path):
        return None
    for m in read_manifest(manifest_path)["models"]:
        if m.get("name") == name:
            return (
                f"{manifest_path} already has an entry {name!r} (sha256 {m.get('sha256')}); "
                "pass --overwrite to replace it, or choose another --name"
            )
    return None


def load_keras_weights(model, path, manifest="auto", name: str | None = None):
    """Loads a Keras weights file (``.weights.h5`` all or nothing, or a ``.keras`` archive),
    after checking its SHA-256 against the manifest.

    Args:
        model: the Keras model.
        path: the weights file.
        manifest: manifest path or dict, ``"auto"`` (``manifest.json`` beside the file, if any)
            or ``None`` (no check).
        name: manifest entry name (default: matched by file name).

    Returns:
        The model.

    Raises:
        ChecksumError: the file does not match its manifest entry.
        ValueError: a ``.weights.h5`` file that cannot be read or does not match the model
            (see :func:`load_h5_weights`); the model is then unchanged.
    """
    path = os.fspath(path)
    if not os.path.isfile(path):
        raise FileNotFoundError(f"No such weights file. Received: path={path!r}")
    verify_weights(path, manifest=manifest, name=name)
    if path.lower().endswith(".h5"):
        load_h5_weights(model, path)
    else:
        model.load_weights(path)
    return model


def _h5_arrays(path):
    """``{dataset path: array}`` of every dataset in an HDF5 file, read completely."""
    import h5py

    arrays = {}
    try:
        with h5py.File(path, "r") as f:

            def visit(name, obj):
                if isinstance(obj, h5py.Dataset):
                    arrays[name] = obj[()]

            f.visititems(visit)
    except (OSError, KeyError, ValueError, RuntimeError) as err:
        size = os.path.getsize(path)
        raise ValueError(
            f"Cannot read the weights file {path!r} ({size} bytes): it is truncated, corrupt or "
            f"not an HDF5 .weights.h5 file ({type(err).__name__}: {err}). Received: path={path!r}; "
            "expected a file written by model.save_weights() or deeplab-tf convert. The model "
            "was not changed."
        ) from None
    return arrays


def load_h5_weights(model, path):
    """Loads a Keras ``.weights.h5`` file all or nothing.

    The file is read completely and its variables (paths and shapes) are compared with what
    ``model.save_weights`` would write for this model; only when every one matches are the
    weights assigned. Otherwise nothing changes.

    Raises:
        ValueError: the file cannot be read (truncated, random bytes), or it does not match the
            model: the message names the file and lists the missing, unexpected and differently
            shaped variables.
    """
    import tempfile

    path = os.fspath(path)
    found = {k: v.shape for k, v in _h5_arrays(path).items()}
    with tempfile.TemporaryDirectory(prefix="deeplab-weights-") as tmp:
        reference = os.path.join(tmp, "expected.weights.h5")
        model.save_weights(reference)
        expected = {k: v.shape for k, v in _h5_arrays(reference).items()}
    missing = sorted(set(expected) - set(found))
    extra = sorted(set(found) - set(expected))
    shapes = sorted(k for k in set(found) & set(expected) if found[k] != expected[k])
    if missing or extra or shapes:

        def listing(keys, fmt):
            shown = [fmt(k) for k in keys[:12]]
            return ", ".join(shown) + (f" ... and {len(keys) - 12} more" if len(keys) > 12 else "")

        parts = []
        if shapes:
            parts.append(
                f"{len(shapes)} with another shape: "
                + listing(shapes, lambda k: f"{k} file {found[k]} vs model {expected[k]}")
            )
        if missing:
            parts.append(f"{len(missing)} missing from the file: " + listing(missing, str))
        if extra:
            parts.append(f"{len(extra)} not in the model: " + listing(extra, str))
        raise ValueError(
            f"The weights file {path!r} does not match model {model.name!r} "
            f"({len(expected)} variables expected, {len(found)} in the file): "
            + "; ".join(parts)
            + ". Received: path="
            + repr(path)
            + "; expected weights saved from the same architecture and number of classes. "
            "The model was not changed."
        )
    model.load_weights(path)
    return model
