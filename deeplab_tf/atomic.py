"""Atomic outputs: files, JSON and folders that readers never see half-written.

Every output of the package goes through this module (no TensorFlow here):

* :func:`atomic_write` / :func:`write_bytes` / :func:`write_json`: the content is written to
  an owned temporary file in the destination folder, flushed to disk (``fsync``) and renamed
  onto the final name. With ``overwrite=False`` the rename never replaces an existing file
  (:class:`FileExistsError` instead), so a concurrent writer cannot be clobbered.
* :func:`atomic_dir` / :func:`publish`: a folder is built under an owned temporary name
  and renamed into place; replacing an existing folder (``overwrite=True``) swaps the two
  atomically where the kernel can (``renameat2(RENAME_EXCHANGE)``). :func:`scratch` is the
  owned temporary alone, for work that is published some other way or thrown away.
* :func:`discard`: deletes a file or folder by renaming it to a temporary first.
* :func:`claim_next_version`: publishes a folder as the lowest free integer name above the
  existing ones, atomically (two concurrent publishers get two numbers).
* :func:`temp_path` names temporaries ``.tmp-HOST~PID.START~TOKEN-NAME``: the owner's host,
  process id and process start time. :func:`remove_stale_temps` deletes those whose owner is
  a dead process on this host, and never those of a live process (or of another host, whose
  processes it cannot see). The first temporary created in a folder by a process runs it on
  that folder, so an interrupted run's leftovers go away on the next run there.
"""

from __future__ import annotations

import ctypes
import errno
import json
import os
import re
import secrets
import shutil
import socket
import sys
import time
from contextlib import contextmanager

#: Prefix of every temporary name this module creates.
TEMP_PREFIX = ".tmp-"

_OWNED = re.compile(r"^\.tmp-(?P<host>[A-Za-z0-9_.-]+)~(?P<pid>\d+)\.(?P<start>\d*)~[0-9a-f]+-")
# Temporaries of earlier versions: ``.tmp-PID-...`` and ``NAME.partial-PID...`` name their
# process (assumed to be on this host); the others name no owner and are removed only once
# they are older than ``ownerless_age``.
_LEGACY_PID = (
    re.compile(r"^\.tmp-(?P<pid>\d+)-"),
    re.compile(r"^.+\.partial-(?P<pid>\d+)(\.[A-Za-z0-9.]+)?$"),
)
_LEGACY_OWNERLESS = (
    re.compile(r"^\.tmp-\d+-[0-9a-f]{8}$"),  # export version folders
    re.compile(r"^\..+-writing-[A-Za-z0-9_]{8}$"),  # backup folders (tempfile.mkdtemp)
    re.compile(r"^\.old-[A-Za-z0-9_]{8}$"),  # export: replaced versions
    re.compile(r"^\..+\.[A-Za-z0-9_]{8}\.tmp(\.[A-Za-z0-9]+)?$"),  # tempfile.mkstemp files
    re.compile(r"^\.tmp-[A-Za-z0-9_]{8}\.json$"),
)
#: Age (seconds) after which an ownerless temporary of an earlier version counts as stale.
OWNERLESS_AGE = 24 * 3600

_cleaned: set[str] = set()


def _host() -> str:
    return re.sub(r"[^A-Za-z0-9_.-]", "_", socket.gethostname() or "host")[:40] or "host"


