"""The weights cache: fetch a preset's source once, verify it, convert it once, load it strictly.

Layout, under Keras's cache folder (``$KERAS_HOME`` or ``~/.keras``), in ``deeplab_tf/``::

    downloads/FILE                  the fetched source (a release archive or a .pth)
    sources/PRESET/MEMBER           a member unpacked from an archive, once
    converted/PRESET.weights.h5     the converted weights (PRESET-cN for a backbone-only preset
                                    loaded into a model of N classes)
    records.json                    SHA-256 and size of every file above, recorded when it was
                                    first fetched or written; later loads verify against it
    locks/FILE                      a folder whose ``flock`` serialises fetching FILE and the
                                    conversions of the presets made from it

Every file appears under its name only complete (downloads resume from ``FILE.part``; unpacked
and converted files are written under a temporary name and renamed). A source whose SHA-256 is
published is checked against it; one whose SHA-256 is not is recorded on its first download
and every later use is checked against that record, so a file that changed is never accepted
silently (``deeplab-tf weights verify`` re-checks them all).

The conversion of Caffe and PyTorch files is done by :mod:`deeplab_tf.convert` (which builds
on the models): ``import deeplab_tf`` hands its loader to this module
(:func:`register_converter`), as it hands the CRF its presets, so this package stays below the
models in the import graph.
"""

from __future__ import annotations

import contextlib
import errno
import os
import time
import warnings
import zipfile

from deeplab_tf.weights.download import DownloadError, download, source_address
from deeplab_tf.weights.manifest import ChecksumError, load_h5_weights, sha256_of
from deeplab_tf.weights.presets import get_preset

CACHE_ENV = "DEEPLAB_TF_CACHE"
_converter = None


def register_converter(fn) -> None:
    """Sets the function that loads a Caffe or PyTorch file into a model:
    ``fn(model, path, include_classifier)`` (``deeplab_tf.convert`` provides it)."""
    global _converter
    _converter = fn


def converter():
    """The registered converter.

    Raises:
        RuntimeError: none is registered (``import deeplab_tf`` registers it).
    """
    if _converter is None:
        raise RuntimeError(
            "No Caffe/PyTorch converter is registered: call deeplab_tf._registration."
            "register_all() (`import deeplab_tf` does, except in the deeplab-tf command before "
            "it has parsed a verb)."
        )
    return _converter


def cache_dir() -> str:
    """The cache root: ``$DEEPLAB_TF_CACHE``, else ``deeplab_tf`` under Keras's cache folder."""
    root = os.environ.get(CACHE_ENV)
    if root:
        return os.path.abspath(os.path.expanduser(root))
    keras_home = os.environ.get("KERAS_HOME") or os.path.join(os.path.expanduser("~"), ".keras")
    return os.path.join(keras_home, "deeplab_tf")


def _path(*parts) -> str:
    return os.path.join(cache_dir(), *parts)


@contextlib.contextmanager
def preset_lock(name: str):
    """An exclusive lock (all processes) named ``name``: the source file a preset fetches,
    so that presets sharing a release archive never download it twice at once."""
    from deeplab_tf.atomic import folder_lock

    folder = _path("locks", name)
    os.makedirs(folder, exist_ok=True)
    with folder_lock(folder):
        yield


# --- records: the SHA-256 of every cached file, written on first fetch --------------------


def _records_path() -> str:
    return _path("records.json")


def read_records() -> dict:
    """``{cache-relative path: {"sha256", "size", "source", "recorded"}}``."""
    import json

    path = _records_path()
    if not os.path.isfile(path):
        return {}
    try:
        with open(path, encoding="utf-8") as f:
            data = json.load(f)
    except (OSError, ValueError) as err:
        raise ValueError(
            f"The weights cache's record {path} is unreadable ({err}); delete it and the "
            "files it described to start the cache afresh."
        ) from None
    return data.get("files", {}) if isinstance(data, dict) else {}


def _record(rel: str, sha256: str, source: str) -> None:
    from deeplab_tf.atomic import folder_lock, write_json

    os.makedirs(cache_dir(), exist_ok=True)
    with folder_lock(cache_dir()):
        files = read_records()
        files[rel] = {
            "sha256": sha256,
            "size": os.path.getsize(_path(rel)),
            "source": source,
            "recorded": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        }
        write_json(_records_path(), {"format_version": 1, "files": files})


def _forget(rel: str) -> None:
    from deeplab_tf.atomic import folder_lock, write_json

    with folder_lock(cache_dir()):
        files = read_records()
        if files.pop(rel, None) is not None:
            write_json(_records_path(), {"format_version": 1, "files": files})


