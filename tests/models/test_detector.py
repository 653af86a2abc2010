from __future__ import annotations

import math

import pytest
import torch
from torchvision.ops import box_iou, nms

from unimo_pipe.models.detector import (
    BottomUpAttention,
    TestSettings,
    build_detector,
    butd_r101,
    choose_boxes,
    max_conf_after_class_nms,
)
from unimo_pipe.pipeline.images import shortest_edge_size


def expected_butd_shapes() -> dict[str, tuple[int, ...]]:
    """The community checkpoint's names and shapes (536 float32 tensors, 262,180,856 bytes: the 262 MB
    download of faster_rcnn_from_caffe_attr.pkl), rebuilt here independently of the model code."""
    table: dict[str, tuple[int, ...]] = {}

    def conv(prefix, cin, cout, k):
        table[f"{prefix}.weight"] = (cout, cin, k, k)
        for s in ("weight", "bias", "running_mean", "running_var"):
            table[f"{prefix}.norm.{s}"] = (cout,)

    def stage(prefix, n, cin, bottleneck, cout):
        for i in range(n):
            block_in = cin if i == 0 else cout
            if i == 0:
                conv(f"{prefix}.{i}.shortcut", block_in, cout, 1)
            conv(f"{prefix}.{i}.conv1", block_in, bottleneck, 1)
            conv(f"{prefix}.{i}.conv2", bottleneck, bottleneck, 3)
            conv(f"{prefix}.{i}.conv3", bottleneck, cout, 1)

    conv("backbone.stem.conv1", 3, 64, 7)
    stage("backbone.res2", 3, 64, 64, 256)
    stage("backbone.res3", 4, 256, 128, 512)
    stage("backbone.res4", 23, 512, 256, 1024)
    rpn = "proposal_generator.rpn_head"
    table.update({f"{rpn}.conv.weight": (512, 1024, 3, 3), f"{rpn}.conv.bias": (512,),
                  f"{rpn}.objectness_logits.weight": (12, 512, 1, 1), f"{rpn}.objectness_logits.bias": (12,),
                  f"{rpn}.anchor_deltas.weight": (48, 512, 1, 1), f"{rpn}.anchor_deltas.bias": (48,),
                  "proposal_generator.anchor_generator.cell_anchors.0": (12, 4)})
    stage("roi_heads.res5", 3, 1024, 512, 2048)
    bp = "roi_heads.box_predictor"
    table.update({f"{bp}.cls_score.weight": (1601, 2048), f"{bp}.cls_score.bias": (1601,),
                  f"{bp}.bbox_pred.weight": (6400, 2048), f"{bp}.bbox_pred.bias": (6400,),
                  f"{bp}.cls_embedding.weight": (1601, 256), f"{bp}.fc_attr.weight": (512, 2304),
                  f"{bp}.fc_attr.bias": (512,), f"{bp}.attr_score.weight": (401, 512), f"{bp}.attr_score.bias": (401,)})
    return table


def test_full_model_has_exactly_the_checkpoint_parameters():
    with torch.device("meta"):
        model = BottomUpAttention(butd_r101())
    ours = {k: tuple(v.shape) for k, v in model.state_dict().items()}
    expected = expected_butd_shapes()
    assert ours == expected
    assert len(ours) == 536 and sum(math.prod(s) for s in ours.values()) * 4 == 262_180_856


def test_architecture_details():
    with torch.device("meta"):
        model = BottomUpAttention(butd_r101())
    backbone, res5 = model.backbone, model.roi_heads.res5
    assert backbone.res3[0].conv1.stride == (2, 2) and backbone.res3[0].conv2.stride == (1, 1)  # stride in 1x1
    assert backbone.res3[0].shortcut.stride == (2, 2) and backbone.res2[0].shortcut.stride == (1, 1)
    assert res5[0].conv1.stride == (1, 1) and res5[0].shortcut.stride == (1, 1)
    assert all(block.conv2.dilation == (2, 2) and block.conv2.padding == (2, 2) for block in res5)
    pool = backbone.stem.pool
    assert pool.padding == 0 and pool.ceil_mode and pool.kernel_size == 3 and pool.stride == 2
    assert model.roi_heads.pooler.output_size == (14, 14) and model.roi_heads.pooler.spatial_scale == 1 / 16


