"""The bottom-up-attention Faster R-CNN (ResNet-101 C4, res5 box head, VG 1600 classes / 400 attributes).

Module names equal the detectron2 port's parameter names (backbone.res4.22.conv2.norm.running_var, ...),
so the community checkpoint loads by name (see models/detector_weights.py). Numerics are the port's
(its VG-Detection attr_caffemaxpool config): FrozenBN (eps 1e-5), stride in the 1x1 convs, caffe max-pool
(pad 0, ceil), 12 size-major anchors at stride 16, RoIPool 14x14, res5 with stride 1 and dilation 2,
mean-pooled 2048-d.

Batching: images are zero-padded to a common size, and every layer's output is re-zeroed outside each
image's valid area. Zero padding is then exactly what a single image sees at its border, so a batched
image gives the same proposals, boxes and features as the same image alone (the public ports differ
near borders because they skip this).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import nn
from torchvision.ops import RoIPool, batched_nms
from torchvision.ops.misc import FrozenBatchNorm2d

PIXEL_MEAN_BGR = (102.9801, 115.9465, 122.7717)
NUM_CLASSES = 1600  # Visual Genome objects; the checkpoint adds background as the LAST logit (index 1600)
NUM_ATTRIBUTES = 400  # plus "no attribute" as the last logit (index 400)


@dataclass(frozen=True)
class DetectorSpec:
    """Widths and depths; `butd_r101()` is the real detector, `tiny()` the same graph at tiny width."""

    stem_channels: int = 64
    res2_channels: int = 256
    bottleneck_channels: int = 64  # res2's; doubles each stage like the channels
    blocks: tuple[int, int, int, int] = (3, 4, 23, 3)
    rpn_channels: int = 512
    class_embedding: int = 256
    attribute_hidden: int = 512
    num_classes: int = NUM_CLASSES
    num_attributes: int = NUM_ATTRIBUTES
    anchor_sizes: tuple[float, ...] = (64, 128, 256, 512)
    anchor_ratios: tuple[float, ...] = (0.5, 1.0, 2.0)
    caffe_maxpool: bool = True

    @property
    def feature_dim(self) -> int:
        return self.res2_channels * 8

    @property
    def num_anchors(self) -> int:
        return len(self.anchor_sizes) * len(self.anchor_ratios)


def butd_r101() -> DetectorSpec:
    return DetectorSpec()


def tiny() -> DetectorSpec:
    return DetectorSpec(stem_channels=8, res2_channels=16, bottleneck_channels=4, blocks=(1, 1, 2, 1), rpn_channels=16,
                        class_embedding=8, attribute_hidden=16)


SPECS = {"butd-r101": butd_r101, "tiny": tiny}


@dataclass(frozen=True)
class TestSettings:
    """Test-time settings of the Caffe generate_tsv extraction (10..100 boxes)."""

    pre_nms_topk: int = 6000
    post_nms_topk: int = 300
    rpn_nms: float = 0.7
    class_nms: float = 0.3
    conf_threshold: float = 0.2
    min_boxes: int = 10
    max_boxes: int = 100


# -- masking helpers: keep every image's padded area at zero --


def _out_size(size: int, conv: nn.Conv2d | nn.MaxPool2d) -> int:
    kernel = conv.kernel_size[0] if isinstance(conv.kernel_size, tuple) else conv.kernel_size
    stride = conv.stride[0] if isinstance(conv.stride, tuple) else conv.stride
    padding = conv.padding[0] if isinstance(conv.padding, tuple) else conv.padding
    dilation = conv.dilation[0] if isinstance(conv.dilation, tuple) else conv.dilation
    span = size + 2 * padding - dilation * (kernel - 1) - 1
    steps = math.ceil(span / stride) if getattr(conv, "ceil_mode", False) else span // stride
    return steps + 1


def _mask(x: torch.Tensor, sizes: list[tuple[int, int]]) -> torch.Tensor:
    if all(h == x.shape[2] and w == x.shape[3] for h, w in sizes):
        return x
    keep = torch.zeros(x.shape[0], 1, x.shape[2], x.shape[3], dtype=x.dtype, device=x.device)
    for i, (h, w) in enumerate(sizes):
        keep[i, :, :h, :w] = 1
    return x * keep


class ConvNorm(nn.Conv2d):
    """Conv2d (no bias) followed by FrozenBN, named like detectron2's Conv2d with `.norm`."""

    fold_norm = True  # False runs FrozenBN as a separate pass, as the public ports do (benchmarks compare)

    def __init__(self, cin: int, cout: int, kernel: int, *, stride: int = 1, padding: int = 0, dilation: int = 1):
        super().__init__(cin, cout, kernel, stride=stride, padding=padding, dilation=dilation, bias=False)
        self.norm = FrozenBatchNorm2d(cout, eps=1e-5)

    def forward_masked(self, x, sizes, relu: bool):
        sizes = [(_out_size(h, self), _out_size(w, self)) for h, w in sizes]
        if not self.fold_norm:
            y = self.norm(super().forward(x))
            return _mask(torch.relu_(y) if relu else y, sizes), sizes
        # FrozenBN is affine, so it folds into the conv: one pass over the activations instead of two.
        scale = self.norm.weight * (self.norm.running_var + self.norm.eps).rsqrt()
        bias = self.norm.bias - self.norm.running_mean * scale
        y = self._conv_forward(x, self.weight * scale.view(-1, 1, 1, 1).to(self.weight.dtype), bias.to(x.dtype))
        return _mask(torch.relu_(y) if relu else y, sizes), sizes


