"""Resumable, verified downloads of weight files, with a mirror setting for offline clusters.

Why not ``keras.utils.get_file``: in Keras 3 it downloads straight onto the cache name with
``urlretrieve`` (a process killed mid-download leaves a truncated file there, which a later call
without ``file_hash`` accepts as cached) and it always starts over. The release archives are
about 1 GB on a server that is slow and sometimes drops connections, so this module keeps a
``NAME.part`` file beside the target, resumes it with an HTTP ``Range`` request, checks the
length and the SHA-256, and only then renames it onto the target. It uses Keras's cache folder
(``$KERAS_HOME`` or ``~/.keras``), as ``get_file`` does.

Mirror: ``DEEPLAB_TF_WEIGHTS_MIRROR`` set to ``http(s)://host/path/`` or to a local folder
replaces every source address by ``MIRROR/FILE`` (``FILE`` the file name of the original
address), for clusters without internet access and corporate proxies.
"""

from __future__ import annotations

import errno
import os
import shutil
import sys
import time
import urllib.error
import urllib.parse
import urllib.request

MIRROR_ENV = "DEEPLAB_TF_WEIGHTS_MIRROR"
_CHUNK = 1 << 20


class DownloadError(OSError):
    """A file could not be fetched (network failure, HTTP error, short or oversized body).

    The partial download (``.part``) is kept, so the next call resumes it."""


def mirror() -> str | None:
    """The mirror from ``DEEPLAB_TF_WEIGHTS_MIRROR`` (an address or a folder), or None."""
    value = os.environ.get(MIRROR_ENV, "").strip()
    return value or None


def source_address(url: str | None, file: str) -> str:
    """Where to fetch ``file`` from: the mirror's ``MIRROR/file`` if one is set, else ``url``.

    Raises:
        ValueError: no mirror is set and the file has no known address.
    """
    base = mirror()
    if base:
        if "://" in base:
            return base.rstrip("/") + "/" + urllib.parse.quote(file)
        return os.path.join(os.path.expanduser(base), file)
    if not url:
        raise ValueError(
            f"{file} has no known download address. Obtain it from the authors' release and "
            f"either pass its path as weights=, or put it in a folder and set {MIRROR_ENV} to "
            "that folder."
        )
    return url


def _is_url(address: str) -> bool:
    return urllib.parse.urlsplit(address).scheme in ("http", "https", "file")


def download(address: str, dest: str, sha256: str | None = None, timeout: float = 60.0,
             retries: int = 3, quiet: bool = False) -> str:  # fmt: skip
    """Fetches ``address`` (a URL or a local file) to ``dest``, resuming ``dest + '.part'``.

    The file appears at ``dest`` only complete: its length equals the server's and, when
    ``sha256`` is given, its SHA-256 matches (a mismatch deletes the part file, since resuming
    a wrong prefix cannot fix it).

    Args:
        address: ``http(s)://`` or ``file://`` URL, or a local path (a mirror folder).
        dest: the final path; its folder is created.
        sha256: expected hex SHA-256, or None.
        timeout: seconds per network operation.
        retries: attempts after the first on a network failure; each resumes.
        quiet: no progress line on stderr.

    Returns:
        ``dest``.

    Raises:
        DownloadError: the transfer failed after every attempt (the part file is kept).
        ChecksumError: the complete file has another SHA-256 (nothing is kept).
        OSError: writing failed (for example the disk is full); the part file is removed
            when it cannot be trusted.
    """
    from deeplab_tf.weights.manifest import ChecksumError

    dest = os.fspath(dest)
    os.makedirs(os.path.dirname(os.path.abspath(dest)), exist_ok=True)
    part = dest + ".part"
    if not _is_url(address):
        _copy_local(address, part)
    else:
        last = None
        for attempt in range(retries + 1):
            try:
                _fetch(address, part, timeout, quiet)
                break
            except DownloadError as err:
                last = err
                if attempt < retries:
                    time.sleep(min(2.0**attempt, 10.0) * 0.1)
        else:
            raise last
    if sha256 is not None:
        from deeplab_tf.weights.manifest import sha256_of

        actual = sha256_of(part)
        if actual.lower() != sha256.lower():
            os.remove(part)
            raise ChecksumError(
                f"Refusing {address}: its SHA-256 is {actual}, expected {sha256}. The file "
                "changed at the source or in transit; nothing was kept in the cache."
            )
    os.replace(part, dest)
    return dest


