from __future__ import annotations

from collections import Counter

import pytest

from unimo_pipe.models import wordnet as wordnet_module
from unimo_pipe.models.exclusions import CuratedRelations, WordNetRelations
from unimo_pipe.models.negatives import NegativeGenerator, Vocabulary
from unimo_pipe.models.scene_graph import SceneGraphParser, parse_doc
from unimo_pipe.models.wordnet import HYPERNYM, HYPONYM, SYNONYM


@pytest.fixture(scope="module")
def wordnet(wordnet_folder):
    return wordnet_module.load(wordnet_folder)


@pytest.fixture(scope="module")
def parser():
    return SceneGraphParser()


def test_a_dict_folder_without_lexnames_reads_through_nltk(wordnet):
    assert wordnet.reader.synset("dog.n.01").lexname() == "noun.animal"
    assert {"fire hydrant", "polar bear", "teddy bear", "home plate", "hot dog", "tennis racket",
            "double decker"} <= wordnet.compounds
    assert wordnet.irregular_plurals["mouse"] == "mice"


@pytest.mark.parametrize("original, candidate, pos, reason", [
    ("dog", "animal", "n", HYPERNYM), ("dog", "puppy", "n", HYPONYM), ("man", "person", "n", HYPERNYM),
    ("couch", "sofa", "n", SYNONYM), ("fire hydrant", "fireplug", "n", SYNONYM), ("big", "large", "a", SYNONYM),
    ("big", "huge", "a", SYNONYM), ("red", "crimson", "a", SYNONYM), ("sit", "perch", "v", HYPONYM),
    ("dog", "cat", "n", None), ("dog", "person", "n", None), ("red", "blue", "a", None), ("sit", "run", "v", None),
])
def test_relations(wordnet, original, candidate, pos, reason):
    assert wordnet.relation(original, candidate, pos) == reason


def test_the_pool_index_agrees_with_the_pairwise_relation(wordnet):
    words = ["dog", "puppy", "animal", "cat", "man", "guy", "person", "woman", "car", "vehicle", "truck", "seat",
             "chair", "bench", "furniture", "table", "ocean", "sea", "water", "tree", "plant", "organism", "thing"]
    index = wordnet.index(words, "n")
    for original in words:
        by_reason = index.related(original)
        for i, word in enumerate(words):
            expected = wordnet.relation(original, word, "n")
            found = next((reason for reason, indices in by_reason.items() if i in indices), None)
            assert found == expected, (original, word)


def test_finding_wordnet(tmp_path, monkeypatch, wordnet_folder):
    import nltk.data

    empty = tmp_path / "empty"
    empty.mkdir()
    assert wordnet_module.locate(str(empty)) is None and wordnet_module.locate("off") is None
    assert wordnet_module.locate(str(wordnet_folder)) == wordnet_folder
    downloaded = tmp_path / "nltk_data" / "corpora" / "wordnet"
    downloaded.mkdir(parents=True)
    for name in wordnet_module._DICT_FILES:
        (downloaded / name).write_text("")
    monkeypatch.setattr(nltk.data, "path", [str(tmp_path / "nltk_data")])
    assert wordnet_module.locate(None) == downloaded  # NLTK's data path comes before Debian's folder


def test_generator_with_wordnet_excludes_what_keeps_the_caption_true(parser, wordnet):
    tempting = Counter({w: 5 for w in ["person", "guy", "adult", "people", "gentleman", "male", "animal", "puppy",
                                       "canine", "hound", "creature", "table", "cat", "rain", "traffic"]})
    generator = NegativeGenerator(vocabulary=Vocabulary(tempting), negatives=100, wordnet=wordnet)
    doc = parser.nlp("A man walking a dog.")
    found = generator.generate(doc, parse_doc(doc), key="k")
    replaced = {(n["from"], n["to"]) for n in found if n["kind"] == "replace_object"}
    # WordNet: a man (homo) is an animal, a creature; the curated table did not say so
    assert {to for frm, to in replaced if frm == "man"} == {"puppy", "canine", "hound", "table", "cat", "rain",
                                                            "traffic"}
    assert {to for frm, to in replaced if frm == "dog"} == {"person", "guy", "adult", "people", "gentleman",
                                                            "male", "table", "cat", "rain", "traffic"}
    assert generator.excluded["hypernym"] > 0 and generator.excluded["hyponym"] > 0
    plural = parser.nlp("Two dogs near a cat.")
    in_plural = {n["to"]: n["text"] for n in generator.generate(plural, parse_doc(plural), key="k")
                 if n["kind"] == "replace_object" and n["from"] == "dog"}
    assert {"cat", "guy", "person"} <= set(in_plural) and not {"rain", "traffic", "table"} & set(in_plural)
    assert in_plural["guy"] == "Two guys near a cat." and in_plural["person"] == "Two people near a cat."
    assert generator.excluded["uncountable"] >= 3  # rain, traffic, table (and more) have no plural here
    generator.vocabulary.plurals["table"] = Counter({"tables": 1})  # the corpus shows one
    generator._plurals.clear()
    assert generator.plural_of("table") == "tables" and generator.plural_of("rain") is None
    assert generator.plural_of("mouse") == "mice"


def test_wordnet_relations_add_to_the_curated_table(wordnet):
    words = ["lawn", "grass", "field", "car"]
    curated = CuratedRelations().in_pool(words, "object")("lawn")
    combined = WordNetRelations(wordnet).in_pool(words, "object")("lawn")
    assert set().union(*curated.values()) <= set().union(*combined.values())
    assert 1 in set().union(*curated.values())  # lawn ~ grass: the curated table's, kept with WordNet