class Bottleneck(nn.Module):
    def __init__(self, cin: int, bottleneck: int, cout: int, *, stride: int = 1, dilation: int = 1):
        super().__init__()
        self.shortcut = ConvNorm(cin, cout, 1, stride=stride) if cin != cout or stride != 1 else None
        self.conv1 = ConvNorm(cin, bottleneck, 1, stride=stride)  # STRIDE_IN_1X1
        self.conv2 = ConvNorm(bottleneck, bottleneck, 3, padding=dilation, dilation=dilation)
        self.conv3 = ConvNorm(bottleneck, cout, 1)

    def forward_masked(self, x, sizes):
        out, out_sizes = self.conv1.forward_masked(x, sizes, relu=True)
        out, out_sizes = self.conv2.forward_masked(out, out_sizes, relu=True)
        out, out_sizes = self.conv3.forward_masked(out, out_sizes, relu=False)
        identity = x if self.shortcut is None else self.shortcut.forward_masked(x, sizes, relu=False)[0]
        return torch.relu(out + identity), out_sizes

    def forward(self, x):
        return self.forward_masked(x, [(x.shape[2], x.shape[3])] * x.shape[0])[0]


def _stage(n: int, cin: int, bottleneck: int, cout: int, *, stride: int, dilation: int = 1) -> nn.Sequential:
    blocks = [Bottleneck(cin if i == 0 else cout, bottleneck, cout, stride=stride if i == 0 else 1, dilation=dilation)
              for i in range(n)]
    return nn.Sequential(*blocks)


class Stem(nn.Module):
    def __init__(self, spec: DetectorSpec):
        super().__init__()
        self.conv1 = ConvNorm(3, spec.stem_channels, 7, stride=2, padding=3)
        if spec.caffe_maxpool:
            self.pool = nn.MaxPool2d(3, stride=2, padding=0, ceil_mode=True)
        else:
            self.pool = nn.MaxPool2d(3, stride=2, padding=1)

    def forward_masked(self, x, sizes):
        x, sizes = self.conv1.forward_masked(x, sizes, relu=True)
        sizes = [(_out_size(h, self.pool), _out_size(w, self.pool)) for h, w in sizes]
        # Inputs are >= 0 after ReLU, so zero padding never wins a max: pooling stays exact per image.
        return _mask(self.pool(x), sizes), sizes


