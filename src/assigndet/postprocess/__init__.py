"""Post-processing: dense top-k/NMS, score voting, IoU-guided NMS and refinement."""
from .dense import dense_postprocess, kth_value_top, nms_with_offset, select_candidates

__all__ = ["dense_postprocess", "kth_value_top", "nms_with_offset", "select_candidates"]