def _start_time(pid: int) -> str:
    """The process's start time in clock ticks since boot (Linux), or "" if unknown."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            stat = f.read().decode("ascii", "replace")
    except OSError:
        return ""
    return stat.rsplit(")", 1)[-1].split()[19]


def owner_tag() -> str:
    """``HOST~PID.START``: this process, as embedded in its temporary names."""
    pid = os.getpid()
    return f"{_host()}~{pid}.{_start_time(pid)}"


def process_alive(pid: int, start: str = "") -> bool:
    """Whether ``pid`` is a running process (started at ``start`` ticks, when given)."""
    if pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        pass
    except OSError:
        return True
    if start:
        now = _start_time(pid)
        if now and now != start:
            return False  # the PID was reused by a newer process
        if not now and os.path.isdir("/proc/self"):
            return False  # gone (or a zombie) between the two checks
    return True


def temp_path(path, kind: str = "") -> str:
    """An owned temporary name beside ``path`` that keeps its extension (writers check it).

    The first call for a folder in this process also removes that folder's stale temporaries
    (:func:`remove_stale_temps`).
    """
    path = os.fspath(path)
    folder = os.path.dirname(os.path.abspath(path))
    if folder not in _cleaned:
        _cleaned.add(folder)
        remove_stale_temps(folder)
    return os.path.join(folder, temp_name(os.path.basename(os.path.normpath(path)), kind))


def temp_name(name: str, kind: str = "") -> str:
    """The owned temporary name for ``name`` (no folder, nothing cleaned): what
    :func:`temp_path` puts beside a local path, and what a writer to a folder this module cannot
    rename in (an object store) uses for its staging name."""
    token = secrets.token_hex(4) + (f"-{kind}" if kind else "")
    keep = 200 - len(owner_tag()) - len(token)
    if len(name) > keep:  # stay below NAME_MAX (255) with the extension kept
        head, ext = _split_ext(name)
        name = head[: max(1, keep - len(ext))] + ext
    return f"{TEMP_PREFIX}{owner_tag()}~{token}-{name}"


def _split_ext(name):
    for ext in (".weights.h5", ".tar.gz"):
        if name.endswith(ext):
            return name[: -len(ext)], ext
    return os.path.splitext(name)


def temp_owner(name: str):
    """``(host, pid, start)`` of an owned temporary name, ``(None, pid, "")`` for an older
    version's ``.tmp-PID-`` / ``.partial-PID`` name, else None."""
    m = _OWNED.match(name)
    if m:
        return m["host"], int(m["pid"]), m["start"]
    for pattern in _LEGACY_PID:
        m = pattern.match(name)
        if m:
            return None, int(m["pid"]), ""
    return None


def is_stale_temp(folder: str, name: str, ownerless_age: float = OWNERLESS_AGE) -> bool:
    """Whether ``folder/name`` is a temporary left by a process that is no longer running."""
    if any(p.match(name) for p in _LEGACY_OWNERLESS):
        try:
            age = time.time() - os.lstat(os.path.join(folder, name)).st_mtime
        except OSError:
            return False
        return age > ownerless_age
    owner = temp_owner(name)
    if owner is None:
        return False
    host, pid, start = owner
    if host is not None and host != _host():
        return False  # another machine's process: its liveness is unknown here
    return not process_alive(pid, start)


def remove_stale_temps(folder, ownerless_age: float = OWNERLESS_AGE) -> list[str]:
    """Deletes the temporaries in ``folder`` whose owner process is dead; returns their paths.

    Temporaries of live processes, of other hosts and anything that is not a temporary name
    are left alone. Errors (a folder that vanished, permissions) are ignored: cleaning up is
    never a reason to fail a run.
    """
    folder = os.fspath(folder)
    try:
        names = os.listdir(folder)
    except OSError:
        return []
    removed = []
    for name in names:
        if not is_stale_temp(folder, name, ownerless_age):
            continue
        path = os.path.join(folder, name)
        try:
            if os.path.isdir(path) and not os.path.islink(path):
                shutil.rmtree(path)
            else:
                os.remove(path)
            removed.append(path)
        except OSError:
            pass
    return removed


def _fsync_path(path):
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def _fsync_tree(path):
    if os.path.isdir(path):
        for root, _, files in os.walk(path):
            for f in files:
                _fsync_path(os.path.join(root, f))
            _fsync_path(root)
    else:
        _fsync_path(path)


# renameat2(2) flags (Linux >= 3.15; glibc >= 2.28 exports the wrapper).
_RENAME_NOREPLACE = 1
_RENAME_EXCHANGE = 2
_AT_FDCWD = -100
_renameat2 = None