class Backbone(nn.Module):
    """Stem + res2..res4 (output stride 16)."""

    def __init__(self, spec: DetectorSpec):
        super().__init__()
        c, b = spec.res2_channels, spec.bottleneck_channels
        self.stem = Stem(spec)
        self.res2 = _stage(spec.blocks[0], spec.stem_channels, b, c, stride=1)
        self.res3 = _stage(spec.blocks[1], c, b * 2, c * 2, stride=2)
        self.res4 = _stage(spec.blocks[2], c * 2, b * 4, c * 4, stride=2)

    def forward(self, x, sizes):
        x, sizes = self.stem.forward_masked(x, sizes)
        for stage in (self.res2, self.res3, self.res4):
            for block in stage:
                x, sizes = block.forward_masked(x, sizes)
        return x, sizes


class RpnHead(nn.Module):
    def __init__(self, channels: int, hidden: int, anchors: int):
        super().__init__()
        self.conv = nn.Conv2d(channels, hidden, 3, padding=1)
        self.objectness_logits = nn.Conv2d(hidden, anchors, 1)
        self.anchor_deltas = nn.Conv2d(hidden, anchors * 4, 1)

    def forward(self, x):
        hidden = torch.relu(self.conv(x))
        return self.objectness_logits(hidden), self.anchor_deltas(hidden)


class AnchorGenerator(nn.Module):
    """Size-major cell anchors, centred at 0, placed every 16 pixels (offset 0)."""

    def __init__(self, spec: DetectorSpec, stride: int = 16):
        super().__init__()
        self.stride = stride
        self.cell_anchors = nn.Module()  # detectron2's BufferList: the buffer is named "cell_anchors.0"
        self.cell_anchors.register_buffer("0", cell_anchors(spec.anchor_sizes, spec.anchor_ratios))

    def grid_anchors(self, height: int, width: int) -> torch.Tensor:
        cells = getattr(self.cell_anchors, "0")
        ys = torch.arange(height, device=cells.device, dtype=torch.float32) * self.stride
        xs = torch.arange(width, device=cells.device, dtype=torch.float32) * self.stride
        yy, xx = torch.meshgrid(ys, xs, indexing="ij")
        shifts = torch.stack([xx, yy, xx, yy], dim=-1).reshape(-1, 1, 4)
        return (shifts + cells.view(1, -1, 4)).reshape(-1, 4)  # (H*W*A, 4) in (H, W, A) order


def cell_anchors(sizes, ratios) -> torch.Tensor:
    anchors = []
    for size in sizes:
        for ratio in ratios:
            w = math.sqrt(size * size / ratio)
            h = ratio * w
            anchors.append([-w / 2, -h / 2, w / 2, h / 2])
    return torch.tensor(anchors, dtype=torch.float32)


class ProposalGenerator(nn.Module):
    def __init__(self, spec: DetectorSpec):
        super().__init__()
        self.rpn_head = RpnHead(spec.res2_channels * 4, spec.rpn_channels, spec.num_anchors)
        self.anchor_generator = AnchorGenerator(spec)


class BoxPredictor(nn.Module):
    def __init__(self, spec: DetectorSpec):
        super().__init__()
        dim = spec.feature_dim
        self.cls_score = nn.Linear(dim, spec.num_classes + 1)
        self.bbox_pred = nn.Linear(dim, spec.num_classes * 4)
        self.cls_embedding = nn.Embedding(spec.num_classes + 1, spec.class_embedding)
        self.fc_attr = nn.Linear(dim + spec.class_embedding, spec.attribute_hidden)
        self.attr_score = nn.Linear(spec.attribute_hidden, spec.num_attributes + 1)

    def forward(self, pooled):
        class_logits = self.cls_score(pooled)
        embedded = self.cls_embedding(class_logits.argmax(dim=1))  # argmax over all 1601, background included
        attr_logits = self.attr_score(torch.relu(self.fc_attr(torch.cat([pooled, embedded], dim=1))))
        return class_logits, attr_logits