def test_cell_anchors_are_size_major():
    anchors = getattr(build_detector("tiny").proposal_generator.anchor_generator.cell_anchors, "0")
    assert anchors.shape == (12, 4)
    w = math.sqrt(64 * 64 / 0.5)
    torch.testing.assert_close(anchors[0], torch.tensor([-w / 2, -0.25 * w, w / 2, 0.25 * w]))  # size 64, ratio 0.5
    torch.testing.assert_close(anchors[1], torch.tensor([-32.0, -32.0, 32.0, 32.0]))  # size 64, ratio 1
    areas = (anchors[:, 2] - anchors[:, 0]) * (anchors[:, 3] - anchors[:, 1])
    torch.testing.assert_close(areas[::3], torch.tensor([64.0, 128, 256, 512]) ** 2)


def caffe_max_conf(boxes, fg_probs, nms_iou):
    """generate_tsv.py's loop: NMS per class over all RoIs, keep the best surviving score per RoI."""
    conf = torch.zeros(len(boxes))
    for c in range(fg_probs.shape[1]):
        keep = nms(boxes, fg_probs[:, c], nms_iou)
        conf[keep] = torch.maximum(conf[keep], fg_probs[keep, c])
    return conf


def random_rois(n, classes, seed, peak):
    """RoIs at the real scale (up to 1333 px) with scores over `classes` foreground classes."""
    generator = torch.Generator().manual_seed(seed)
    xy = torch.rand(n, 2, generator=generator) * 1000
    wh = torch.rand(n, 2, generator=generator) * 330 + 5
    boxes = torch.cat([xy, xy + wh], dim=1)
    logits = torch.randn(n, classes + 1, generator=generator) * peak
    return boxes, logits.softmax(dim=1)[:, :-1]


@pytest.mark.parametrize("peak", [6.0, 0.5])  # 6: many boxes pass 0.2; 0.5: the min-boxes fallback decides
def test_class_nms_matches_the_caffe_loop(peak):
    settings = TestSettings()
    boxes, fg = random_rois(150, 1600, seed=3, peak=peak)
    ours = max_conf_after_class_nms(boxes, fg, settings)
    reference = caffe_max_conf(boxes, fg, settings.class_nms)
    kept_ours, kept_reference = choose_boxes(ours, settings), choose_boxes(reference, settings)
    assert kept_ours.tolist() == kept_reference.tolist()
    torch.testing.assert_close(ours[kept_ours], reference[kept_reference])
    if peak == 0.5:
        assert int((reference >= 0.2).sum()) < 10 and len(kept_ours) == 10


@pytest.mark.parametrize(("second_x1", "widest_x2"), [(815.38, 1333.0), (815.4, 1215.4)])
def test_class_nms_is_exact_where_a_class_offset_would_round(second_x1, widest_x2):
    """Two boxes of the last of 1600 classes whose IoU is within 1e-4 of the 0.3 threshold (just above,
    then just below). Offsetting boxes by class x (max coordinate + 1), about 2e6, rounds float32
    coordinates to 1/8 px, which flips both decisions."""
    boxes = torch.tensor([[600.0, 400.0, 1000.0, 700.0], [second_x1, 400.0, second_x1 + 400, 700.0],
                          [1000.0, 0.0, widest_x2, 100.0]])
    assert abs(float(box_iou(boxes[:1], boxes[1:2])) - 0.3) < 1e-4
    fg = torch.zeros(3, 1600)
    fg[0, 1599], fg[1, 1599], fg[2, 0] = 0.9, 0.8, 0.7
    settings = TestSettings(min_boxes=1)
    ours = max_conf_after_class_nms(boxes, fg, settings)
    assert ours.tolist() == caffe_max_conf(boxes, fg, settings.class_nms).tolist()


def test_choose_boxes_bounds_and_order():
    settings = TestSettings()
    many = torch.linspace(1.0, 0.21, 150)
    assert len(choose_boxes(many, settings)) == 100
    few = torch.tensor([0.5, 0.1, 0.9] + [0.01] * 20)
    kept = choose_boxes(few, settings)
    assert len(kept) == 10 and kept[:3].tolist() == [2, 0, 1]
    assert len(choose_boxes(torch.tensor([0.9, 0.1]), settings)) == 2  # fewer RoIs than min_boxes


