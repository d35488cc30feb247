"""``python -m deeplab_tf``: the same as the ``deeplab-tf`` command."""

import sys

from deeplab_tf.cli import main

sys.exit(main())
