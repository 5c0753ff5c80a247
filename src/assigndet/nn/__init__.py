from .backbone import ResNetBody, load_backbone_weights
from .fpn import RetinaFPN
from .head import DenseHead, Scale
from .transform import ImageTransform, resize_size

__all__ = ["ResNetBody", "load_backbone_weights", "RetinaFPN", "DenseHead", "Scale", "ImageTransform", "resize_size"]