class RoiHeads(nn.Module):
    def __init__(self, spec: DetectorSpec):
        super().__init__()
        c, b = spec.res2_channels, spec.bottleneck_channels
        self.pooler = RoIPool((14, 14), spatial_scale=1 / 16)
        self.res5 = _stage(spec.blocks[3], c * 4, b * 8, c * 8, stride=1, dilation=2)
        self.box_predictor = BoxPredictor(spec)

    def pooled_features(self, features, rois):
        # RoIPool in float32, as torchvision's CUDA autocast does: its CPU kernel has no bf16. The RoIs stay
        # float32 (bf16 would move box edges by up to 2 px at 600 px), so only the features are cast.
        return self.res5(self.pooler(features.float(), rois)).mean(dim=(2, 3))


@dataclass
class Detections:
    """One image's kept regions, best first, in original-image pixels."""

    boxes: torch.Tensor  # (N, 4) xyxy
    features: torch.Tensor  # (N, D)
    # conf and object_ids can name different classes (about 6% of real boxes, as in the port and Caffe):
    # conf is the best score among the classes where the box survived per-class NMS, while object_ids is
    # the top foreground class overall, whether or not the box survived NMS in it.
    conf: torch.Tensor  # (N,)
    class_probs: torch.Tensor  # (N, C+1) softmax, background LAST as in the checkpoint
    object_ids: torch.Tensor  # (N,) argmax over foreground classes
    attr_ids: torch.Tensor  # (N,)
    attr_conf: torch.Tensor  # (N,)


class BottomUpAttention(nn.Module):
    """Faster R-CNN with the BUTD extraction semantics; `detect` takes a padded BGR batch."""

    def __init__(self, spec: DetectorSpec, settings: TestSettings | None = None):
        super().__init__()
        self.spec = spec
        self.settings = settings or TestSettings()
        self.backbone = Backbone(spec)
        self.proposal_generator = ProposalGenerator(spec)
        self.roi_heads = RoiHeads(spec)
        self.register_buffer("pixel_mean", torch.tensor(PIXEL_MEAN_BGR).view(1, 3, 1, 1), persistent=False)

    def set_fold_norms(self, fold: bool) -> None:
        for module in self.modules():
            if isinstance(module, ConvNorm):
                module.fold_norm = fold

    @torch.inference_mode()
    def detect(self, images: torch.Tensor, sizes: list[tuple[int, int]],
               original_sizes: list[tuple[int, int]]) -> list[Detections]:
        """images: (B, 3, H, W) float BGR 0..255, zero outside each resized (h, w) in `sizes`;
        original_sizes: each image's (height, width) before resizing, where the boxes are returned."""
        x = _mask(images - self.pixel_mean, sizes)
        features, feature_sizes = self.backbone(x, sizes)
        rois = self._proposals(features, feature_sizes, sizes)
        pooled = self.roi_heads.pooled_features(features, rois).float()
        class_logits, attr_logits = self.roi_heads.box_predictor(pooled)
        image_of_roi = rois[:, 0].long()
        results = []
        for i, (resized, original) in enumerate(zip(sizes, original_sizes, strict=True)):
            mine = image_of_roi == i
            boxes = to_original_pixels(rois[mine, 1:], resized, original)
            results.append(self._select(boxes, pooled[mine], class_logits[mine].float(), attr_logits[mine].float()))
        return results

    def _proposals(self, features, feature_sizes, image_sizes) -> torch.Tensor:
        """float32 RoIs (R, 5) = (image index, x1, y1, x2, y2) in resized-image pixels, per detectron2's RPN at test."""
        s = self.settings
        logits, deltas = self.proposal_generator.rpn_head(features)
        batch_boxes, batch_scores, batch_ids = [], [], []
        for i, ((fh, fw), (h, w)) in enumerate(zip(feature_sizes, image_sizes, strict=True)):
            anchors = self.proposal_generator.anchor_generator.grid_anchors(fh, fw)
            image_logits = logits[i, :, :fh, :fw].permute(1, 2, 0).reshape(-1).float()
            image_deltas = deltas[i, :, :fh, :fw].permute(1, 2, 0).reshape(-1, 4).float()
            top = image_logits.topk(min(s.pre_nms_topk, len(image_logits))).indices
            boxes = apply_deltas(image_deltas[top], anchors[top], (1.0, 1.0, 1.0, 1.0))
            boxes = clip_boxes(boxes, h, w)
            scores = image_logits[top]
            valid = (boxes[:, 2] > boxes[:, 0]) & (boxes[:, 3] > boxes[:, 1])
            batch_boxes.append(boxes[valid])
            batch_scores.append(scores[valid])
            batch_ids.append(torch.full((int(valid.sum()),), i, device=boxes.device))
        boxes, scores, ids = torch.cat(batch_boxes), torch.cat(batch_scores), torch.cat(batch_ids)
        keep = batched_nms(boxes, scores, ids, s.rpn_nms)  # sorted by score, per image
        rois = []
        for i in range(len(image_sizes)):
            mine = keep[ids[keep] == i][: s.post_nms_topk]
            rois.append(torch.cat([torch.full((len(mine), 1), float(i), device=boxes.device), boxes[mine]], dim=1))
        return torch.cat(rois)

    def _select(self, boxes, pooled, class_logits, attr_logits) -> Detections:
        probs = class_logits.softmax(dim=1)
        conf = max_conf_after_class_nms(boxes, probs[:, :-1], self.settings)
        keep = choose_boxes(conf, self.settings)
        attr_probs = attr_logits[:, :-1].softmax(dim=1)  # "no attribute" dropped before the softmax, as the port
        attr_conf, attr_ids = attr_probs[keep].max(dim=1)
        return Detections(boxes=boxes[keep], features=pooled[keep], conf=conf[keep], class_probs=probs[keep],
                          object_ids=probs[keep, :-1].argmax(dim=1), attr_ids=attr_ids, attr_conf=attr_conf)


