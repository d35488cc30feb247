"""Fully connected CRF refinement (SPEC section 6): a permutohedral-lattice mean field in
standard TensorFlow ops, with pydensecrf as an optional reference backend."""

from deeplab_tf.crf.densecrf import DenseCRF, crf_labels
from deeplab_tf.crf.lattice import (
    DEFAULT_MAX_VERTICES,
    Lattice,
    build_lattice,
    lattice_filter,
    make_filter,
)

__all__ = [
    "DEFAULT_MAX_VERTICES",
    "DenseCRF",
    "Lattice",
    "build_lattice",
    "crf_labels",
    "lattice_filter",
    "make_filter",
]