def _renameat2_fn():
    global _renameat2
    if _renameat2 is None:
        _renameat2 = False
        if sys.platform.startswith("linux"):
            try:
                fn = ctypes.CDLL(None, use_errno=True).renameat2
                fn.argtypes = [ctypes.c_int, ctypes.c_char_p, ctypes.c_int, ctypes.c_char_p]
                fn.argtypes += [ctypes.c_uint]
                fn.restype = ctypes.c_int
                _renameat2 = fn
            except (AttributeError, OSError):
                pass
    return _renameat2


def _rename2(src, dst, flags) -> bool:
    """renameat2 with ``flags``; False when the system or file system does not support it."""
    fn = _renameat2_fn()
    if not fn:
        return False
    if fn(_AT_FDCWD, os.fsencode(src), _AT_FDCWD, os.fsencode(dst), flags) == 0:
        return True
    err = ctypes.get_errno()
    if err in (errno.EINVAL, errno.ENOSYS, errno.ENOTSUP, errno.EOPNOTSUPP):
        return False
    raise OSError(err, os.strerror(err), dst)


def rename_noreplace(src, dst) -> None:
    """Renames ``src`` onto ``dst`` only if ``dst`` does not exist, atomically.

    Raises:
        FileExistsError: ``dst`` exists (file, folder, even an empty one).
    """
    src, dst = os.fspath(src), os.fspath(dst)
    try:
        if _rename2(src, dst, _RENAME_NOREPLACE):
            return
    except OSError as err:
        if err.errno == errno.EEXIST:
            raise FileExistsError(errno.EEXIST, "already exists", dst) from None
        raise
    if not os.path.isdir(src):
        os.link(src, dst)  # fails with FileExistsError if dst exists; atomic
        os.remove(src)
        return
    # Folders without renameat2: claim the name with mkdir (exclusive), then rename onto the
    # claimed empty folder (rename replaces an empty folder).
    os.mkdir(dst)
    try:
        os.rename(src, dst)
    except OSError:
        os.rmdir(dst)
        raise


def _replace(src, dst, aside=None):
    """Puts ``src`` at ``dst`` replacing what is there; returns what was replaced (to delete)."""
    if not os.path.isdir(src):
        os.replace(src, dst)
        return None
    if os.path.lexists(dst):
        try:
            if _rename2(src, dst, _RENAME_EXCHANGE):
                return src  # src now holds the old folder
        except FileNotFoundError:  # dst vanished meanwhile
            rename_noreplace(src, dst)
            return None
        old = aside or temp_path(dst, "old")
        if os.path.lexists(old):
            shutil.rmtree(old)
        os.rename(dst, old)
        os.rename(src, dst)
        return old
    rename_noreplace(src, dst)
    return None


def publish(tmp, path, overwrite: bool = True, aside: str | None = None) -> str:
    """Moves a complete temporary file or folder ``tmp`` onto ``path``, durably.

    Args:
        tmp: the temporary (in ``path``'s folder).
        path: the final name.
        overwrite: replace an existing ``path`` (a folder is swapped in atomically where the
            system allows); otherwise an existing ``path`` raises :class:`FileExistsError`.
        aside: where an existing folder goes while being replaced on systems without an
            atomic exchange (default: an owned temporary name).

    Returns:
        ``path``.
    """
    tmp, path = os.fspath(tmp), os.fspath(path)
    _fsync_tree(tmp)
    if overwrite:
        old = _replace(tmp, path, aside)
        if old:
            shutil.rmtree(old, ignore_errors=True)
    else:
        rename_noreplace(tmp, path)
    _fsync_path(os.path.dirname(os.path.abspath(path)))
    return path


class OutputExistsError(FileExistsError):
    """An output exists and may not be replaced; ``str()`` is the user-facing message."""

    def __str__(self):
        return self.strerror


def exists_error(path, flag: str = "--overwrite") -> OutputExistsError:
    """The error for an existing output that may not be replaced."""
    return OutputExistsError(
        errno.EEXIST,
        f"{os.fspath(path)!r} already exists; pass {flag} to replace it, or choose another path",
        os.fspath(path),
    )


