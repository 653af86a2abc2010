"""Scoring scene graphs against a gold set: precision / recall / F1 for objects, attributes, relations.

Everything is compared as multisets of tuples: objects by name, attributes as (object, attribute),
relations as (subject, predicate, object). Predicates match exactly, or (the "lemma" score) after
lemmatising each word, which forgives "sits on" vs "sitting on".
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable
from typing import Any

Tuples = dict[str, Counter]


def ours_to_tuples(graph: dict[str, Any]) -> Tuples:
    objects = graph["objects"]
    return {
        "objects": Counter(o["name"] for o in objects),
        "attributes": Counter((o["name"], a) for o in objects for a in o["attributes"]),
        "relations": Counter((objects[r["subject"]]["name"], r["predicate"], objects[r["object"]]["name"])
                             for r in graph["relations"]),
    }


def sng_to_tuples(graph: dict[str, Any]) -> Tuples:
    """SceneGraphParser output in the same terms: compound heads split, determiners dropped."""
    names, attributes = [], Counter()
    for entity in graph["entities"]:
        words = entity["lemma_head"].split()
        name = words[-1].lower()
        names.append(name)
        attributes.update((name, w.lower()) for w in words[:-1])
        attributes.update((name, m["span"].lower()) for m in entity["modifiers"]
                          if m["dep"] in ("amod", "nummod", "compound", "acomp"))
    relations = Counter((names[r["subject"]], r["relation"].lower(), names[r["object"]]) for r in graph["relations"])
    return {"objects": Counter(names), "attributes": attributes, "relations": relations}


def gold_to_tuples(row: dict[str, Any]) -> Tuples:
    return {"objects": Counter(row["objects"]), "attributes": Counter(map(tuple, row["attributes"])),
            "relations": Counter(map(tuple, row["relations"]))}


def score(gold: list[Tuples], predicted: list[Tuples], normalise: Callable[[str], str] | None = None
          ) -> dict[str, dict[str, float]]:
    """Micro-averaged P/R/F1 per category over all captions."""
    result = {}
    for category in ("objects", "attributes", "relations"):
        hits = total_gold = total_predicted = 0
        for g, p in zip(gold, predicted, strict=True):
            g_items, p_items = g[category], p[category]
            if category == "relations" and normalise is not None:
                g_items = Counter({(s, normalise(r), o): n for (s, r, o), n in g_items.items()})
                p_items = Counter({(s, normalise(r), o): n for (s, r, o), n in p_items.items()})
            hits += sum((g_items & p_items).values())
            total_gold += sum(g_items.values())
            total_predicted += sum(p_items.values())
        precision = hits / total_predicted if total_predicted else 0.0
        recall = hits / total_gold if total_gold else 0.0
        f1 = 2 * precision * recall / (precision + recall) if precision + recall else 0.0
        result[category] = {"precision": round(precision, 3), "recall": round(recall, 3), "f1": round(f1, 3)}
    return result