def _copy_local(path: str, part: str) -> None:
    path = os.path.expanduser(path)
    if not os.path.isfile(path):
        raise DownloadError(
            errno.ENOENT, f"No such file in the mirror folder. Received: {path!r}", path
        )
    try:
        with open(path, "rb") as src, open(part, "wb") as dst:
            shutil.copyfileobj(src, dst, _CHUNK)
            dst.flush()
            os.fsync(dst.fileno())
    except OSError:
        _remove_quietly(part)
        raise


def _fetch(url: str, part: str, timeout: float, quiet: bool) -> None:
    """One attempt: requests the bytes after what ``part`` holds and appends them."""
    have = os.path.getsize(part) if os.path.exists(part) else 0
    request = urllib.request.Request(url, headers={"User-Agent": "deeplab_tf"})
    if have:
        request.add_header("Range", f"bytes={have}-")
    try:
        response = urllib.request.urlopen(request, timeout=timeout)  # noqa: S310 (http only)
    except urllib.error.HTTPError as err:
        if err.code == 416 and have:  # the range starts at the end: the part is complete
            total = _content_range_total(err.headers.get("Content-Range"))
            if total == have:
                return
            os.remove(part)  # longer than the file: not a prefix of it
        raise DownloadError(errno.EIO, f"{url}: HTTP {err.code} {err.reason}", url) from None
    except (urllib.error.URLError, OSError) as err:
        reason = getattr(err, "reason", err)
        raise DownloadError(errno.EIO, f"{url}: cannot connect ({reason})", url) from None
    with response:
        status = getattr(response, "status", 200)
        if status == 206:
            total = _content_range_total(response.headers.get("Content-Range"))
            mode = "ab"
        else:  # the server ignored the range (or there was none): start over
            length = response.headers.get("Content-Length")
            total = int(length) if length and length.isdigit() else None
            have, mode = 0, "wb"
        done = have
        shown = 0.0
        try:
            with open(part, mode) as f:
                while True:
                    try:
                        chunk = response.read(_CHUNK)
                    except (OSError, ValueError) as err:  # reset, timeout, IncompleteRead
                        raise DownloadError(
                            errno.EIO, f"{url}: connection lost after {done} bytes ({err})", url
                        ) from None
                    if not chunk:
                        break
                    f.write(chunk)
                    done += len(chunk)
                    if not quiet and time.monotonic() - shown > 1.0:
                        shown = time.monotonic()
                        of = f" of {total / 1e6:.0f}" if total else ""
                        print(f"\r  {url}: {done / 1e6:.0f}{of} MB", end="", file=sys.stderr)
                f.flush()
                os.fsync(f.fileno())
        except DownloadError:
            raise
        except OSError as err:
            if err.errno == errno.ENOSPC:
                _remove_quietly(part)
                raise OSError(
                    errno.ENOSPC,
                    f"No space left on the device while downloading {url} to {part} "
                    f"({done} bytes written{f' of {total}' if total else ''}); free space or "
                    "set KERAS_HOME to a larger disk. The partial file was removed.",
                    part,
                ) from None
            raise
        if not quiet and shown:
            print(file=sys.stderr)
    if total is not None and done != total:
        raise DownloadError(
            errno.EIO,
            f"{url}: connection closed after {done} of {total} bytes; the next call resumes",
            url,
        )


def _content_range_total(header) -> int | None:
    # "bytes 100-199/200" or "bytes */200"
    if not header or "/" not in header:
        return None
    total = header.rsplit("/", 1)[1].strip()
    return int(total) if total.isdigit() else None


def _remove_quietly(path) -> None:
    try:
        os.remove(path)
    except OSError:
        pass