def atomic_write(path, write, overwrite: bool = True) -> str:
    """Calls ``write(tmp_path)`` then moves the temporary file onto ``path`` (see :func:`publish`).

    The temporary sits in the destination folder and keeps ``path``'s extension, so the rename
    is atomic and a reader never sees a half-written output; on failure it is removed.

    Raises:
        FileExistsError: ``overwrite`` is False and ``path`` exists (checked before ``write``
            runs, and again atomically when publishing).
    """
    path = os.fspath(path)
    if not overwrite and os.path.lexists(path):
        raise exists_error(path)
    tmp = temp_path(path)
    try:
        write(tmp)
        if not os.path.lexists(tmp):
            raise FileNotFoundError(errno.ENOENT, "the writer did not create its file", tmp)
        try:
            publish(tmp, path, overwrite)
        except FileExistsError:  # created meanwhile by someone else: theirs stays
            raise exists_error(path) from None
    except BaseException:
        _remove(tmp)
        raise
    return path


def _remove(path):
    try:
        if os.path.isdir(path) and not os.path.islink(path):
            shutil.rmtree(path, ignore_errors=True)
        elif os.path.lexists(path):
            os.remove(path)
    except OSError:
        pass


def write_bytes(path, data: bytes, overwrite: bool = True) -> str:
    """Writes ``data`` to ``path`` atomically."""

    def write(tmp):
        with open(tmp, "wb") as f:
            f.write(data)

    return atomic_write(path, write, overwrite)


def write_text(path, text: str, overwrite: bool = True) -> str:
    """Writes ``text`` (UTF-8) to ``path`` atomically."""
    return write_bytes(path, text.encode("utf-8"), overwrite)


def write_json(path, obj, overwrite: bool = True, indent: int = 2, **kwargs) -> str:
    """Writes ``obj`` as JSON (with a final newline) to ``path`` atomically."""
    return write_text(path, json.dumps(obj, indent=indent, **kwargs) + "\n", overwrite)


@contextmanager
def scratch(path, kind: str = "", mkdir: bool = True):
    """An owned temporary name beside ``path`` for work that is published from it (with
    :func:`publish` or :func:`claim_next_version`) or thrown away.

    Yields the temporary's path (a new empty folder, unless ``mkdir`` is False). Whatever is
    still at that path when the block ends, normally or by an exception, is removed; a process
    killed in the block leaves it to the next run's stale-temporary clean-up.
    """
    path = os.fspath(path)
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    tmp = temp_path(path, kind)
    if mkdir:
        os.mkdir(tmp)
    try:
        yield tmp
    finally:
        _remove(tmp)


@contextmanager
def atomic_dir(path, overwrite: bool = False, aside: str | None = None):
    """Builds a folder under a temporary name and publishes it at ``path`` when the block ends.

    Yields the temporary folder's path. If the block raises, the temporary folder is removed
    and ``path`` is left as it was.

    Raises:
        FileExistsError: ``path`` exists and ``overwrite`` is False.
    """
    path = os.fspath(path)
    if not overwrite and os.path.lexists(path):
        raise exists_error(path)
    with scratch(path) as tmp:
        yield tmp
        publish(tmp, path, overwrite, aside)


def discard(path) -> None:
    """Deletes a file or folder, first renaming it to an owned temporary name, so that a kill
    during the deletion leaves nothing half-deleted under the real name (the next run there
    removes the temporary as stale). Nothing happens if ``path`` does not exist."""
    path = os.fspath(path)
    if not os.path.lexists(path):
        return
    doomed = temp_path(path, "discard")
    os.rename(path, doomed)
    _remove(doomed)


def _plain_version(name: str):
    return int(name) if name.isdigit() and not name.startswith("0") else None


