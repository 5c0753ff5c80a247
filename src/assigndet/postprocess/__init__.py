"""Post-processing: dense top-k/NMS, score voting, IoU-guided NMS and refinement."""
from .dense import class_wise_nms, dense_postprocess, kth_value_top, mmdet_postprocess, nms_top_k, nms_with_offset, select_candidates
from .iou_nms import iou_guided_nms, refine_boxes
from .voting import score_voting

__all__ = ["class_wise_nms", "dense_postprocess", "mmdet_postprocess", "kth_value_top", "nms_with_offset", "nms_top_k", "select_candidates",
           "score_voting", "iou_guided_nms", "refine_boxes"]
