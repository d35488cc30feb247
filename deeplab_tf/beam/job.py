"""``python -m deeplab_tf.beam.job SPEC_FILE RESULT_FILE``: one supervised pipeline attempt
(:func:`deeplab_tf.beam.pipeline.run_with_retries`); not a user command."""

from __future__ import annotations

import os
import pickle
import sys


def main(argv=None) -> int:
    spec_path, result_path = (argv if argv is not None else sys.argv[1:])[:2]
    from deeplab_tf import _registration
    from deeplab_tf.atomic import atomic_write
    from deeplab_tf.beam.pipeline import run_job

    _registration.register_all()
    with open(spec_path, "rb") as f:
        spec = pickle.load(f)
    out = run_job(spec)
    atomic_write(result_path, lambda t: pickle.dump(out, open(t, "wb")))
    return 0


if __name__ == "__main__":
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    sys.exit(main())
