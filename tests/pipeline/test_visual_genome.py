"""The shipped Visual Genome vocabularies: the detector's class ids by name, in the feature store too."""

from __future__ import annotations

from importlib.resources import files

import numpy as np

from unimo_pipe.models.detector import NUM_ATTRIBUTES, NUM_CLASSES
from unimo_pipe.pipeline.feature_store import RegionFeatureReader, RegionFeatureWriter
from unimo_pipe.pipeline.visual_genome import names_of, vocabulary


def test_vocabularies_match_the_detector_and_ship_their_credit():
    assert len(vocabulary("objects")) == NUM_CLASSES == 1600
    assert len(vocabulary("attributes")) == NUM_ATTRIBUTES == 400
    assert len(vocabulary("relations")) == 20
    raw = (files("unimo_pipe.pipeline") / "data" / "visual_genome" / "objects_vocab.txt").read_text().splitlines()
    synonyms = next(i for i, line in enumerate(raw) if "," in line)
    assert vocabulary("objects")[synonyms] == raw[synonyms].split(",")[0]  # the first synonym is the name
    credits = (files("unimo_pipe.pipeline") / "data" / "visual_genome" / "CREDITS.md").read_text()
    licence = (files("unimo_pipe.pipeline") / "data" / "visual_genome" / "LICENSE.bottom-up-attention").read_text()
    assert "peteanderson80/bottom-up-attention" in credits and "MIT License" in licence


def test_names_of_ids_and_an_id_outside_the_vocabulary():
    assert names_of(np.array([0, 1599, 1600]), "objects") == [vocabulary("objects")[0],
                                                              vocabulary("objects")[1599], "#1600"]


def test_the_feature_store_gives_names_beside_ids_when_asked(tmp_path):
    ids, attributes = np.array([3, 1200, 7], np.int32), np.array([0, 399, 12], np.int32)
    with RegionFeatureWriter(tmp_path) as writer:
        writer.add("a.jpg", {"features": np.zeros((3, 4)), "norm_bb": np.full((3, 6), 0.5), "object_ids": ids,
                             "attr_ids": attributes})
        writer.add("plain.jpg", {"features": np.zeros((2, 4)), "norm_bb": np.full((2, 6), 0.5)})
    reader = RegionFeatureReader(tmp_path)
    assert "object_names" not in reader.get_dump("a.jpg")
    dump = reader.get_dump("a.jpg", names=True)
    assert dump["object_names"].tolist() == [vocabulary("objects")[i] for i in ids]
    assert dump["attr_names"].tolist() == [vocabulary("attributes")[i] for i in attributes]
    assert set(reader.get_dump("plain.jpg", names=True)) == {"features", "norm_bb"}
