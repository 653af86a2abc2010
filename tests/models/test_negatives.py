from __future__ import annotations

import random
from collections import Counter

import pytest

from unimo_pipe.models import lexicon
from unimo_pipe.models import negatives as negatives_module
from unimo_pipe.models.negatives import NegativeGenerator, Vocabulary, normalise_for_comparison
from unimo_pipe.models.scene_graph import SceneGraphParser, parse_doc


@pytest.fixture(scope="module")
def parser():
    return SceneGraphParser()


def negatives(parser, caption, vocabulary, n=100, seed=0, forbidden=frozenset(), **options):
    doc = parser.nlp(caption)
    return NegativeGenerator(vocabulary=vocabulary, negatives=n, seed=seed, **options).generate(
        doc, parse_doc(doc), key=caption, forbidden=forbidden)


def vocab(objects=(), relations=None, attributes=None):
    return Vocabulary(Counter({o: 5 for o in objects}), {k: Counter(v) for k, v in (attributes or {}).items()},
                      {k: Counter(v) for k, v in (relations or {}).items()})


def by_kind(found, kind):
    return {n["text"]: n for n in found if n["kind"] == kind}


def test_object_replacement_fixes_articles_and_keeps_number(parser):
    found = by_kind(negatives(parser, "A dog sits on a bench.", vocab(["elephant", "cat"])), "replace_object")
    assert "An elephant sits on a bench." in found and "A dog sits on an elephant." in found
    assert found["An elephant sits on a bench."]["from"] == "dog"
    plural = by_kind(negatives(parser, "Two dogs on a bench.", vocab(["cat", "box"])), "replace_object")
    assert "Two cats on a bench." in plural and "Two boxes on a bench." in plural


def test_attribute_replacement_stays_in_its_group_and_counts_agree(parser):
    found = negatives(parser, "A red car next to one dog.", vocab(["car"], attributes={"colour": {"blue": 3}}),
                      lexicon_words=True)
    attributes = by_kind(found, "replace_attribute")
    colours = {n["to"] for n in attributes.values() if n["from"] == "red"}
    assert colours and colours <= lexicon.COLOURS
    counts = [n for n in attributes.values() if n["from"] == "one"]
    assert counts and all(n["text"].endswith(("dogs.",)) for n in counts if n["to"] not in ("one",))


def test_a_new_count_brings_the_verb_along(parser):
    counts = vocab(attributes={"count": {"three": 2, "one": 2}})
    found = by_kind(negatives(parser, "One dog sits on a bench.", counts), "replace_attribute")
    assert "Three dogs sit on a bench." in found
    back = by_kind(negatives(parser, "Three dogs are sitting on a bench.", counts), "replace_attribute")
    assert "One dog is sitting on a bench." in back


def test_replacements_come_from_the_corpus_unless_the_lexicon_is_asked_for(parser):
    corpus = vocab(["cat"], attributes={"colour": {"blue": 3}})
    plain = {n["to"] for n in by_kind(negatives(parser, "A red car.", corpus), "replace_attribute").values()}
    assert plain == {"blue"}
    extra = {n["to"] for n in by_kind(negatives(parser, "A red car.", corpus, lexicon_words=True),
                                      "replace_attribute").values()}
    assert {"blue", "green", "yellow"} <= extra and extra <= lexicon.COLOURS


def test_one_word_prepositions_get_relation_replacements(parser):
    corpus = Vocabulary()
    for other in ("A cat under a table.", "A dog behind a car.", "A bird above a tree.", "A cup on a table.",
                  "A bag near a door.", "A mug atop a desk."):
        doc = parser.nlp(other)
        corpus.add(doc, parse_doc(doc))
    assert set(corpus.relations[negatives_module.ONE_WORD_PREPOSITION]) == {"under", "behind", "above", "on", "near",
                                                                            "atop"}
    found = by_kind(negatives(parser, "A cat on a bench.", corpus), "replace_relation")
    assert {n["to"] for n in found.values()} == {"under", "behind", "above", "near"}  # not "atop": a synonym
    assert "A cat under a bench." in found


def test_relation_replacement_uses_the_same_word_shape(parser):
    caption = "A man sitting on a bench."
    shape_vocab = Vocabulary()
    for other in ("A man standing behind a car.", "A cat lying under a table.", "A dog riding a horse."):
        doc = parser.nlp(other)
        shape_vocab.add(doc, parse_doc(doc))
    found = by_kind(negatives(parser, caption, shape_vocab), "replace_relation")
    assert {n["to"] for n in found.values()} == {"standing behind", "lying under"}
    assert "A man standing behind a bench." in found


MIX = "replace_object=1,replace_attribute=1,swap_attribute=2,replace_relation=2,reverse_relation=2,swap_object=1"