def check_recorded(rel: str, expected: str | None = None) -> str:
    """Verifies cached file ``rel`` against the published ``expected`` SHA-256 or its record.

    Returns:
        Its SHA-256.

    Raises:
        ChecksumError: the file differs from what was published or first recorded.
    """
    path = _path(rel)
    actual = sha256_of(path)
    recorded = read_records().get(rel, {}).get("sha256")
    for what, want in (("published", expected), ("recorded on its first download", recorded)):
        if want and actual.lower() != want.lower():
            raise ChecksumError(
                f"Refusing {path}: its SHA-256 {actual} differs from the one {what} ({want}). "
                f"It changed since; delete it (`deeplab-tf weights fetch {rel.split('/')[-1]} "
                "--refresh` re-fetches) after checking why."
            )
    return actual


# --- fetch ----------------------------------------------------------------------------------


def download_rel(preset: dict) -> str:
    return "downloads/" + preset["source"]["file"]


def source_rel(preset: dict) -> str:
    """The cache-relative path of the preset's source file (the unpacked member, or the
    download itself)."""
    member = preset["source"].get("member")
    if member:
        return f"sources/{preset['name']}/{os.path.basename(member)}"
    return download_rel(preset)


def converted_rel(preset: dict, num_classes: int | None = None) -> str:
    if preset["classifier"]:
        return f"converted/{preset['name']}.weights.h5"
    return f"converted/{preset['name']}-c{int(num_classes)}.weights.h5"


def fetch_source(name: str, quiet: bool = False) -> str:
    """Downloads (or copies from the mirror) a preset's source and unpacks it; once.

    Returns:
        The local path of the source file (a ``.caffemodel`` or ``.pth``).

    Raises:
        ValueError: unknown preset, no known address and no mirror, or a corrupt archive.
        DownloadError: the network failed (the next call resumes).
        ChecksumError: a file differs from its published or recorded SHA-256.
    """
    preset = get_preset(name)
    with preset_lock(preset["source"]["file"]):
        return _fetch_locked(preset, quiet)


def _fetch_locked(preset: dict, quiet: bool) -> str:
    src = preset["source"]
    rel = source_rel(preset)
    if os.path.isfile(_path(rel)):
        check_recorded(rel, src["sha256"] if not src.get("member") else None)
        return _path(rel)
    drel = download_rel(preset)
    if not os.path.isfile(_path(drel)):
        address = source_address(src["url"], src["file"])
        if not quiet:
            print(f"Fetching {preset['name']} from {address}", flush=True)
        download(address, _path(drel), sha256=src["sha256"], quiet=quiet)
        _record(drel, sha256_of(_path(drel)), address)
    else:
        check_recorded(drel, src["sha256"])
    if src.get("member"):
        _unpack(preset, drel, rel)
    return _path(rel)


def _unpack(preset: dict, drel: str, rel: str) -> None:
    from deeplab_tf.atomic import atomic_write

    archive, member = _path(drel), preset["source"]["member"]
    try:
        with zipfile.ZipFile(archive) as z:
            names = [n for n in z.namelist() if os.path.basename(n) == member]
            if len(names) != 1:
                raise ValueError(
                    f"{archive} holds {len(names)} files named {member!r} "
                    f"(expected exactly one); its files: {', '.join(z.namelist()[:20])}"
                )

            def write(tmp):
                with z.open(names[0]) as f, open(tmp, "wb") as out:
                    while chunk := f.read(1 << 20):
                        out.write(chunk)

            os.makedirs(os.path.dirname(_path(rel)), exist_ok=True)
            atomic_write(_path(rel), write)
    except (zipfile.BadZipFile, EOFError, zipfile.LargeZipFile) as err:
        _discard_download(drel)
        raise ValueError(
            f"The downloaded archive {archive} is truncated or corrupt ({err}); it was removed "
            "from the cache, so the next call downloads it again."
        ) from None
    _record(rel, sha256_of(_path(rel)), f"{drel}!{names[0]}")


def _discard_download(drel: str) -> None:
    from deeplab_tf.atomic import discard

    discard(_path(drel))
    _forget(drel)


# --- convert and load -----------------------------------------------------------------------


