"""augment --scene-graph with WordNet: no negative keeps the caption true, compounds stay whole, mass nouns
stay singular; without WordNet, one warning and the curated lexicon."""

from __future__ import annotations

import json
import logging
import random
from pathlib import Path

import pytest

from tests.conftest import write_jsonl
from unimo_pipe.models import lexicon
from unimo_pipe.pipeline.cli import main
from unimo_pipe.pipeline.outputs import iter_output_jsonl

DEMO = Path(__file__).resolve().parents[2] / "unimo_pipe" / "workflows" / "demo_data" / "captions.jsonl"
COMPOUNDS = ["fire hydrant", "polar bear", "teddy bear", "home plate", "stop sign", "cell phone", "hot dog",
             "tennis racket", "double decker"]
MASS_NOUNS = ["traffic", "rain", "water", "furniture", "grass"]
# Tempting vocabulary: synonyms, hypernyms and hyponyms of each other, next to unrelated words.
OBJECTS = ["dog", "puppy", "animal", "cat", "man", "person", "guy", "woman", "boy", "child", "kid", "car", "vehicle",
           "truck", "bench", "seat", "chair", "table", "horse", "bird", "tree", "plant", "sofa", "couch", "ocean",
           "sea", "street", "road"]
ATTRIBUTES = ["big", "large", "huge", "small", "little", "tiny", "red", "crimson", "blue", "white", "black", "wooden"]
RELATIONS = ["sitting on", "perched on", "standing next to", "riding", "driving", "holding", "grasping", "looking at",
             "watching", "walking past"]
PLURALS = {"dog": "dogs", "cat": "cats", "man": "men", "car": "cars", "bird": "birds", "horse": "horses"}


def generated_captions(count: int, seed: int = 0) -> list[str]:
    rng = random.Random(seed)
    captions = []
    for i in range(count):
        subject, target = rng.choice(OBJECTS + COMPOUNDS), rng.choice(OBJECTS + COMPOUNDS + MASS_NOUNS)
        relation, attribute = rng.choice(RELATIONS), rng.choice(ATTRIBUTES)
        if i % 3 == 0:
            plural = rng.choice(sorted(PLURALS))
            captions.append(f"Two {attribute} {PLURALS[plural]} {relation} the {target}.")
        elif i % 3 == 1:
            captions.append(f"A {attribute} {subject} {relation} a {target} in the {rng.choice(MASS_NOUNS)}.")
        else:
            captions.append(f"The {subject} is {rng.choice(['on', 'under', 'behind', 'near', 'above'])} the {target}.")
    return captions


def corpus(tmp_path: Path) -> Path:
    demo = [json.loads(line)["caption"] for line in DEMO.read_text().splitlines()]
    rows = [{"id": str(i), "caption": c} for i, c in enumerate(demo + generated_captions(240))]
    return write_jsonl(tmp_path / "captions.jsonl", rows)


def augment(tmp_path: Path, name: str, *extra: str) -> tuple[list[dict], dict]:
    out = tmp_path / name
    assert main(["augment", "--captions", str(corpus(tmp_path)), "--scene-graph", "--negatives", "40",
                 "--out", str(out), *extra]) == 0
    return list(iter_output_jsonl(out, "augment.jsonl")), json.loads((out / "summary.json").read_text())