def test_a_mix_sets_the_kinds_proportions(parser):
    many = vocab([f"thing{i}" for i in range(300)], attributes={"colour": {f"hue{i}": 1 for i in range(50)}},
                 relations={"VBG": {f"verb{i}ing": 1 for i in range(50)}})
    caption = "A white dog chasing a black cat near a red bench."
    equal = Counter(n["kind"] for n in negatives(parser, caption, many, n=100))
    assert equal["replace_object"] > 30 and equal["swap_attributes"] <= 3  # the default: swaps are rare
    mixed = negatives(parser, caption, many, n=100, mix=negatives_module.parse_mix(MIX))
    kinds = Counter(n["kind"] for n in mixed)
    assert kinds["swap_attributes"] == 3  # all it can make: the list ends with the rest in proportion
    assert kinds["replace_relation"] == 3 and kinds["replace_object"] in (1, 2) and kinds["replace_attribute"] in (1, 2)
    assert len(mixed) == len({n["text"] for n in mixed})
    only = negatives(parser, caption, many, n=20, mix=negatives_module.parse_mix("replace_object=1"))
    assert len(only) == 20 and {n["kind"] for n in only} == {"replace_object"}


@pytest.mark.parametrize("spec, problem", [
    ("replace_object=1,swap_thing=2", "swap_thing=2"), ("replace_object", "is not KIND=WEIGHT"),
    ("replace_object=x", "is not a number"), ("replace_object=-1", ">= 0"), ("replace_object=0", "above 0"),
    ("swap_object=1,swap_objects=2", "given twice"), ("replace_object=nan", ">= 0")])
def test_a_bad_mix_is_refused_with_the_reason(spec, problem):
    with pytest.raises(ValueError, match=problem):
        negatives_module.parse_mix(spec)


def test_swaps_and_reversal(parser):
    found = negatives(parser, "A white dog chasing a black cat.", vocab())
    assert "A white cat chasing a black dog." in by_kind(found, "reverse_relation")
    assert "A black dog chasing a white cat." in by_kind(found, "swap_attributes")
    mixed = negatives(parser, "Two dogs near a cat.", vocab())
    assert "Two cats near a dog." in {n["text"] for n in mixed}


def test_negatives_are_distinct_and_never_the_caption_or_a_positive(parser):
    caption = "A man riding a brown horse on a beach."
    many = vocab(["dog", "car", "table", "tree", "boat", "street", "cow", "bus", "chair", "kite"])
    positive = "A man riding a brown dog on a beach."
    found = negatives(parser, caption, many, n=40, forbidden={positive}, lexicon_words=True)
    texts = [normalise_for_comparison(n["text"]) for n in found]
    assert len(texts) == len(set(texts)) == 40
    assert normalise_for_comparison(caption) not in texts and normalise_for_comparison(positive) not in texts
    assert {"text", "kind", "from", "to"} == set(found[0])


def test_synonyms_and_hypernyms_are_never_used(parser):
    tempting = vocab(["person", "guy", "adult", "people", "gentleman", "animal", "puppy", "creature", "cattle",
                      "table"])
    found = negatives(parser, "A man walking a dog.", tempting)
    replaced = {(n["from"], n["to"]) for n in found if n["kind"] == "replace_object"}
    assert {to for frm, to in replaced if frm == "man"} == {"animal", "puppy", "creature", "cattle", "table"}
    assert {to for frm, to in replaced if frm == "dog"} == {"person", "guy", "adult", "people", "gentleman",
                                                            "cattle", "table"}
    assert lexicon.related("man", "person") and lexicon.related("person", "man") and lexicon.related("dog", "puppy")
    assert lexicon.related("couch", "sofa") and lexicon.related("dogs", "dog")
    assert not lexicon.related("dog", "cat") and not lexicon.related("man", "woman")


def test_deterministic_under_a_seed(parser):
    many = vocab(["dog", "car", "table", "tree", "boat", "street", "cow", "bus"])
    caption = "A man riding a horse on a beach."
    assert negatives(parser, caption, many, n=10) == negatives(parser, caption, many, n=10)
    assert negatives(parser, caption, many, n=10) != negatives(parser, caption, many, n=10, seed=1)


def test_inflection_and_articles():
    assert [lexicon.pluralize(w) for w in ("dog", "box", "bus", "city", "man", "sheep", "knife", "toy", "fireman",
                                           "human")] == [
        "dogs", "boxes", "buses", "cities", "men", "sheep", "knives", "toys", "firemen", "humans"]
    assert [lexicon.singularize(w) for w in ("dogs", "boxes", "cities", "men", "glasses", "policemen", "women",
                                             "specimen")] == [
        "dog", "box", "city", "man", "glasses", "policeman", "woman", "specimen"]
    assert [lexicon.indefinite_article(w) for w in ("apple", "hour", "unicorn", "dog", "umbrella")] == [
        "an", "an", "a", "a", "an"]


