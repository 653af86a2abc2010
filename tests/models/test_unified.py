from __future__ import annotations

import torch

from unimo_pipe.models.objectives import seq2seq_attention
from unimo_pipe.models.unified import UnifiedModel, tiny_encoder


def model(seed: int = 0) -> UnifiedModel:
    torch.manual_seed(seed)
    return UnifiedModel(tiny_encoder(100), region_dim=16).eval()


def inputs(batch: int = 2, length: int = 7, regions: int = 5):
    generator = torch.Generator().manual_seed(1)
    ids = torch.randint(3, 100, (batch, length), generator=generator)
    mask = torch.ones(batch, length, dtype=torch.bool)
    if batch > 1:
        mask[1, 5:] = False  # the second row is padded after 5 tokens
    features = torch.randn(batch, regions, 16, generator=generator).half()
    boxes = torch.rand(batch, regions, 7, generator=generator).half()
    region_mask = torch.ones(batch, regions, dtype=torch.bool)
    region_mask[0, 3:] = False
    return ids, mask, features, boxes, region_mask


def test_text_image_and_pair_modes():
    m = model()
    ids, mask, features, boxes, region_mask = inputs()
    with torch.no_grad():
        text = m(text_ids=ids, text_mask=mask)
        image = m(region_features=features, region_boxes=boxes, region_mask=region_mask)
        pair = m(text_ids=ids, text_mask=mask, region_features=features, region_boxes=boxes, region_mask=region_mask)
    assert text["hidden"].shape == (2, 7, 32) and text["image"] is None
    assert image["hidden"].shape == (2, 6, 32) and image["text"] is None and image["image_length"] == 6
    assert pair["hidden"].shape == (2, 13, 32)
    assert torch.equal(pair["text"], pair["hidden"][:, 6]) and torch.equal(pair["image"], pair["hidden"][:, 0])


def test_padding_does_not_leak_into_real_positions():
    m = model()
    ids, mask, features, boxes, region_mask = inputs()
    with torch.no_grad():
        before = m(region_features=features, region_boxes=boxes, region_mask=region_mask)["image"]
        features[0, 3:] = 99  # padded regions of image 0
        after = m(region_features=features, region_boxes=boxes, region_mask=region_mask)["image"]
    torch.testing.assert_close(before[0], after[0])


def test_seq2seq_mask_makes_targets_causal():
    m = model()
    ids, mask, *_ = inputs(batch=1, length=10)
    target = torch.zeros(10, dtype=torch.bool)
    target[6:] = True
    attention = seq2seq_attention(target)
    with torch.no_grad():
        first = m(text_ids=ids, text_mask=mask, attention=attention)["hidden"]
        changed = ids.clone()
        changed[0, 8] = (changed[0, 8] + 1) % 100
        second = m(text_ids=changed, text_mask=mask, attention=attention)["hidden"]
    torch.testing.assert_close(first[0, :8], second[0, :8])  # sources and earlier targets do not see token 8
    assert not torch.allclose(first[0, 8:], second[0, 8:])


def test_save_and_load_round_trip(tmp_path):
    m = model(3)
    ids, mask, features, boxes, region_mask = inputs()
    m.save_pretrained(tmp_path / "ckpt")
    loaded = UnifiedModel.from_pretrained(tmp_path / "ckpt").eval()
    with torch.no_grad():
        a = m(text_ids=ids, text_mask=mask, region_features=features, region_boxes=boxes, region_mask=region_mask)
        b = loaded(text_ids=ids, text_mask=mask, region_features=features, region_boxes=boxes,
                   region_mask=region_mask)
    torch.testing.assert_close(a["hidden"], b["hidden"])
    assert (tmp_path / "ckpt" / "config.json").is_file() and (tmp_path / "ckpt" / "model.safetensors").is_file()


def test_broadcast_padding_mask_equals_the_full_mask():
    """Padding alone uses a (B, 1, 1, L) mask; an explicit all-allowed (L, L) pattern takes the full-mask
    path. Both must give the same states."""
    m = model()
    ids, mask, features, boxes, region_mask = inputs()
    kwargs = dict(text_ids=ids, text_mask=mask, region_features=features, region_boxes=boxes, region_mask=region_mask)
    with torch.no_grad():
        broadcast = m(**kwargs)["hidden"]
        full = m(**kwargs, attention=torch.ones(13, 13, dtype=torch.bool))["hidden"]
    torch.testing.assert_close(broadcast, full)


def test_compile_keeps_parameter_names_and_outputs():
    m = model()
    ids, mask, *_ = inputs()
    names = list(m.state_dict())
    with torch.no_grad():
        eager = m(text_ids=ids, text_mask=mask)["hidden"]
        m.compile(backend="eager")  # the wiring; inductor's code generation is exercised by the GPU test
        compiled = m(text_ids=ids, text_mask=mask)["hidden"]
    assert list(m.state_dict()) == names
    torch.testing.assert_close(eager, compiled)


def test_set_dropout_reaches_every_dropout_and_the_saved_config(tmp_path):
    m = model().train()
    ids, mask, features, boxes, region_mask = inputs()
    m.set_dropout(0.0)
    assert all(d.p == 0.0 for d in m.modules() if isinstance(d, torch.nn.Dropout))
    first = m(text_ids=ids, text_mask=mask, region_features=features, region_boxes=boxes, region_mask=region_mask)
    again = m(text_ids=ids, text_mask=mask, region_features=features, region_boxes=boxes, region_mask=region_mask)
    torch.testing.assert_close(first["hidden"], again["hidden"])  # in train mode: no dropout left anywhere
    m.set_dropout(0.3)
    noisy = m(text_ids=ids, text_mask=mask, region_features=features, region_boxes=boxes, region_mask=region_mask)
    assert not torch.allclose(first["hidden"], noisy["hidden"])
    m.save_pretrained(tmp_path / "saved")
    loaded = UnifiedModel.from_pretrained(tmp_path / "saved")
    assert {d.p for d in loaded.modules() if isinstance(d, torch.nn.Dropout)} == {0.3}