def apply_deltas(deltas, boxes, weights, clamp: float = math.log(1000.0 / 16)) -> torch.Tensor:
    """detectron2's Box2BoxTransform.apply_deltas (no +1 convention, dw/dh clamped)."""
    wx, wy, ww, wh = weights
    widths, heights = boxes[:, 2] - boxes[:, 0], boxes[:, 3] - boxes[:, 1]
    cx, cy = boxes[:, 0] + 0.5 * widths, boxes[:, 1] + 0.5 * heights
    dx, dy = deltas[:, 0] / wx, deltas[:, 1] / wy
    dw, dh = (deltas[:, 2] / ww).clamp(max=clamp), (deltas[:, 3] / wh).clamp(max=clamp)
    pcx, pcy = dx * widths + cx, dy * heights + cy
    pw, ph = torch.exp(dw) * widths, torch.exp(dh) * heights
    return torch.stack([pcx - 0.5 * pw, pcy - 0.5 * ph, pcx + 0.5 * pw, pcy + 0.5 * ph], dim=1)


def clip_boxes(boxes, height: int, width: int) -> torch.Tensor:
    return torch.stack([boxes[:, 0].clamp(0, width), boxes[:, 1].clamp(0, height),
                        boxes[:, 2].clamp(0, width), boxes[:, 3].clamp(0, height)], dim=1)


def to_original_pixels(boxes: torch.Tensor, resized: tuple[int, int], original: tuple[int, int]) -> torch.Tensor:
    """Boxes in resized-image pixels mapped back to the original (height, width), as detectron2's
    detector_postprocess does: each axis by its own scale (the resize rounds each side separately), then
    clipped to the image."""
    (new_h, new_w), (height, width) = resized, original
    scale = boxes.new_tensor([width / new_w, height / new_h, width / new_w, height / new_h])
    return clip_boxes(boxes * scale, height, width)


