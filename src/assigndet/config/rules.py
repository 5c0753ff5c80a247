"""The value rules of the config schema: ranges, signs, lengths and orderings of every key.

:mod:`assigndet.config`'s dataclasses call :func:`check_section` in ``__post_init__``, so a config is
checked when it is built (by a preset, by ``key=value`` overrides, or from a saved YAML file) and
no value reaches torch as a raw error. A broken rule is one :class:`~assigndet.errors.ConfigError`
naming the key, its value and the rule (``solver.base_lr=-0.01: must be > 0``). Choices are enums
and checked by OmegaConf itself; this table holds the rest, one line per key.
"""
from __future__ import annotations

import re
from typing import Any, Callable, NamedTuple

from ..errors import ConfigError


class Rule(NamedTuple):
    key: str
    ok: Callable[[Any], bool]
    says: str


def _positive(v) -> bool:
    return v > 0


def _non_negative(v) -> bool:
    return v >= 0


def _fraction(v) -> bool:
    return 0 <= v <= 1


def _all_positive(v) -> bool:
    return len(v) > 0 and all(x > 0 for x in v)


def _increasing(v) -> bool:
    return all(a < b for a, b in zip(v, v[1:]))


def _size_range(v) -> bool:
    return len(v) in (1, 2) and all(x > 0 for x in v) and v[0] <= v[-1]


_DEVICE = re.compile(r"^(auto|cpu|mps|cuda(:\d+)?)$")
GT0, GE0, FRAC = "must be > 0", "must be >= 0", "must be in [0, 1]"

