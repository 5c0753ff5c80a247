"""Pure assigners: tensors in, per-anchor GT index out (-1 background)."""
from .atss import atss_assign
from .dynamic_atss import dynamic_atss_assign
from .gmm import GMMFit, gmm_fit
from .max_iou import max_iou_match, max_iou_match_mmdet
from .paa import (PAAAssignment, PAAPartition, paa_anchor_scores, paa_assign, paa_assign_batch, paa_first_stage_match,
                  paa_partition, paa_partition_batch, paa_partition_details)

__all__ = ["atss_assign", "dynamic_atss_assign", "max_iou_match", "max_iou_match_mmdet", "GMMFit", "PAAAssignment",
           "PAAPartition", "gmm_fit", "paa_anchor_scores", "paa_assign", "paa_assign_batch", "paa_first_stage_match",
           "paa_partition", "paa_partition_batch", "paa_partition_details"]
