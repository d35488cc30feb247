"""deeplab_tf: DeepLab v2 (atrous convolution, ASPP, dense CRF) for Keras 3 / TensorFlow 2.

Chen, Papandreou, Kokkinos, Murphy, Yuille, "DeepLab: Semantic Image Segmentation with Deep
Convolutional Nets, Atrous Convolution, and Fully Connected CRFs", TPAMI 2017.

Example:
    >>> from deeplab_tf import DeepLabV2
    >>> model = DeepLabV2(backbone="resnet101", head="aspp_l", num_classes=21)
"""

__version__ = "0.1.0"

from deeplab_tf import layers
from deeplab_tf.models import (
    DeepLabV2,
    create_model,
    get_model_config,
    list_models,
    output_stride_of,
)

__all__ = [
    "DeepLabV2",
    "__version__",
    "create_model",
    "get_model_config",
    "layers",
    "list_models",
    "output_stride_of",
]
