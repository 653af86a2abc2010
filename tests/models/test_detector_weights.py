from __future__ import annotations

import os
import pickle
from collections import OrderedDict

import pytest
import torch

from unimo_pipe.models.detector import build_detector
from unimo_pipe.models.detector_weights import load_weights, save_weights
from unimo_pipe.pipeline.errors import UserError

ANCHORS = "proposal_generator.anchor_generator.cell_anchors.0"


def detectron2_pickle(path, state, **extra_top_level):
    """A checkpoint laid out like the community BUTD file: {"model": {name: float32 ndarray}, "__author__": ...}."""
    payload = {"model": OrderedDict((k, v.numpy()) for k, v in state.items()), "__author__": "test", **extra_top_level}
    with path.open("wb") as f:
        pickle.dump(payload, f, protocol=2)
    return path


def outputs(model):
    image = torch.rand(1, 3, 90, 120, generator=torch.Generator().manual_seed(0)) * 255
    return model.detect(image, [(90, 120)], [(90, 120)])[0]


def test_generated_butd_checkpoint_loads_with_the_real_names(tmp_path):
    source = build_detector("tiny", seed=7)
    path = detectron2_pickle(tmp_path / "faster_rcnn_from_caffe_attr.pkl", source.state_dict())
    target = build_detector("tiny", seed=1)
    load_weights(target, path)
    torch.testing.assert_close(outputs(target).features, outputs(source).features)
    assert "backbone.res4.1.conv2.norm.running_var" in source.state_dict()


def test_missing_and_unexpected_parameters_are_named(tmp_path):
    state = build_detector("tiny").state_dict()
    del state["roi_heads.box_predictor.attr_score.weight"]
    state["roi_heads.box_head.extra.weight"] = torch.zeros(2)
    path = detectron2_pickle(tmp_path / "bad.pkl", state)
    with pytest.raises(UserError) as info:
        load_weights(build_detector("tiny"), path)
    message = str(info.value)
    assert "missing 1: roi_heads.box_predictor.attr_score.weight" in message
    assert "unexpected 1: roi_heads.box_head.extra.weight" in message


def test_wrong_shapes_are_named(tmp_path):
    state = build_detector("tiny").state_dict()
    state["roi_heads.box_predictor.cls_score.bias"] = torch.zeros(7)
    with pytest.raises(UserError, match=r"wrong shape 1: roi_heads.box_predictor.cls_score.bias \(7,\)"):
        load_weights(build_detector("tiny"), detectron2_pickle(tmp_path / "w.pkl", state))


def test_running_stats_and_anchors_may_be_absent(tmp_path):
    state = build_detector("tiny", seed=3).state_dict()
    del state[ANCHORS]
    del state["backbone.stem.conv1.norm.running_mean"]
    del state["backbone.stem.conv1.norm.running_var"]
    model = build_detector("tiny", seed=9)
    load_weights(model, detectron2_pickle(tmp_path / "c.pkl", state))
    loaded = model.state_dict()
    assert (loaded["backbone.stem.conv1.norm.running_mean"] == 0).all()
    assert (loaded["backbone.stem.conv1.norm.running_var"] == 1).all()
    assert loaded[ANCHORS].shape == (12, 4)


class Exploit:
    def __reduce__(self):
        return (os.system, ("echo pwned",))


def test_pickles_with_code_are_refused(tmp_path):
    path = tmp_path / "evil.pkl"
    with path.open("wb") as f:
        pickle.dump({"model": {"x": Exploit()}}, f)
    with pytest.raises(UserError, match="refusing to load posix.system|refusing to load os.system"):
        load_weights(build_detector("tiny"), path)


def test_module_prefix_and_own_formats(tmp_path):
    source = build_detector("tiny", seed=5)
    torch.save({"module." + k: v for k, v in source.state_dict().items()}, tmp_path / "w.pth")
    save_weights(source, tmp_path / "w.safetensors")
    for name in ("w.pth", "w.safetensors"):
        model = build_detector("tiny")
        load_weights(model, tmp_path / name)
        torch.testing.assert_close(outputs(model).conf, outputs(source).conf)


def test_unreadable_weights_are_user_errors(tmp_path):
    with pytest.raises(UserError, match="not found"):
        load_weights(build_detector("tiny"), tmp_path / "none.pkl")
    (tmp_path / "junk.pkl").write_bytes(b"not a pickle")
    with pytest.raises(UserError, match="cannot read detector weights"):
        load_weights(build_detector("tiny"), tmp_path / "junk.pkl")
    (tmp_path / "w.onnx").write_bytes(b"x")
    with pytest.raises(UserError, match="unknown weights format"):
        load_weights(build_detector("tiny"), tmp_path / "w.onnx")
