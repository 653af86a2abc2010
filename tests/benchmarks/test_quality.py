"""The known-truth quality benchmark (benchmarks/quality.py) on a small world, through the real stages.

It must show learning where learning is possible, and must fail where the data or the objective is
broken: the checks are `learns()` of the benchmark (text->image R@1 at least 30x chance and the true
caption beating object- and attribute-replaced ones at least 80% of the time, chance 50%)."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import pytest

SCRIPT = Path(__file__).resolve().parents[2] / "benchmarks" / "quality.py"
CONFIGS = ("in_batch_hard", "broken_pairing", "shortcut_negatives")


@pytest.fixture(scope="module")
def quality():
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # a tiny model's matmuls gain nothing from threads, which stall on a busy machine
    spec = importlib.util.spec_from_file_location("benchmarks_quality", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    yield module
    torch.set_num_threads(threads)


@pytest.mark.slow
def test_the_default_data_teaches_retrieval_and_broken_data_or_a_shortcut_mix_fails(quality, tmp_path):
    quality.build_world(tmp_path, train_images=400, test_images=100)
    quality.prepare_data(tmp_path, configs=CONFIGS)
    scores = {name: quality.run_config(tmp_path, name, seed=0, steps=300) for name in CONFIGS}
    good = scores["in_batch_hard"]
    assert good["chance_r1"] == 0.01 and good["pairs"] == 200
    assert quality.learns(good) == [], good
    # What this world cannot teach a dual encoder: the relation and the binding of colours to objects.
    assert {"replace_object", "replace_attribute", "swap_attributes", "reverse_relation"} <= set(good["compositional"])
    assert quality.learns(scores["broken_pairing"]), scores["broken_pairing"]  # captions shuffled across images
    assert scores["broken_pairing"]["ir_r1"] < 5 * good["chance_r1"]
    shortcut = scores["shortcut_negatives"]  # half the hard negatives use words the corpus never has
    assert quality.learns(shortcut), shortcut
    assert shortcut["ir_r1"] < 0.5 * good["ir_r1"]
