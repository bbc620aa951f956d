"""The segmentation architectures; each maps x (B, C_in, H, W) -> logits (B, num_classes, H, W)."""
from seg.models.resunet import ResUNet
from seg.models.transunet import TransUNet
from seg.models.unet import UNet

__all__ = ["ResUNet", "TransUNet", "UNet"]