class WordNetCheck:
    """The rule, checked with NLTK's reader directly: the replaced word's senses are those tagged in SemCor
    (else its first); no sense of a replacement may be one of them or above them, and the replacement's
    own usual senses may not be below them."""

    def __init__(self, folder: Path):
        from unimo_pipe.models.wordnet import load

        self.reader = load(folder).reader

    def senses(self, word: str, pos: str) -> set:
        key = "_".join(word.lower().split())
        synsets = self.reader.synsets(key, pos) + (self.reader.synsets(key, "s") if pos == "a" else [])
        names = {key, self.reader.morphy(key, pos) or key}
        tagged = [s for s in synsets if any(lemma.name().lower() in names and lemma.count() for lemma in s.lemmas())]
        return set(tagged or synsets[:1])

    def above(self, synsets: set, pos: str) -> set:
        if pos == "a":
            return {t for s in synsets for t in s.similar_tos() + s.also_sees()}
        step = (lambda s: s.hypernyms() + s.entailments()) if pos == "v" else \
            (lambda s: s.hypernyms() + s.instance_hypernyms())
        return {t for s in synsets for t in s.closure(step)}

    def keeps_true(self, a: str, b: str, pos: str) -> bool:
        key = "_".join(b.lower().split())
        any_b = set(self.reader.synsets(key, pos) + (self.reader.synsets(key, "s") if pos == "a" else []))
        sa, sb = self.senses(a, pos), self.senses(b, pos)
        return bool(sa & any_b or any_b & self.above(sa, pos) or sa & self.above(sb, pos))


def replaced_pairs(rows: list[dict]):
    for row in rows:
        for negative in row["negatives"]:
            if negative["kind"].startswith("replace_"):
                yield row, negative


def test_no_negative_is_a_wordnet_synonym_hypernym_or_hyponym(tmp_path, wordnet_folder):
    rows, summary = augment(tmp_path, "wn", "--wordnet", str(wordnet_folder))
    check = WordNetCheck(wordnet_folder)
    checked = {"replace_object": 0, "replace_attribute": 0, "replace_relation": 0}
    for _, negative in replaced_pairs(rows):
        kind, original, replacement = negative["kind"], negative["from"], negative["to"]
        if kind == "replace_relation":  # verbs are compared where the prepositions are the same
            (original, rest), (replacement, other_rest) = original.partition(" ")[::2], replacement.partition(" ")[::2]
            poses = ["v"] if rest == other_rest and original != replacement else []
        else:
            poses = ["n"] if kind == "replace_object" else ["a", "n"]
        for pos in poses:
            assert not check.keeps_true(original, replacement, pos), negative
        checked[kind] += 1
    assert min(checked.values()) > 100, checked
    counters = summary["counters"]
    for reason in ("synonym", "hypernym", "hyponym", "compound", "uncountable"):
        assert counters[f"excluded_{reason}"] > 0, reason


def test_compounds_are_never_split_and_mass_nouns_never_pluralised(tmp_path, wordnet_folder):
    rows, _ = augment(tmp_path, "wn", "--wordnet", str(wordnet_folder))
    seen, whole, occurrences = 0, 0, 0
    for row in rows:
        names = {o["name"] for o in row["graph"]["objects"]}
        for compound in (c for c in COMPOUNDS if c in row["caption"].lower()):
            occurrences += 1
            if compound not in names:  # spaCy did not parse it as a noun phrase ("riding a fire hydrant")
                continue
            whole += 1
            for negative in row["negatives"]:
                replaced_whole = negative["kind"] == "replace_object" and negative["from"] == compound
                assert replaced_whole or compound in negative["text"].lower(), negative
                seen += 1
        for negative in row["negatives"]:
            words = set(negative["text"].lower().rstrip(".").split())
            assert not words & ({noun + "s" for noun in MASS_NOUNS} | {"grasses"}), negative
    assert seen > 500 and whole >= 0.8 * occurrences, (whole, occurrences)


