"""Fully connected CRF refinement (paper section 3.3): a permutohedral-lattice mean field in
standard TensorFlow ops, with pydensecrf as an optional reference backend.

Names are imported lazily (PEP 562), so that the ``crf-search`` command module, which lives in
this package, is registered with the command line without importing TensorFlow.
"""

from deeplab_tf._lazy import lazy_exports

_DENSECRF = "deeplab_tf.crf.densecrf"
_LATTICE = "deeplab_tf.crf.lattice"
_EXPORTS = {
    "DenseCRF": _DENSECRF,
    "crf_labels": _DENSECRF,
    "DEFAULT_MAX_VERTICES": _LATTICE,
    "Lattice": _LATTICE,
    "build_lattice": _LATTICE,
    "lattice_filter": _LATTICE,
    "make_filter": _LATTICE,
}
__all__ = sorted(_EXPORTS)
__getattr__, __dir__ = lazy_exports(__name__, _EXPORTS)