def check_fits(model, preset: dict) -> None:
    """Raises ValueError when ``model`` is not the preset's architecture or class count."""
    config = model.get_config()
    got = (config.get("backbone"), config.get("head"))
    want = (preset["backbone"], preset["head"])
    problems = []
    if got != want:
        problems.append(f"backbone/head {got[0]}/{got[1]} (the preset needs {want[0]}/{want[1]})")
    if preset["classifier"] and config.get("num_classes") != preset["num_classes"]:
        problems.append(
            f"num_classes={config.get('num_classes')} (the preset's classifier has "
            f"{preset['num_classes']}; build the model with num_classes={preset['num_classes']}, "
            "or fine-tune from a backbone-only preset)"
        )
    if config.get("preprocessing") not in (None, "caffe", "normalize"):
        problems.append(
            f"preprocessing={config.get('preprocessing')!r} (the release expects 'caffe': "
            "BGR, mean subtraction; or 'normalize' for input_channels, whose first convolution "
            "is adapted)"
        )
    if problems:
        raise ValueError(
            f"Weights preset {preset['name']!r} does not fit model {model.name!r}: "
            + "; ".join(problems)
        )


def load_preset_weights(model, name: str, quiet: bool = False):
    """Loads preset ``name`` into ``model``: fetched, verified and converted on first use, then
    read from the cache (offline).

    A backbone-only preset (``classifier: False``) leaves the model's classifier as it was
    initialised.

    Returns:
        The preset (a dict).

    Raises:
        ValueError: the preset does not fit the model, or a file is corrupt.
        ChecksumError, DownloadError: see :func:`fetch_source`.
    """
    preset = get_preset(name)
    check_fits(model, preset)
    if preset["warning"]:
        warnings.warn(f"{preset['name']}: {preset['warning']}", stacklevel=3)
    rel = converted_rel(preset, model.get_config().get("num_classes"))
    kept = _classifier_values(model) if not preset["classifier"] else None
    with preset_lock(preset["source"]["file"]):  # presets sharing an archive wait for each other
        if os.path.isfile(_path(rel)):
            check_recorded(rel)
            load_h5_weights(model, _path(rel))
        else:
            source = _fetch_locked(preset, quiet)
            if not quiet:
                print(f"Converting {source} (checked layer by layer)", flush=True)
            converter()(model, source, preset["classifier"])
            _save_converted(model, rel)
    if kept is not None:
        _restore_classifier(model, kept)
    return preset


def _classifier_values(model):
    return {n: model.get_layer(n).get_weights() for n in model.classifier_layer_names}


def _restore_classifier(model, kept) -> None:
    for n, values in kept.items():
        model.get_layer(n).set_weights(values)


def _save_converted(model, rel: str) -> None:
    from deeplab_tf.atomic import atomic_write

    path = _path(rel)
    os.makedirs(os.path.dirname(path), exist_ok=True)
    try:
        atomic_write(path, model.save_weights)
    except OSError as err:
        if err.errno == errno.ENOSPC:
            raise OSError(
                errno.ENOSPC,
                f"No space left on the device to cache the converted weights at {path}; the "
                "model holds them in memory, nothing half-written was kept. Free space or set "
                f"{CACHE_ENV} to a larger disk.",
                path,
            ) from None
        raise
    _record(rel, sha256_of(path), "converted by deeplab_tf")


def preset_files(name: str) -> dict:
    """``{role: path}`` of a preset's cached files that exist (download, source, converted)."""
    preset = get_preset(name)
    files = {}
    for role, rel in (("download", download_rel(preset)), ("source", source_rel(preset))):
        if os.path.isfile(_path(rel)):
            files[role] = _path(rel)
    folder = _path("converted")
    if os.path.isdir(folder):
        for f in sorted(os.listdir(folder)):
            if f == f"{name}.weights.h5" or (
                f.startswith(f"{name}-c") and f.endswith(".weights.h5")
            ):
                files[f"converted:{f}"] = os.path.join(folder, f)
    return files


def verify_preset(name: str) -> dict:
    """Re-checks every cached file of a preset against its published or recorded SHA-256.

    Returns:
        ``{path: sha256}`` of the files checked (empty when nothing is cached).

    Raises:
        ChecksumError: a file changed.
        ValueError: a file exists without a record (written by something else).
    """
    preset = get_preset(name)
    records = read_records()
    out = {}
    with preset_lock(preset["source"]["file"]):
        for path in preset_files(name).values():
            rel = os.path.relpath(path, cache_dir()).replace(os.sep, "/")
            if rel not in records:
                raise ValueError(
                    f"{path} is in the weights cache without a record of its SHA-256, so it "
                    "cannot be verified; delete it and fetch again."
                )
            published = preset["source"]["sha256"] if rel == download_rel(preset) else None
            out[path] = check_recorded(rel, published)
    return out


__all__ = [
    "CACHE_ENV",
    "ChecksumError",
    "DownloadError",
    "cache_dir",
    "check_fits",
    "fetch_source",
    "load_preset_weights",
    "preset_files",
    "read_records",
    "register_converter",
    "verify_preset",
]