def test_without_wordnet_one_warning_and_the_curated_lexicon(tmp_path, caplog):
    empty = tmp_path / "no-wordnet"
    empty.mkdir()
    with caplog.at_level(logging.WARNING):
        rows, summary = augment(tmp_path, "fallback", "--wordnet", str(empty))
    warnings = [r.getMessage() for r in caplog.records if "WordNet" in r.getMessage()]
    assert len(warnings) == 1 and "apt install wordnet-base" in warnings[0]
    assert "python -m nltk.downloader wordnet" in warnings[0]
    disabled, _ = augment(tmp_path, "disabled", "--wordnet", "off")
    assert rows == disabled  # an empty folder is "no WordNet", as asked for
    hydrants = [o for row in rows for o in row["graph"]["objects"] if o["name"] == "hydrant"]
    assert hydrants and all("fire" in o["attributes"] for o in hydrants)  # today's split
    for _, negative in replaced_pairs(rows):
        assert (negative["from"], negative["to"]) not in {("man", "person"), ("dog", "puppy"), ("couch", "sofa")}
    assert "excluded_compound" not in summary["counters"] and summary["counters"]["excluded_synonym"] > 0


def test_negative_options_are_checked_in_one_line(tmp_path, capsys):
    captions = write_jsonl(tmp_path / "c.jsonl", [{"id": "1", "caption": "A dog on a bench."}])
    base = ["augment", "--captions", str(captions), "--scene-graph", "--out", str(tmp_path / "out")]
    for extra, expected in [(["--negative-mix", "replace_object=1,swap_thing=2"], "swap_thing=2"),
                            (["--negative-mix", "replace_object=x"], "is not a number"),
                            (["--extra-vocab", "lexicn"], "--extra-vocab lexicn"),
                            (["--wordnet", str(tmp_path / "missing")], "no such folder")]:
        assert main(base + extra) == 2
        err = capsys.readouterr().err
        assert expected in err and "Traceback" not in err


@pytest.mark.parametrize("mix", ["replace_object=1,replace_attribute=1,swap_attribute=2,replace_relation=2,"
                                 "reverse_relation=2,swap_object=1"])
def test_mix_and_extra_vocabulary_are_in_the_config_and_the_output(tmp_path, mix):
    plain, _ = augment(tmp_path, "plain", "--wordnet", "off")
    mixed, _ = augment(tmp_path, "mixed", "--wordnet", "off", "--negative-mix", mix, "--extra-vocab", "lexicon")
    stage = json.loads((tmp_path / "mixed" / "stage.json").read_text())
    assert stage["config_hash"] != json.loads((tmp_path / "plain" / "stage.json").read_text())["config_hash"]
    share = lambda rows, kinds: (sum(n["kind"] in kinds for r in rows for n in r["negatives"])  # noqa: E731
                                 / sum(len(r["negatives"]) for r in rows))
    edits = {"swap_attributes", "swap_objects", "reverse_relation", "replace_relation"}
    assert share(mixed, edits) > 2 * share(plain, edits)
    plain_words = {n["to"] for _, n in replaced_pairs(plain) if n["kind"] == "replace_attribute"}
    mixed_words = {n["to"] for _, n in replaced_pairs(mixed) if n["kind"] == "replace_attribute"}
    assert (mixed_words - plain_words) & lexicon.COLOURS  # lexicon colours the corpus never uses


def test_parse_and_vocabulary_commands_use_wordnet_compounds(tmp_path, wordnet_folder):
    lines = tmp_path / "caps.txt"
    lines.write_text("A dog near a fire hydrant.\nTwo hot dogs on a plate.\n")
    for wordnet, names in [(str(wordnet_folder), ["dog", "fire hydrant"]), ("off", ["dog", "hydrant"])]:
        out = tmp_path / f"parses-{wordnet.replace('/', '_')}.jsonl"
        assert main(["parse-scene-graph", "--captions", str(lines), "--wordnet", wordnet, "--out", str(out)]) == 0
        assert [o["name"] for o in json.loads(out.read_text().splitlines()[0])["objects"]] == names
    assert main(["build-vocab", "--captions", str(lines), "--wordnet", str(wordnet_folder), "--out",
                 str(tmp_path / "vocab.json")]) == 0
    vocabulary = json.loads((tmp_path / "vocab.json").read_text())
    assert {"fire hydrant", "hot dog"} <= set(vocabulary["objects"])
    assert vocabulary["plurals"] == {"hot dog": {"hot dogs": 1}}
