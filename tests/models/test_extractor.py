from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from unimo_pipe.models.detector import build_detector
from unimo_pipe.models.extractor import RegionExtractor


def extractor(precision: str = "fp32", **sizes) -> RegionExtractor:
    sizes = {"min_size": 64, "max_size": 200, **sizes}
    return RegionExtractor(model=build_detector("tiny"), device="cpu", precision=precision, batch_size=1, workers=0,
                           max_pixels=10**9, **sizes)


def write_picture(path, width: int, height: int, seed: int = 0):
    rng = np.random.default_rng(seed)
    Image.fromarray(rng.integers(0, 255, (height, width, 3), dtype=np.uint8)).save(path)
    return path


def test_boxes_and_norm_bb_stay_inside_an_image_whose_resize_rounds_per_axis(tmp_path):
    # 68 x 45 -> 97 x 64: the width rounds up (96.7), so one scale for both axes would overshoot the right edge
    path = write_picture(tmp_path / "odd.png", 68, 45)
    [(key, (arrays, meta))] = list(extractor().run([("odd.png", path)]))
    assert key == "odd.png" and meta == {"width": 68, "height": 45}
    boxes, norm_bb = arrays["boxes"], arrays["norm_bb"].astype(np.float32)
    assert (boxes >= 0).all() and (boxes[:, 0::2] <= 68).all() and (boxes[:, 1::2] <= 45).all()
    assert (boxes[:, 2] == 68).any()  # a box at the right border lands on it, not past it
    assert (norm_bb >= 0).all() and (norm_bb <= 1).all()


@pytest.mark.skipif(not torch.amp.is_autocast_available("cpu"), reason="this torch has no CPU autocast")
def test_bf16_autocast_on_cpu_gives_float32_outputs_and_unrounded_boxes():
    """The GPU precision path on CPU, so dtype mistakes show without a GPU."""
    image = (torch.randint(0, 255, (3, 64, 80), dtype=torch.uint8, generator=torch.Generator().manual_seed(0)),
             (80, 64))  # already at the resized size: boxes stay in the proposals' pixels
    (found,) = extractor("bf16").detect([image])
    (reference,) = extractor("fp32").detect([image])
    assert 10 <= len(found.conf) <= 100
    for name in ("boxes", "features", "conf", "class_probs", "attr_conf"):
        assert getattr(found, name).dtype == torch.float32, name
    assert not torch.equal(found.boxes, found.boxes.bfloat16().float())  # coordinates not rounded to bf16
    assert torch.isfinite(found.features).all()
    cosine = torch.nn.functional.cosine_similarity(found.features.mean(0), reference.features.mean(0), dim=0)
    assert float(cosine) > 0.9
