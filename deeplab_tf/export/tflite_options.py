"""The TFLite export's quantizations and outputs, in a module without TensorFlow so that the
command line (which starts without it) and the benchmarks read the same lists as
:func:`deeplab_tf.export.tflite.export_tflite`."""

#: ``fp32``; ``fp16`` (fp16 weights); ``dynamic`` (int8 weights, float activations);
#: ``int8`` (full-integer ops, uint8 image in and float outputs); ``int8_full`` (full-integer
#: ops with uint8 input and uint8 probabilities / logits; labels stay int32).
QUANTIZATIONS = ("fp32", "fp16", "dynamic", "int8", "int8_full")
#: The quantizations that need calibration images.
CALIBRATED = ("int8", "int8_full")
#: What the file returns. ``*_stride8`` outputs are at the network's score grid (stride 8 for
#: DeepLab v2; ``*_stride16`` for an output_stride 16 model), without ARG_MAX or the
#: full-resolution RESIZE_BILINEAR.
OUTPUTS = (
    "labels_and_probabilities",
    "labels",
    "probabilities",
    "logits_stride8",
    "probabilities_stride8",
)
