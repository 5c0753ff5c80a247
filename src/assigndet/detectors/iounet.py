"""IoU-Net (Jiang et al., ECCV 2018) on Faster R-CNN R-50-FPN, as the reproduction
thisisi3/OpenMMLab-IoUNet builds it (SPEC §5.2–5.4; traps 18–20).

What it adds to :class:`~.faster_rcnn.FasterRCNN`, top to bottom:

1. **Precise RoI Pooling** (:class:`~assigndet.ops.MultiScalePrRoIPool`, 7×7 on P2–P5, FPN level
   rule) is the RoI feature extractor of the box head *and* of the IoU head.
2. **IoU head** (:class:`IoUHead`): 256·7·7 → 1024 → 1024 → C, one IoU per class; trained on
   **IoU-balanced RoIs** (:class:`IoUBalancedRoIGenerator`: a mesh of 246,016 box deltas built once,
   bucketed by the IoU it gives, drawn uniformly from the bins IoU ≥ 0.5 and applied to every GT),
   assigned by MaxIoU 0.5 (positives only); loss weight 5, SmoothL1 on (u − 0.5)/0.5 (paper) or
   BCE on u.
3. **Inference** (:meth:`IoUNetRoIHeads.detect`): argmax-class regression → IoU head on those boxes
   → multi-class IoU-guided NMS over (RoI, class) pairs (:func:`~assigndet.postprocess.iou_nms.iou_guided_nms`)
   → gradient-ascent refinement of the first 100 kept boxes through PrRoIPool + IoU head, one
   batched forward per step for all images (:func:`~assigndet.postprocess.iou_nms.refine_boxes`)
   → score = cls × IoU → top 100.

The ablation switches of the published table live in ``model.rcnn.iounet``: ``test_iou_head``
(False: the IoU head is unused at test, plain Faster R-CNN post-processing), ``iou_nms`` (False:
NMS ranked by the class score), ``rank_by``, ``refine`` (False: no refinement; then, as in the
reference, the final score is the cluster's class score, not multiplied by the IoU).
``detach_features`` (not in the reference, off in every preset) stops the IoU loss at the RoI
features, so that it trains the IoU head only. (On the small from-scratch shapes model the
reference's weight-5 IoU loss back-propagated into the FPN and backbone cost the box classifier
~17 AP; detached, or weighted 1 as ``iounet_R_18_shapes`` does, the model matches or beats Faster
R-CNN -- README.)

Shape letters: R RoIs (all images), C foreground classes, G ground truths, D deltas, K boxes.
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torchvision.models.detection.roi_heads import RoIHeads
from torchvision.ops import clip_boxes_to_image

from ..boxes import box_iou
from ..config import IoUNetConfig
from ..errors import ConfigError
from ..postprocess.iou_nms import iou_guided_nms, refine_boxes
from ..variants import IoULoss, IoURank, RoIPool
from .common import zero_loss
from .faster_rcnn import FasterRCNN, build_pooler
from .rcnn_parts import rcnn_box_forward, rcnn_box_losses, rcnn_detect, roi_heads_args

#: Reference box of the delta bins (SPEC §5.2).
REFERENCE_BOX = (0.0, 0.0, 1000.0, 1000.0)
#: Number of IoU bins [0, 0.1), ..., [0.9, 1.0).
NUM_IOU_BINS = 10
#: Seed of the one-off choice of at most ``pre_sample`` deltas per bin (keeps the global RNG untouched).
MESH_SEED = 0
#: Normalisation of the SmoothL1 target: u' = (u - mean) / std.
IOU_TARGET_MEAN, IOU_TARGET_STD = 0.5, 0.5


# ---------------------------------------------------------------------------------------------
# IoU-balanced RoI generation
# ---------------------------------------------------------------------------------------------


def _nonlinear(values: Tensor, order: int) -> Tensor:
    """Map values onto their own [min, max] range through v -> min + (max - min) t^order."""
    lo, hi = values.min(), values.max()
    return ((values - lo) / (hi - lo)).pow(order) * (hi - lo) + lo


def delta_mesh(*, xy_steps: int = 16, wh_steps: int = 16, area_range: tuple[float, float] = (1 / 3, 3.0),
               nonlinearity: int = 2) -> Tensor:
    """All (dx, dy, sw, sh) box deltas of the generator -> (D, 4), float32.

    dx, dy: ``xy_steps`` values linspace(0, 1) mapped v -> v^nonlinearity, mirrored to negative
    values (0 once); sw, sh: ``wh_steps`` values linspace(sqrt(a_lo), sqrt(a_hi)) mapped the same way
    on their range. With the defaults D = 31 * 31 * 16 * 16 = 246,016.
    """
    xy = _nonlinear(torch.linspace(0.0, 1.0, xy_steps), nonlinearity)  # (S,)
    xy = torch.unique(torch.cat((-xy, xy)))  # (2S - 1,) mirrored, sorted, 0 once
    wh = _nonlinear(torch.linspace(math.sqrt(area_range[0]), math.sqrt(area_range[1]), wh_steps), nonlinearity)
    mesh = torch.stack(torch.meshgrid(xy, xy, wh, wh, indexing="ij"), dim=-1)  # (X, X, W, W, 4)
    return mesh.reshape(-1, 4)  # (D, 4)


def apply_deltas(boxes: Tensor, deltas: Tensor) -> Tensor:
    """Every delta applied to every box: (G, 4) x (D, 4) -> (G, D, 4);
    (cx, cy, w, h) -> (cx + w dx, cy + h dy, w sw, h sh), no +1."""
    b = boxes[:, None, :]  # (G, 1, 4)
    w = b[..., 2] - b[..., 0]  # (G, 1)
    h = b[..., 3] - b[..., 1]
    cx = (b[..., 0] + b[..., 2]) / 2 + w * deltas[:, 0]  # (G, D)
    cy = (b[..., 1] + b[..., 3]) / 2 + h * deltas[:, 1]
    nw = w * deltas[:, 2]
    nh = h * deltas[:, 3]
    return torch.stack((cx - nw / 2, cy - nh / 2, cx + nw / 2, cy + nh / 2), dim=-1)  # (G, D, 4)


def delta_iou_bins(deltas: Tensor) -> Tensor:
    """IoU bin (0..9, -1 for IoU >= 1) of each delta (D, 4) applied to the 1000x1000 reference box -> (D,)."""
    ref = deltas.new_tensor([REFERENCE_BOX])  # (1, 4)
    iou = box_iou(ref, apply_deltas(ref, deltas)[0], offset=0.0)[0]  # (D,)
    bins = torch.full(iou.shape, -1, dtype=torch.int64)
    for i in range(NUM_IOU_BINS):  # the reference's [round(0.1 i, 1), round(0.1 (i + 1), 1)) edges
        lo, hi = round(0.1 * i, 1), round(0.1 * (i + 1), 1)
        bins[(iou >= lo) & (iou < hi)] = i
    return bins


class IoUBalancedRoIGenerator(nn.Module):
    """Training RoIs of the IoU head, uniform over IoU bins (SPEC §5.2).

    Built once: the delta mesh (:func:`delta_mesh`), bucketed by IoU (:func:`delta_iou_bins`), at
    most ``pre_sample`` random deltas kept per bin, stored as the buffer ``deltas`` grouped by bin.
    Per image (:meth:`forward`): ``int(sample_num / #bins) + 1`` deltas drawn without replacement
    from each bin ``start_bin``..9 (all of a smaller bin), each applied to every GT box,
    ``sample_num`` of the results kept at random, clipped to [0, W] x [0, H].
    """

    def __init__(self, *, pre_sample: int = 4000, xy_steps: int = 16, wh_steps: int = 16,
                 area_range: tuple[float, float] = (1 / 3, 3.0), nonlinearity: int = 2, start_bin: int = 5,
                 sample_num: int = 1000) -> None:
        super().__init__()
        if not 0 <= start_bin < NUM_IOU_BINS:
            raise ValueError(f"start_bin must be in 0..{NUM_IOU_BINS - 1}, got {start_bin}")
        mesh = delta_mesh(xy_steps=xy_steps, wh_steps=wh_steps, area_range=tuple(area_range),
                          nonlinearity=nonlinearity)  # (D, 4)
        bins = delta_iou_bins(mesh)  # (D,)
        g = torch.Generator().manual_seed(MESH_SEED)
        kept, counts = [], []
        for i in range(NUM_IOU_BINS):
            d = mesh[bins == i]
            if len(d) > pre_sample:
                d = d[torch.randperm(len(d), generator=g)[:pre_sample]]
            kept.append(d)
            counts.append(len(d))
        #: population of each bin before capping (the SPEC §11 reference values)
        self.bin_populations = torch.bincount(bins[bins >= 0], minlength=NUM_IOU_BINS).tolist()
        self.bin_counts = counts
        self.bin_starts = [sum(counts[:i]) for i in range(NUM_IOU_BINS)]
        self.start_bin = start_bin
        self.sample_num = sample_num
        self.register_buffer("deltas", torch.cat(kept), persistent=False)  # (sum counts, 4)

    def draw_deltas(self) -> Tensor:
        """The deltas of one image: per bin start_bin..9 up to int(sample_num / #bins) + 1 -> (M, 4)."""
        per_bin = int(self.sample_num / (NUM_IOU_BINS - self.start_bin)) + 1
        device = self.deltas.device
        idx = [self.bin_starts[b] + torch.randperm(self.bin_counts[b], device=device)[:per_bin]
               for b in range(self.start_bin, NUM_IOU_BINS)]
        return self.deltas[torch.cat(idx)]

    def forward(self, gt_boxes: Tensor, image_size: tuple[int, int]) -> Tensor:
        """RoIs (K, 4) around the GT boxes (G, 4) of one image of size (H, W)."""
        if len(gt_boxes) == 0:
            return gt_boxes.new_zeros((0, 4))
        rois = apply_deltas(gt_boxes.to(self.deltas.dtype), self.draw_deltas()).reshape(-1, 4)  # (G*M, 4)
        if len(rois) > self.sample_num:
            rois = rois[torch.randperm(len(rois), device=rois.device)[: self.sample_num]]
        h, w = image_size
        return torch.stack((rois[:, 0].clamp(0, w), rois[:, 1].clamp(0, h), rois[:, 2].clamp(0, w),
                            rois[:, 3].clamp(0, h)), dim=1)


# ---------------------------------------------------------------------------------------------
# IoU head
# ---------------------------------------------------------------------------------------------


class IoUHead(nn.Module):
    """Flattened RoI features -> FC dim -> ReLU -> FC dim -> ReLU -> FC C (raw outputs, one per class).

    ``loss`` "smoothl1" (paper): the raw output regresses (u - 0.5) / 0.5, IoU = raw * 0.5 + 0.5;
    "bce": the raw output is a logit of u, IoU = sigmoid(raw).
    """

    def __init__(self, in_features: int, dim: int, num_classes: int, *, loss: IoULoss | str = IoULoss.smoothl1) -> None:
        super().__init__()
        self.loss_type = IoULoss(loss)
        self.fc1 = nn.Linear(in_features, dim)
        self.fc2 = nn.Linear(dim, dim)
        self.fc_iou = nn.Linear(dim, num_classes)
        for fc in (self.fc1, self.fc2):
            nn.init.xavier_uniform_(fc.weight)
            nn.init.zeros_(fc.bias)
        nn.init.normal_(self.fc_iou.weight, std=0.01)
        nn.init.zeros_(self.fc_iou.bias)

    def forward(self, x: Tensor) -> Tensor:
        x = x.flatten(1)  # (R, C*7*7)
        return self.fc_iou(F.relu(self.fc2(F.relu(self.fc1(x)))))  # (R, C)

    def to_iou(self, raw: Tensor) -> Tensor:
        if self.loss_type is IoULoss.smoothl1:
            return raw * IOU_TARGET_STD + IOU_TARGET_MEAN
        return raw.sigmoid()

    def loss(self, raw: Tensor, target: Tensor) -> Tensor:
        """Mean over RoIs of SmoothL1 (beta 1) to the normalised target, or BCE to the IoU."""
        if self.loss_type is IoULoss.smoothl1:
            return F.smooth_l1_loss(raw, (target - IOU_TARGET_MEAN) / IOU_TARGET_STD, beta=1.0)
        return F.binary_cross_entropy_with_logits(raw, target)


def channels_last(features: list[Tensor]) -> list[Tensor]:
    """The maps in channels-last layout, in which PrRoIPool reads them as a table without a copy
    (each pooling call would otherwise lay out every level again)."""
    return [f.contiguous(memory_format=torch.channels_last) for f in features]


# ---------------------------------------------------------------------------------------------
# RoI heads and detector
# ---------------------------------------------------------------------------------------------


class IoUNetRoIHeads(RoIHeads):
    """Box head (Faster R-CNN's box branch, :mod:`.rcnn_parts`) + IoU head on the same PrRoIPool
    features (labels 1..C inside, as torchvision). ``cfg``: an ``IoUNetModelConfig``."""

    def __init__(self, cfg) -> None:
        if cfg.rcnn.roi_pool is not RoIPool.prroi:
            raise ConfigError("model.arch=iounet needs model.rcnn.roi_pool=prroi: the refinement differentiates "
                              "the IoU head through Precise RoI Pooling")
        super().__init__(**roi_heads_args(cfg.rcnn, pooler=build_pooler(cfg), in_channels=cfg.fpn_channels,
                                          num_classes=cfg.num_classes, score_thresh=cfg.score_thresh,
                                          nms_thresh=cfg.nms_thresh, detections_per_img=cfg.detections_per_img))
        self.num_classes = cfg.num_classes
        ic: IoUNetConfig = cfg.rcnn.iounet
        self.icfg = ic
        size = cfg.rcnn.roi_output_size
        self.iou_head = IoUHead(cfg.fpn_channels * size * size, ic.head_dim, cfg.num_classes, loss=ic.loss)
        self.roi_generator = IoUBalancedRoIGenerator(
            pre_sample=ic.pre_sample, xy_steps=ic.xy_steps, wh_steps=ic.wh_steps, area_range=tuple(ic.area_range),
            nonlinearity=ic.nonlinearity, start_bin=ic.start_bin, sample_num=ic.sample_num)

    def box_forward(self, features: list[Tensor], boxes: list[Tensor], image_sizes) -> tuple[Tensor, Tensor]:
        return rcnn_box_forward(self, features, boxes, image_sizes)

    # -- training -------------------------------------------------------------------------------
    def losses(self, features: list[Tensor], proposals: list[Tensor], sizes, targets: list[dict]) -> dict[str, Tensor]:
        """The box branch's losses and the IoU loss (``targets`` with torchvision's labels 1..C)."""
        features = channels_last(features)  # pooled twice: lay out once
        losses = rcnn_box_losses(self, features, proposals, sizes, targets)
        losses.update(self.iou_losses(features, sizes, targets))
        return losses

    @torch.no_grad()
    def iou_samples(self, sizes, targets: list[dict]) -> tuple[list[Tensor], Tensor, Tensor]:
        """Generated RoIs with IoU >= ``pos_iou_thresh`` to their best GT, per image; their IoU
        targets (P,) and 0-based class labels (P,)."""
        rois, ious, labels = [], [], []
        for t, size in zip(targets, sizes):
            gt = t["boxes"]
            r = self.roi_generator(gt, size)  # (K, 4)
            if len(r) == 0:
                rois.append(r)
                continue
            best, idx = box_iou(r, gt.to(r.dtype), offset=0.0).max(dim=1)  # (K,) MaxIoU assignment
            pos = best >= self.icfg.pos_iou_thresh
            rois.append(r[pos])
            ious.append(best[pos])
            labels.append(t["labels"][idx[pos]] - 1)
        ref = targets[0]["boxes"]
        iou_t = torch.cat(ious) if ious else ref.new_zeros(0)
        lab = torch.cat(labels) if labels else torch.zeros(0, dtype=torch.int64, device=ref.device)
        return rois, iou_t, lab

    def iou_losses(self, features: list[Tensor], sizes, targets: list[dict]) -> dict[str, Tensor]:
        """Weighted IoU loss of the IoU-balanced RoIs; back-propagates into the FPN and backbone
        as the reference unless ``detach_features``."""
        rois, iou_target, labels = self.iou_samples(sizes, targets)
        if self.icfg.detach_features:
            features = [f.detach() for f in features]
        if len(labels) == 0:
            return {"loss_iou": zero_loss(*self.iou_head.parameters())}
        raw = self.iou_head(self.box_roi_pool(features, rois, sizes))  # (P, C)
        raw = raw[torch.arange(len(labels), device=raw.device), labels]  # (P,) the GT's class
        return {"loss_iou": self.iou_head.loss(raw, iou_target.to(raw.dtype)) * self.icfg.loss_weight}

    # -- inference ------------------------------------------------------------------------------
    def predict_iou(self, features: list[Tensor], boxes: list[Tensor], sizes) -> Tensor:
        """Predicted IoU of per-image boxes for every class -> (K, C) (differentiable in the boxes)."""
        return self.iou_head.to_iou(self.iou_head(self.box_roi_pool(features, boxes, sizes)))

    @torch.no_grad()
    def detect(self, features: list[Tensor], proposals: list[Tensor], sizes) -> list[dict]:
        ic = self.icfg
        features = channels_last(features)  # pooled up to 2 + steps + 1 times: lay out once
        if not ic.test_iou_head:  # ablation: IoU head unused at test
            return rcnn_detect(self, features, proposals, sizes)
        class_logits, box_regression = rcnn_box_forward(self, features, proposals, sizes)
        counts = [len(p) for p in proposals]
        R, C = class_logits.shape[0], self.num_classes
        # 1-2. class probabilities without background; regress every RoI with its argmax class only
        probs = F.softmax(class_logits, dim=-1)[:, 1:]  # (R, C)
        label = probs.argmax(dim=1)  # (R,)
        deltas = box_regression.view(R, C + 1, 4)[torch.arange(R, device=label.device), label + 1]  # (R, 4)
        boxes = self.box_coder.decode_single(deltas, torch.cat(proposals)) if R else deltas.new_zeros(0, 4)
        boxes = [clip_boxes_to_image(b, s) for b, s in zip(boxes.split(counts), sizes)]  # per image (R_i, 4)
        # 3. IoU head on those boxes: only RoIs with a class >= score_thresh can reach the NMS, the
        #    others get IoU 0 without a forward (same detections, a fraction of the cost)
        ious = probs.new_zeros(R, C)  # (R, C)
        cand = probs.amax(dim=1) >= self.score_thresh  # (R,)
        if bool(cand.any()):
            cand_per_image = [b[c] for b, c in zip(boxes, cand.split(counts))]
            ious[cand] = self.predict_iou(features, cand_per_image, sizes).to(ious.dtype)
        # 4. multi-class IoU-guided NMS over the (RoI, class) pairs with p >= score_thresh
        rank_by = ic.rank_by if ic.iou_nms else IoURank.score
        dets = []
        for b, p, t in zip(boxes, probs.split(counts), ious.split(counts)):
            roi, cls = torch.nonzero(p >= self.score_thresh, as_tuple=True)  # (K,) pairs, RoI-major
            keep, scores = iou_guided_nms(b[roi], p[roi, cls], t[roi, cls], cls, iou_threshold=self.nms_thresh,
                                          score_threshold=self.score_thresh, rank_by=rank_by)
            dets.append(dict(boxes=b[roi[keep]], scores=scores, labels=cls[keep], ious=t[roi[keep], cls[keep]]))
        # 5-6. refinement of the first pre_refine kept boxes (all images at once); score x IoU
        if ic.refine:
            dets = [{k: v[: ic.pre_refine] for k, v in d.items()} for d in dets]
            self.refine(features, dets, sizes)
        out = []
        for d in dets:
            order = d["scores"].argsort(descending=True, stable=True)[: self.detections_per_img]
            out.append(dict(boxes=d["boxes"][order], scores=d["scores"][order], labels=d["labels"][order]))
        return out

    def refine(self, features: list[Tensor], dets: list[dict], sizes) -> None:
        """Refine ``dets`` in place by gradient ascent of their predicted IoU (SPEC §5.3 step 5):
        one batched IoU-head forward per step for all images; the FPN level of every box is re-chosen
        from its current size at each forward; with ``use_iou_score`` scores become cls x IoU."""
        ic = self.icfg
        counts = [len(d["boxes"]) for d in dets]
        if sum(counts) == 0:
            return
        labels = torch.cat([d["labels"] for d in dets])  # (K,)
        image_of = torch.repeat_interleave(torch.arange(len(counts), device=labels.device),
                                           torch.tensor(counts, device=labels.device))  # (K,)
        last: dict[str, Tensor] = {}

        def iou_fn(boxes: Tensor) -> Tensor:  # (K, 4) -> (K,)
            # refine_boxes passes every box at every step, the stopped ones unchanged (their updates
            # are masked): only the boxes that moved go through the head, the others keep the IoU
            # they had (the same value, no gradient -- none is used for them).
            moved = torch.ones_like(labels, dtype=torch.bool) if not last else (boxes != last["boxes"]).any(dim=1)
            if not bool(moved.any()):
                moved = torch.ones_like(moved)
            idx = torch.nonzero(moved).squeeze(1)  # (M,)
            per_image = [boxes[idx[image_of[idx] == i]] for i in range(len(counts))]
            iou = self.predict_iou(features, per_image, sizes)  # (M, C) in image-major order = idx order
            iou = iou[torch.arange(len(idx), device=idx.device), labels[idx]]  # (M,)
            out = last["ious"].to(iou.dtype).index_put((idx,), iou) if last else iou  # (K,)
            last["boxes"], last["ious"] = boxes.detach(), out.detach()
            return out

        boxes, ious = refine_boxes(torch.cat([d["boxes"] for d in dets]), iou_fn, steps=ic.steps, omega1=ic.omega1,
                                   omega2=ic.omega2, step_size=ic.step_size)
        for d, b, u in zip(dets, boxes.split(counts), ious.split(counts)):
            d["boxes"], d["ious"] = b, u
            if ic.use_iou_score:
                d["scores"] = d["scores"] * u


class IoUNet(FasterRCNN):
    """Faster R-CNN R-50-FPN with PrRoIPool, the IoU head, IoU-balanced RoIs, IoU-guided NMS and
    refinement: Faster R-CNN with :class:`IoUNetRoIHeads`. Losses: ``loss_rpn_cls``,
    ``loss_rpn_loc``, ``loss_cls``, ``loss_bbox``, ``loss_iou``. ``cfg``: an ``IoUNetModelConfig``."""

    roi_heads: IoUNetRoIHeads

    def build_roi_heads(self, cfg) -> IoUNetRoIHeads:
        return IoUNetRoIHeads(cfg)
