"""The one import of Apache Beam, with the error that says what to install."""

from __future__ import annotations

#: Metrics namespace of every counter the pipelines report.
NAMESPACE = "deeplab_tf"


def import_beam():
    """``apache_beam``, or an ImportError naming the extra (and the protobuf constraint)."""
    try:
        import apache_beam
    except ImportError as err:
        raise ImportError(
            'The Beam runner needs Apache Beam: pip install "deeplab_tf[beam]" (apache-beam '
            "2.77 needs protobuf<7, so install it in its own environment if another package "
            f"needs protobuf 7; docs/scale-out.md). Import failed: {err}"
        ) from err
    return apache_beam
