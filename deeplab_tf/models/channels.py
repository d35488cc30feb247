"""Inputs with any number of channels: the rule that adapts a 3-channel first convolution.

Pretrained weights (ImageNet, the authors' release, the PyTorch port) have a first
convolution for 3 channels. A model built with ``input_channels=N`` gets that kernel adapted,
for every source of weights, by :func:`adapt_input_kernel`:

* the kernel is put in RGB order (the Caffe backbones' kernels read BGR);
* ``N = 1``: the sum of the three kernels (a grey image ``g`` then gives what the RGB image
  ``(g, g, g)`` gave);
* ``N = 2``: both channels get the mean kernel, times 3/2;
* ``N >= 3``: the RGB kernels are kept for channels 0-2 and every further channel gets their
  mean; all are scaled by 3/N, so that an input whose channels all equal ``v`` gives the same
  activation as the RGB image ``(v, v, v)`` (timm's ``adapt_input_conv`` scales by 3/N too; it
  repeats the RGB kernels cyclically where this takes their mean for the extra channels).

The model then preprocesses with ``(x - channel_mean) / channel_std`` per channel, in the
input's own channel order (no BGR flip). To keep a Caffe backbone's pretrained input range, give
``channel_std = 1`` and means in 0..255 units (the Caffe RGB means are 122.675, 116.669,
104.008); for MobileNetV2 (inputs in [-1, 1]) give mean 127.5 and std 127.5.
"""

from __future__ import annotations

import numpy as np

#: The Caffe ImageNet means in RGB order (``CAFFE_BGR_MEAN`` reversed).
CAFFE_RGB_MEAN = (122.675, 116.669, 104.008)


def adapt_input_kernel(kernel, channels: int, bgr: bool) -> np.ndarray:
    """Adapts a ``(kh, kw, 3, out)`` first-convolution kernel to ``channels`` inputs.

    Args:
        kernel: the 3-channel kernel (HWIO).
        channels: N >= 1, the model's input channels.
        bgr: the kernel reads BGR (the Caffe backbones); it is reordered to RGB first.

    Returns:
        The ``(kh, kw, N, out)`` float32 kernel (see the module docstring for the rule).

    Raises:
        ValueError: a kernel that is not 4-D with 3 input channels, or N < 1.
    """
    k = np.asarray(kernel, dtype=np.float32)
    if k.ndim != 4 or k.shape[2] != 3:
        raise ValueError(
            f"adapt_input_kernel takes a (kh, kw, 3, out) kernel. Received shape {k.shape}"
        )
    if isinstance(channels, bool) or not isinstance(channels, (int, np.integer)) or channels < 1:
        raise ValueError(f"channels must be an integer >= 1. Received: channels={channels!r}")
    if bgr:
        k = k[:, :, ::-1]
    if channels == 1:
        return np.ascontiguousarray(k.sum(axis=2, keepdims=True))
    mean = k.mean(axis=2, keepdims=True)
    if channels == 2:
        out = np.repeat(mean, 2, axis=2)
    else:
        out = np.concatenate([k, np.repeat(mean, channels - 3, axis=2)], axis=2)
    return np.ascontiguousarray(out * (3.0 / channels), dtype=np.float32)


def first_conv_adapter(model):
    """For a DeepLabV2 built with ``preprocessing="normalize"``: ``(layer name, fn)`` where
    ``fn(kernel)`` adapts a pretrained 3-channel kernel to the model's input; else None."""
    config = model.get_config() if hasattr(model, "get_config") else {}
    if config.get("preprocessing") != "normalize":
        return None
    from deeplab_tf.models.specs import FIRST_CONV

    backbone = config["backbone"]
    channels = int(config.get("input_channels", 3))
    bgr = backbone != "mobilenetv2"  # the Caffe backbones' weights read BGR
    return FIRST_CONV[backbone], lambda kernel: adapt_input_kernel(kernel, channels, bgr)
