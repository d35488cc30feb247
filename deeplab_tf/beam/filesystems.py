"""Reading inputs and publishing outputs through Beam's FileSystems (local, ``gs://``, ...).

Local paths go through :mod:`deeplab_tf.atomic` as everywhere in the package. Other schemes
(object stores, where no atomic rename exists) are written locally with the same writers,
copied to an owned temporary name beside the destination (:func:`deeplab_tf.atomic.temp_name`)
and renamed onto it, so a reader never sees a partial object and a retried element simply
replaces an object with identical bytes (docs/scale-out.md#faults-and-retries).
"""

from __future__ import annotations

import contextlib
import os
import re
import shutil
import tempfile

_SCHEME = re.compile(r"^[A-Za-z][A-Za-z0-9+.-]*://")


def is_remote(path) -> bool:
    """Whether ``path`` names a Beam file system other than the local one (``file://`` is local)."""
    path = os.fspath(path)
    return bool(_SCHEME.match(path)) and not path.startswith("file://")


def local_path(path) -> str:
    """``path`` without a ``file://`` prefix."""
    path = os.fspath(path)
    return path[len("file://") :] if path.startswith("file://") else path


def join(folder, name) -> str:
    """``folder/name`` for local and remote folders alike."""
    if is_remote(folder):
        from apache_beam.io.filesystems import FileSystems

        return FileSystems.join(folder, name)
    return os.path.join(local_path(folder), name)


def exists(path) -> bool:
    if is_remote(path):
        from apache_beam.io.filesystems import FileSystems

        return FileSystems.exists(path)
    return os.path.lexists(local_path(path))


def match(pattern) -> list[str]:
    """The files a remote glob matches, sorted (local inputs use ``expand_inputs``)."""
    from apache_beam.io.filesystems import FileSystems

    found = FileSystems.match([pattern])[0].metadata_list
    return sorted(m.path for m in found)


@contextlib.contextmanager
def local_copy(path):
    """A local file with ``path``'s content: ``path`` itself when local, else a downloaded
    copy (same base name, so that readers see the extension) removed afterwards."""
    if not is_remote(path):
        yield local_path(path)
        return
    from apache_beam.io.filesystems import FileSystems

    folder = tempfile.mkdtemp(prefix="deeplab_tf_beam_")
    try:
        dst = os.path.join(folder, os.path.basename(path.rstrip("/")) or "input")
        with FileSystems.open(path) as src, open(dst, "wb") as out:
            shutil.copyfileobj(src, out, 1 << 20)
        yield dst
    finally:
        shutil.rmtree(folder, ignore_errors=True)


def publish_files(local_files, folder) -> list[str]:
    """Copies finished local files into a remote ``folder``: each to an owned temporary name,
    then renamed onto ``folder/basename`` (replacing an earlier attempt's object)."""
    from apache_beam.io.filesystems import FileSystems

    from deeplab_tf.atomic import temp_name

    out = []
    for f in local_files:
        name = os.path.basename(f)
        final, tmp = FileSystems.join(folder, name), FileSystems.join(folder, temp_name(name))
        with open(f, "rb") as src, FileSystems.create(tmp) as dst:
            shutil.copyfileobj(src, dst, 1 << 20)
        if FileSystems.exists(final):
            FileSystems.delete([final])
        FileSystems.rename([tmp], [final])
        out.append(final)
    return out


@contextlib.contextmanager
def staged_base(base):
    """``(write_base, finish)`` for outputs named ``base + suffix``: local bases are written
    in place (atomically by the writers); remote ones in a local folder, then published."""
    if not is_remote(base):
        yield local_path(base), lambda files: files
        return
    folder = tempfile.mkdtemp(prefix="deeplab_tf_beam_out_")
    remote_folder, stem = base.rsplit("/", 1)
    try:
        yield os.path.join(folder, stem), lambda files: publish_files(files, remote_folder)
    finally:
        shutil.rmtree(folder, ignore_errors=True)


def write_json(path, obj) -> str:
    """Writes ``obj`` as JSON atomically (``deeplab_tf.atomic`` locally, staged remotely)."""
    import json

    from deeplab_tf import atomic

    if not is_remote(path):
        os.makedirs(os.path.dirname(os.path.abspath(local_path(path))), exist_ok=True)
        return atomic.write_json(local_path(path), obj)
    folder = tempfile.mkdtemp(prefix="deeplab_tf_beam_json_")
    try:
        tmp = os.path.join(folder, path.rsplit("/", 1)[1])
        atomic.write_text(tmp, json.dumps(obj, indent=2) + "\n")
        return publish_files([tmp], path.rsplit("/", 1)[0])[0]
    finally:
        shutil.rmtree(folder, ignore_errors=True)


def read_json(path):
    import json

    if not is_remote(path):
        with open(local_path(path)) as f:
            return json.load(f)
    from apache_beam.io.filesystems import FileSystems

    with FileSystems.open(path) as f:
        return json.loads(f.read().decode("utf-8"))