def test_vocabulary_round_trip_and_word_lists(tmp_path, parser):
    vocabulary = Vocabulary()
    doc = parser.nlp("A red car parked next to a tall tree.")
    vocabulary.add(doc, parse_doc(doc))
    vocabulary.save(tmp_path / "v.json")
    loaded = Vocabulary.load(tmp_path / "v.json")
    assert loaded.objects == Counter({"car": 1, "tree": 1}) and loaded.attributes["colour"] == Counter({"red": 1})
    (tmp_path / "objects_vocab.txt").write_text("yolk\nwindow,windows\n")
    assert set(Vocabulary.load(tmp_path / "objects_vocab.txt").objects) == {"yolk", "window"}


def test_inflections_of_related_words_are_excluded_too(parser):
    found = negatives(parser, "A man walking a dog.", vocab(["guys", "gentlemen", "puppies", "cats", "tables"]))
    replaced = {(n["from"], n["to"]) for n in found if n["kind"] == "replace_object"}
    assert {to for frm, to in replaced if frm == "man"} == {"puppies", "cats", "tables"}
    assert {to for frm, to in replaced if frm == "dog"} == {"guys", "gentlemen", "cats", "tables"}


ODD_WORDS = ["apple", "hour", "unicorn", "Umbrella", "(red", "t-shirt", "ice cream", "x"]
ODD_CAPTIONS = ["  A dog's toy, on the MAN'S   bed!! ", "An umbrella - and an hour-glass; next to an apple.",
                "A cat can't see a dog", "Two dogs near a cat.", "Dogs run.", "A man in a red shirt."]


def test_fast_slot_rendering_equals_the_general_rendering(parser):
    """Replacements are rendered from cached pieces; they must equal a full re-rendering of the caption,
    and the keys used for distinctness must equal the normalised texts."""
    checked = 0
    for caption in ODD_CAPTIONS:
        doc = parser.nlp(caption)
        graph = parse_doc(doc, caption)
        text = negatives_module._Caption(doc, caption)
        for obj in graph.objects:
            pool = negatives_module._Pool.of(Counter({w: 1 for w in ODD_WORDS}), lambda words: lambda original: {})
            slot = negatives_module._Slot(text, obj.head, obj.head,
                                          plural_of=lexicon.pluralize if obj.plural else None)
            maker = negatives_module._Replacements(slot, pool, random.Random(0), kind="k", original="none")
            keys: set[str] = set()
            made = maker.take(len(ODD_WORDS), keys)
            assert len(made) == len(ODD_WORDS) and maker.capacity == 0
            assert keys == {normalise_for_comparison(n["text"]) for n in made}
            for negative in made:
                word = lexicon.pluralize(negative["to"]) if obj.plural else negative["to"]
                assert negative["text"] == text.render({(obj.head, obj.head): word})[0]
                checked += 1
    assert checked > 50


def test_weighted_draws_use_the_pool_up_without_repeats_and_favour_frequent_words():
    words = Counter({f"w{i}": 1000 if i == 0 else 1 for i in range(300)})
    pool = negatives_module._Pool.of(words, lambda words: lambda original: {})
    excluded = frozenset({5, 6})
    for seed in range(5):
        exclusion = negatives_module._Exclusion(excluded, 2.0, ())
        draws = negatives_module._WeightedDraws(pool, random.Random(seed), exclusion)
        taken = draws.take(7) + draws.take(1000)
        assert sorted(taken) == [i for i in range(300) if i not in excluded] and draws.take(5) == []
    heavy = pool.words.index("w0")
    first = [negatives_module._WeightedDraws(pool, random.Random(s)).take(1)[0] for s in range(300)]
    assert first.count(heavy) > 200  # w0 holds 1000 / 1299 of the mass


def test_shares_are_equal_within_capacities():
    shares = negatives_module._shares
    assert shares(100, [1000] * 4) == [25] * 4
    uneven = shares(100, [3, 1000, 0, 1000])
    assert uneven[0] == 3 and uneven[2] == 0 and sorted(uneven[1::2]) == [48, 49]
    assert shares(10, [2, 3]) == [2, 3]


def test_any_prefix_mixes_places_and_kinds(parser):
    many = vocab([f"thing{i}" for i in range(300)], attributes={"colour": {"blue": 3}})
    found = negatives(parser, "A white dog chasing a black cat on a red bench.", many, n=100)
    assert len(found) == 100
    assert len({(n["kind"], n["from"]) for n in found[:12]}) >= 5