#: class name -> (config path, rules); the model classes share the prefix ``model``
RULES: dict[str, tuple[str, list[Rule]]] = {
    "BackboneConfig": ("model.backbone", [
        Rule("depth", lambda v: v in (18, 34, 50, 101, 152), "must be one of 18, 34, 50, 101, 152"),
        Rule("groups", _positive, GT0), Rule("width_per_group", _positive, GT0), Rule("base_width", _positive, GT0),
        Rule("frozen_bn_eps", _non_negative, GE0), Rule("freeze_at", lambda v: 0 <= v <= 5, "must be in 0..5"),
        Rule("stage_with_dcn", lambda v: len(v) == 4, "needs 4 entries (c2..c5)")]),
    "InputConfig": ("model.input", [
        Rule("min_size_train", _size_range, "must be [S] or [lo, hi] with 0 < lo <= hi"),
        Rule("max_size_train", _positive, GT0), Rule("min_size_test", _positive, GT0),
        Rule("max_size_test", _positive, GT0), Rule("size_divisible", _positive, GT0),
        Rule("pixel_mean", lambda v: len(v) == 3, "needs 3 values"),
        Rule("pixel_std", lambda v: len(v) == 3 and all(x > 0 for x in v), "needs 3 values > 0")]),
    "TTAConfig": ("model.tta", [
        Rule("scales", lambda v: all(x > 0 for x in v), "must be sizes > 0 (empty: the test size alone)"), Rule("max_size", _positive, GT0),
        Rule("scale_ranges", lambda v: all(len(r) == 2 and 0 <= r[0] < r[1] for r in v), "must be [lo, hi] pairs"),
        Rule("vote_thresh", _fraction, FRAC), Rule("detections_per_img", _positive, GT0)]),
    "IoUNetConfig": ("model.rcnn.iounet", [
        Rule("head_dim", _positive, GT0), Rule("loss_weight", _non_negative, GE0),
        Rule("pre_sample", _positive, GT0), Rule("xy_steps", _positive, GT0), Rule("wh_steps", _positive, GT0),
        Rule("area_range", lambda v: len(v) == 2 and 0 < v[0] < v[1], "must be [lo, hi] with 0 < lo < hi"),
        Rule("start_bin", lambda v: 0 <= v <= 9, "must be in 0..9"), Rule("sample_num", _positive, GT0),
        Rule("pos_iou_thresh", _fraction, FRAC), Rule("pre_refine", _positive, GT0),
        Rule("steps", _non_negative, GE0), Rule("step_size", _non_negative, GE0)]),
    "RCNNConfig": ("model.rcnn", [
        Rule("rpn_anchor_scale", _positive, GT0), Rule("rpn_aspect_ratios", _all_positive, "must be ratios > 0"),
        Rule("rpn_strides", lambda v: len(v) == 5 and _all_positive(v), "needs 5 strides > 0 (P2-P6)"),
        Rule("rpn_fg_iou_thresh", _fraction, FRAC), Rule("rpn_bg_iou_thresh", _fraction, FRAC),
        Rule("rpn_batch_size_per_image", _positive, GT0), Rule("rpn_positive_fraction", _fraction, FRAC),
        Rule("rpn_pre_nms_top_n_train", _positive, GT0), Rule("rpn_post_nms_top_n_train", _positive, GT0),
        Rule("rpn_pre_nms_top_n_test", _positive, GT0), Rule("rpn_post_nms_top_n_test", _positive, GT0),
        Rule("rpn_nms_thresh", _fraction, FRAC), Rule("rpn_paa_iou_threshold", _fraction, FRAC),
        Rule("rpn_paa_topk", _positive, GT0), Rule("roi_output_size", _positive, GT0),
        Rule("roi_sampling_ratio", _non_negative, GE0), Rule("box_head_dim", _positive, GT0),
        Rule("box_batch_size_per_image", _positive, GT0), Rule("box_positive_fraction", _fraction, FRAC),
        Rule("box_fg_iou_thresh", _fraction, FRAC), Rule("box_bg_iou_thresh", _fraction, FRAC),
        Rule("box_reg_weights", lambda v: len(v) == 4 and _all_positive(v), "needs 4 weights > 0")]),
    "ModelConfig": ("model", [
        Rule("num_classes", _positive, GT0), Rule("fpn_channels", _positive, GT0),
        Rule("offset", lambda v: v in (0.0, 1.0), "must be 0 (modern) or 1 (the original +1 convention)"),
        Rule("score_thresh", _fraction, FRAC), Rule("nms_thresh", _fraction, FRAC),
        Rule("detections_per_img", _positive, GT0)]),
    "DenseFields": ("model", [
        Rule("head_convs", _non_negative, GE0), Rule("prior_prob", lambda v: 0 < v < 1, "must be in (0, 1)"),
        Rule("anchor_sizes", lambda v: len(v) == 5 and _all_positive(v), "needs 5 sizes > 0 (P3-P7)"),
        Rule("anchor_strides", lambda v: len(v) == 5 and _all_positive(v), "needs 5 strides > 0 (P3-P7)"),
        Rule("anchor_aspect_ratios", _all_positive, "must be ratios > 0"),
        Rule("anchor_scales_per_octave", _positive, GT0), Rule("topk", _positive, GT0),
        Rule("focal_alpha", _fraction, FRAC), Rule("focal_gamma", _non_negative, GE0),
        Rule("reg_loss_weight", _non_negative, GE0), Rule("quality_loss_weight", _non_negative, GE0),
        Rule("pre_nms_top_n", _positive, GT0), Rule("score_voting_sigma", _positive, GT0)]),
    "PAAFields": ("model", [Rule("paa_iou_threshold", _fraction, FRAC)]),
    "DataConfig": ("data", [
        Rule("num_workers", _non_negative, GE0), Rule("hflip_prob", _fraction, FRAC),
        Rule("root", lambda v: bool(v), "must not be empty")]),
    "SolverConfig": ("solver", [
        Rule("ims_per_batch", _positive, GT0), Rule("base_lr", _positive, GT0),
        Rule("reference_batch", _positive, GT0), Rule("momentum", lambda v: 0 <= v < 1, "must be in [0, 1)"),
        Rule("weight_decay", _non_negative, GE0), Rule("weight_decay_bias", _non_negative, GE0),
        Rule("bias_lr_factor", _positive, GT0), Rule("max_iter", _non_negative, GE0),
        Rule("steps", lambda v: all(s >= 0 for s in v) and _increasing(v), "must be increasing iterations >= 0"),
        Rule("gamma", _positive, GT0), Rule("warmup_iters", _non_negative, GE0),
        Rule("warmup_factor", lambda v: 0 < v <= 1, "must be in (0, 1]"), Rule("clip_grad_norm", _non_negative, GE0),
        Rule("checkpoint_period", _positive, GT0), Rule("eval_period", _non_negative, GE0),
        Rule("log_period", _positive, GT0), Rule("keep_last", _positive, GT0)]),
    "TestConfig": ("test", [
        Rule("ims_per_batch", _positive, GT0), Rule("max_images", _non_negative, GE0),
        Rule("num_workers", _non_negative, GE0)]),
    "Config": ("", [
        Rule("seed", _non_negative, GE0),
        Rule("device", lambda v: bool(_DEVICE.match(v)), "must be auto, cpu, mps, cuda or cuda:N")]),
}


def check_section(obj: Any) -> None:
    """Apply the rules of every class of ``obj``'s MRO; raise a ConfigError for the first broken one."""
    for cls in type(obj).__mro__:
        prefix, rules = RULES.get(cls.__name__, ("", []))
        for rule in rules:
            value = getattr(obj, rule.key)
            try:
                ok = rule.ok(value)
            except TypeError:
                ok = False
            if not ok:
                key = f"{prefix}.{rule.key}" if prefix else rule.key
                raise ConfigError(f"{key}={value}: {rule.says}")


__all__ = ["Rule", "RULES", "check_section"]
