"""Errors shared across the package that belong to no one sub-package (no imports here).

:class:`CLIError` is raised by library helpers that the command line also drives (config
loading, option checks); the ``deeplab-tf`` command prints it as ``deeplab-tf: error: ...`` and
exits with status 2. It lives here, not in :mod:`deeplab_tf.cli`, so that library code never
imports the command line.
"""

from __future__ import annotations


class CLIError(Exception):
    """A user-facing error: printed as ``deeplab-tf: error: ...`` with exit status 2."""
