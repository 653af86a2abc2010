"""augment: sampled captions with their positives (pivot, method, similarity) and their hard negatives, the
changed words highlighted and the kind shown; counts per kind; shortfalls."""

from __future__ import annotations

import difflib
from collections import Counter
from collections.abc import Iterator
from typing import Any

from unimo_pipe.pipeline.formats import AUGMENT_FILE
from unimo_pipe.pipeline.jsonl import iter_jsonl
from unimo_pipe.workflows.report.discover import Found
from unimo_pipe.workflows.report.page import Reservoir, Section, counts_table, escape
from unimo_pipe.workflows.report.regions import ReportSettings
from unimo_pipe.workflows.report.stage_summary import read_counters

SHOWN_NEGATIVES = 5
SHOWN_BAD_LINES = 5


def augment_section(found: Found, settings: ReportSettings) -> Section:
    section = Section(kind="augment", title="augment: positives and negatives", source=found.path)
    negative_kinds: Counter = Counter()
    methods: Counter = Counter()
    sampler = Reservoir(settings.samples, settings.seed)
    for row in _rows(found, section):
        negative_kinds.update(n.get("kind", "?") for n in row.get("negatives", []))
        methods.update(p.get("method", "?") for p in row.get("positives", []))
        sampler.offer(row)
    if not sampler.seen:
        section.notes.append(f"no {AUGMENT_FILE} rows to show")
        return section
    shortfalls = {k: v for k, v in read_counters(found).items() if "shortfall" in k or k.startswith("fewer_")}
    chosen = sampler.items
    body = [f"<p>{sampler.seen:,} captions; {sum(methods.values()):,} positives, {sum(negative_kinds.values()):,} "
            f"negatives. {len(chosen)} sampled (seed {settings.seed}).</p>",
            "<h3>Negatives per kind</h3>" + (counts_table(negative_kinds, ("kind", "negatives")) if negative_kinds
                                              else "<p>none</p>"),
            "<h3>Positives per method</h3>" + (counts_table(methods, ("method", "positives")) if methods
                                               else "<p>none</p>"),
            "<h3>Shortfalls</h3>" + (counts_table(shortfalls, ("shortfall", "count")) if shortfalls
                                     else "<p>none counted</p>"),
            "<h3>Samples</h3>", '<div class="samples">',
            *(_sample(row) for row in sorted(chosen, key=lambda r: str(r.get("id")))), "</div>"]
    section.body = "".join(body)
    return section


def _rows(found: Found, section: Section) -> Iterator[dict[str, Any]]:
    bad = []
    for shard in found.shards:
        path = shard / AUGMENT_FILE
        if not path.is_file():
            section.notes.append(f"{path} is missing")
            continue
        for line, row, problem in iter_jsonl(path):
            if problem or not isinstance(row, dict) or "caption" not in row:
                bad.append(f"{path}:{line} ({problem or 'malformed_row'})")
            else:
                yield row
    if bad:
        section.notes.append(f"{len(bad)} unreadable row(s) not shown: {', '.join(bad[:SHOWN_BAD_LINES])}")


def _sample(row: dict[str, Any]) -> str:
    caption = str(row.get("caption", ""))
    positives = row.get("positives", [])
    negatives = row.get("negatives", [])
    parts = [f'<div class="sample" data-id="{escape(row.get("id"))}"><div class="caption">{escape(caption)}</div>'
             f'<div class="source">{escape(row.get("id"))}</div>']
    if positives:
        parts.append('<ul class="positives">' + "".join(
            f'<li><span class="kind">{escape(p.get("method", "?"))}</span>{_changed(caption, str(p.get("text", "")))}'
            f' <span class="source">pivot: {escape(p.get("pivot", ""))}'
            + (f"; similarity {p['similarity']:.3f}" if isinstance(p.get("similarity"), int | float) else "")
            + "</span></li>" for p in positives) + "</ul>")
    else:
        parts.append('<p class="source">no positives</p>')
    if negatives:
        more = len(negatives) - SHOWN_NEGATIVES
        parts.append('<ul class="negatives">' + "".join(
            f'<li><span class="kind">{escape(n.get("kind", "?"))}</span>{_changed(caption, str(n.get("text", "")))}'
            + (f' <span class="source">{escape(n.get("from"))} &rarr; {escape(n.get("to"))}</span>'
               if n.get("from") is not None else "") + "</li>" for n in negatives[:SHOWN_NEGATIVES])
            + (f"<li>... {more:,} more</li>" if more > 0 else "") + "</ul>")
    return "".join(parts) + "</div>"


def _changed(original: str, text: str) -> str:
    """`text` with the words that differ from `original` in <mark>."""
    before, after = original.split(), text.split()
    out = []
    for op, _, _, j1, j2 in difflib.SequenceMatcher(a=before, b=after, autojunk=False).get_opcodes():
        words = escape(" ".join(after[j1:j2]))
        if j1 == j2:
            continue
        out.append(words if op == "equal" else f"<mark>{words}</mark>")
    return " ".join(out)
