from .backbone import ResNetBody, load_backbone_weights
from .fpn import RetinaFPN
from .head import DenseHead, Scale, flatten_levels
from .transform import ImageTransform, pad_batch, resize_size

__all__ = ["ResNetBody", "load_backbone_weights", "RetinaFPN", "DenseHead", "Scale", "flatten_levels",
           "ImageTransform", "pad_batch", "resize_size"]