def claim_next_version(tmp, base_dir, first: int | None = None, version_of=None) -> str:
    """Publishes folder ``tmp`` as ``base_dir/N``: ``N`` one above the highest version among
    the existing names (and at least ``first``, and at least 1), chosen at the moment of the
    rename; a concurrent publisher that takes ``N`` first pushes this one to ``N + 1``.

    Args:
        tmp: the complete folder, in ``base_dir``.
        base_dir: the folder of versions.
        first: the lowest number to use.
        version_of: ``name -> int or None``, the version a folder name stands for (default:
            plain integers without leading zeros).

    Returns:
        The published path.
    """
    base_dir = os.fspath(base_dir)
    version_of = version_of or _plain_version
    _fsync_tree(tmp)
    while True:
        taken = [v for v in map(version_of, os.listdir(base_dir)) if v is not None]
        n = max([0, *taken]) + 1
        if first is not None:
            n = max(n, int(first))
        target = os.path.join(base_dir, str(n))
        try:
            rename_noreplace(tmp, target)
        except FileExistsError:
            continue  # someone claimed n between listdir and rename: take the next one
        _fsync_path(base_dir)
        return target


@contextmanager
def folder_lock(folder):
    """An exclusive advisory lock (``flock``) on ``folder`` for a read-modify-write of a file in
    it; creates no lock file. A no-op where ``flock`` is unavailable."""
    try:
        import fcntl
    except ImportError:  # Windows
        yield
        return
    fd = os.open(os.fspath(folder), os.O_RDONLY)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)  # releases the lock


def same_file(a, b) -> bool:
    """Whether two paths name the same file (same resolved path, or same inode)."""
    a, b = os.fspath(a), os.fspath(b)
    if os.path.realpath(a) == os.path.realpath(b):
        return True
    try:
        return os.path.samefile(a, b)
    except OSError:
        return False


class OutputError(ValueError):
    """An output path that may not be written: it is an input, another output of the same
    run, a folder where a file is expected, or exists and replacing it was not asked for."""


def _key(path):
    return os.path.normcase(os.path.realpath(os.fspath(path)))


def _inode(path):
    try:
        st = os.stat(path)
    except OSError:
        return None
    return st.st_dev, st.st_ino


def check_outputs(outputs, inputs=(), overwrite: bool = False, flag: str = "--overwrite"):
    """Checks a run's outputs before any work is done.

    Args:
        outputs: ``(what, path)`` pairs, e.g. ``("--report", "r.json")``.
        inputs: ``(what, path)`` pairs of the files the run reads (``None`` paths ignored).
        overwrite: whether existing outputs may be replaced.
        flag: the option that allows replacing, named in the message.

    Raises:
        OutputError: an output resolves to an input (same path or same file, e.g. a hard
            link), two outputs resolve to the same file, or an output exists and
            ``overwrite`` is False. The message names the paths involved.
    """
    by_path, by_inode = {}, {}
    for what, path in inputs:
        if path is None:
            continue
        by_path.setdefault(_key(path), (what, path))
        inode = _inode(path)
        if inode is not None:
            by_inode.setdefault(inode, (what, path))
    seen, existing = {}, []
    for what, path in outputs:
        path = os.fspath(path)
        key = _key(path)
        inode = _inode(path)
        hit = by_path.get(key) or (by_inode.get(inode) if inode is not None else None)
        if hit is not None:
            raise OutputError(
                f"{what} {path!r} would overwrite the input {hit[1]!r} ({hit[0]}); an output "
                "never replaces an input: choose another output path"
            )
        if key in seen:
            other = seen[key]
            raise OutputError(
                f"{what} {path!r} and {other[0]} {other[1]!r} are the same output file; "
                "two outputs of one run may not share a path"
            )
        seen[key] = (what, path)
        if os.path.lexists(path):
            existing.append((what, path))
    if existing and not overwrite:
        what, path = existing[0]
        more = f" (and {len(existing) - 1} more output(s))" if len(existing) > 1 else ""
        raise OutputError(
            f"{what} {path!r} already exists{more}; pass {flag} to replace, or choose another "
            "output path"
        )
    return existing


def check_output(path, overwrite: bool = False, inputs=(), option: str = "--out"):
    """:func:`check_outputs` for one output file; ``inputs`` are plain paths (or None)."""
    path = os.fspath(path)
    if os.path.isdir(path):
        raise OutputError(f"{option} {path!r} is a folder; expected a file path")
    check_outputs([(option, path)], [("input", p) for p in inputs], overwrite)
