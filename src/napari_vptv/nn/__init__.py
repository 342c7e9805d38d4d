"""Neural-network half of napari-vptv: the VPTV-softmax layer, U-net / VPTVU-net,
training on the WBC data set and the shipped pretrained weights.

Importing this package imports torch; the plugin's widget and CLI import it lazily.
"""

from .layer import SoftmaxUNet, VPTVSoftmax, VPTVUNet, build_model
from .unet import UNet

__all__ = ["UNet", "VPTVSoftmax", "VPTVUNet", "SoftmaxUNet", "build_model", "load_pretrained", "predict_wbc"]


def __getattr__(name):
    if name in ("load_pretrained", "predict_wbc"):
        from . import weights

        return getattr(weights, name)
    raise AttributeError(name)