def max_conf_after_class_nms(boxes: torch.Tensor, fg_probs: torch.Tensor, s: TestSettings) -> torch.Tensor:
    """Caffe generate_tsv: per class, NMS over the (unregressed) RoIs with that class's scores; a RoI's
    confidence is its best score among the classes where it survived.

    Exactly the same as running all 1600 NMS passes, but only over (RoI, class) pairs scoring at least a
    threshold: a pair is suppressed only by a higher-scoring one, so survival above the threshold does not
    depend on the pairs below it. The threshold starts at conf_threshold and is lowered until min_boxes
    RoIs are decided, so the fallback to the top min_boxes stays exact too.
    """
    conf = torch.zeros(len(boxes), device=boxes.device)
    threshold = s.conf_threshold
    while True:
        rows, classes = torch.nonzero(fg_probs >= threshold, as_tuple=True)
        scores = fg_probs[rows, classes]
        keep = per_class_nms(boxes[rows], scores, classes, s.class_nms)
        conf = torch.zeros(len(boxes), device=boxes.device).scatter_reduce_(
            0, rows[keep], scores[keep], reduce="amax", include_self=True)
        if int((conf >= threshold).sum()) >= min(s.min_boxes, len(boxes)) or threshold <= 0:
            return conf
        threshold = threshold / 4 if threshold > 1e-6 else 0.0


def per_class_nms(boxes: torch.Tensor, scores: torch.Tensor, classes: torch.Tensor,
                  iou_threshold: float) -> torch.Tensor:
    """Indices kept by NMS run separately within each class, best first.

    torchvision's batched_nms keeps classes apart by offsetting each box by class x (max coordinate + 1).
    With 1600 classes the offset reaches ~2e6, where float32 rounds coordinates to 1/8 px and flips IoUs
    that sit at the threshold (0.3000085 became 0.2999727). In float64 the offset boxes keep their float32
    coordinates to within 2^-30 px, so the IoUs are those of the boxes as given, at the cost of one NMS
    call (one call per class measured 3x slower on CPU, and would sync a GPU once per class).
    """
    return batched_nms(boxes.double(), scores.double(), classes, iou_threshold)


def choose_boxes(conf: torch.Tensor, s: TestSettings) -> torch.Tensor:
    """Indices of kept RoIs, best first: conf >= threshold, but at least min_boxes and at most max_boxes."""
    order = torch.argsort(conf, descending=True, stable=True)
    passing = int((conf >= s.conf_threshold).sum())
    count = min(max(passing, s.min_boxes), s.max_boxes, len(conf))
    return order[:count]


def build_detector(name: str, *, seed: int = 0, settings: TestSettings | None = None) -> BottomUpAttention:
    """A detector with seeded random weights (load real ones with detector_weights.load_weights)."""
    generator_state = torch.random.get_rng_state()
    torch.manual_seed(seed)
    try:
        model = BottomUpAttention(SPECS[name](), settings)
        _randomise_frozen_norms(model, seed)
        with torch.no_grad():  # peaked class scores, so random runs cross the 0.2 threshold like real ones
            model.roi_heads.box_predictor.cls_score.weight.mul_(100.0)
    finally:
        torch.random.set_rng_state(generator_state)
    return model.eval()


def _randomise_frozen_norms(model: nn.Module, seed: int) -> None:
    """FrozenBN starts as identity-with-zero-mean; give it plausible random statistics instead, so that
    random-weight features do not vanish or explode through 100 layers."""
    generator = torch.Generator().manual_seed(seed)
    for module in model.modules():
        if isinstance(module, FrozenBatchNorm2d):
            n = module.weight.shape[0]
            module.running_var.copy_(torch.rand(n, generator=generator) + 0.5)
            module.running_mean.copy_(torch.randn(n, generator=generator) * 0.1)
            module.weight.copy_(torch.rand(n, generator=generator) * 0.5 + 0.25)
            module.bias.copy_(torch.randn(n, generator=generator) * 0.1)