def test_batched_results_equal_single_image_results():
    model = build_detector("tiny")
    generator = torch.Generator().manual_seed(0)
    sizes = [(96, 140), (130, 70), (60, 60)]
    images = [torch.rand(3, h, w, generator=generator) * 255 for h, w in sizes]
    batch = torch.zeros(3, 3, 130, 140)
    for i, image in enumerate(images):
        batch[i, :, : sizes[i][0], : sizes[i][1]] = image
    originals = [(96, 140), (65, 35), (60, 60)]
    batched = model.detect(batch, sizes, originals)
    for i, image in enumerate(images):
        alone = model.detect(image[None], [sizes[i]], [originals[i]])[0]
        torch.testing.assert_close(batched[i].features, alone.features, atol=1e-5, rtol=1e-4)
        torch.testing.assert_close(batched[i].boxes, alone.boxes, atol=1e-3, rtol=1e-4)
        torch.testing.assert_close(batched[i].conf, alone.conf, atol=1e-5, rtol=1e-4)


def test_detections_are_sane():
    model = build_detector("tiny")
    image = torch.rand(1, 3, 200, 300, generator=torch.Generator().manual_seed(1)) * 255
    (found,) = model.detect(image, [(200, 300)], [(400, 600)])
    assert 10 <= len(found.conf) <= 100
    assert (found.conf[:-1] >= found.conf[1:]).all()
    assert (found.boxes[:, 0] >= 0).all() and (found.boxes[:, 2] <= 600).all()  # original pixels
    assert found.class_probs.shape == (len(found.conf), 1601)
    torch.testing.assert_close(found.class_probs.sum(dim=1), torch.ones(len(found.conf)))
    assert found.features.shape == (len(found.conf), model.spec.feature_dim)
    assert (found.attr_ids < 400).all() and (found.object_ids < 1600).all()


def test_boxes_go_back_per_axis_and_are_clipped_to_the_image():
    """45 x 68 with the shorter side resized to 64 gives 64 x 97 (96.7 rounds up), so x scales back by
    68/97 and y by 45/64; one scale for both would put the resized border 0.2 px outside the image."""
    model = build_detector("tiny")
    height, width = 45, 68
    new_h, new_w = shortest_edge_size(height, width, 64, 200)
    assert (new_h, new_w) == (64, 97)
    proposals, captured = model._proposals, []
    model._proposals = lambda *args: captured.append(proposals(*args)) or captured[-1]
    image = torch.rand(1, 3, new_h, new_w, generator=torch.Generator().manual_seed(3)) * 255
    (found,) = model.detect(image, [(new_h, new_w)], [(height, width)])
    scale = torch.tensor([width / new_w, height / new_h] * 2)
    expected = torch.minimum((captured[0][:, 1:] * scale).clamp(min=0), torch.tensor([float(width), float(height)] * 2))
    distance_to_expected = (found.boxes[:, None] - expected[None]).abs().amax(dim=2).amin(dim=1)
    assert (distance_to_expected < 1e-4).all()
    assert (found.boxes >= 0).all() and (found.boxes[:, 0::2] <= width).all() and (found.boxes[:, 1::2] <= height).all()
    assert (found.boxes[:, 2] == width).any() and (found.boxes[:, 3] == height).any()  # the border case is exercised


def test_folded_norms_give_the_same_result_as_separate_ones():
    model = build_detector("tiny")
    image = torch.rand(1, 3, 120, 100, generator=torch.Generator().manual_seed(2)) * 255
    folded = model.detect(image, [(120, 100)], [(120, 100)])[0]
    model.set_fold_norms(False)
    separate = model.detect(image, [(120, 100)], [(120, 100)])[0]
    torch.testing.assert_close(folded.features, separate.features, atol=1e-4, rtol=1e-3)
    assert folded.conf.shape == separate.conf.shape


@pytest.mark.gpu
def test_gpu_bf16_batches_match_cpu_fp32():
    from unimo_pipe.models.extractor import RegionExtractor

    images = [(torch.randint(0, 255, (3, h, w), dtype=torch.uint8), (w, h)) for h, w in ((600, 800), (600, 450))]
    cpu = RegionExtractor(model=build_detector("butd-r101"), device="cpu", precision="fp32", batch_size=1,
                          workers=0, min_size=600, max_size=1000, max_pixels=10**9)
    gpu = RegionExtractor(model=build_detector("butd-r101"), device="cuda", precision="bf16", batch_size=2,
                          workers=0, min_size=600, max_size=1000, max_pixels=10**9)
    expected = [cpu.detect([image])[0] for image in images]
    found = gpu.detect(images)
    for a, b in zip(expected, found, strict=True):
        common = min(len(a.conf), len(b.conf))
        assert 10 <= len(b.conf) <= 100
        cosine = torch.nn.functional.cosine_similarity(a.features[:1], b.features[:1].float().cpu())
        assert common >= 10 and float(cosine) > 0.9
