"""The HTML writer: sections into one self-contained page (CSS inline, no script, nothing fetched)."""

from __future__ import annotations

import base64
import html
import io
import random
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from unimo_pipe.pipeline.errors import RecordError
from unimo_pipe.pipeline.images import load_rgb


@dataclass(kw_only=True)
class Section:
    """One part of the report: `kind` names what it shows (stage, regions, augment, retrieval, shards,
    training), `notes` what it could not show."""

    kind: str
    title: str
    source: Path
    body: str = ""
    notes: list[str] = field(default_factory=list)


class Reservoir:
    """A uniform sample of `size` items from a stream of unknown length (Algorithm R), seeded."""

    def __init__(self, size: int, seed: int):
        self.size = size
        self.items: list[Any] = []
        self.seen = 0
        self._random = random.Random(seed)

    def offer(self, item: Any) -> None:
        self.seen += 1
        if len(self.items) < self.size:
            self.items.append(item)
        else:
            slot = self._random.randrange(self.seen)
            if slot < self.size:
                self.items[slot] = item


def escape(value: Any) -> str:
    return html.escape(str(value), quote=True)


def table(header: Sequence[str], rows: Iterable[Sequence[Any]], *, raw: bool = False) -> str:
    """An HTML table; cells are escaped unless `raw` (cells already HTML)."""
    cell = (lambda v: str(v)) if raw else escape
    head = "".join(f"<th>{escape(h)}</th>" for h in header)
    body = "".join("<tr>" + "".join(f"<td>{cell(v)}</td>" for v in row) + "</tr>" for row in rows)
    return f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"


def counts_table(counts: dict[str, Any], header: tuple[str, str] = ("reason", "count")) -> str:
    rows = sorted(counts.items(), key=lambda kv: (-kv[1], kv[0]) if isinstance(kv[1], int | float) else (0, kv[0]))
    return table(header, [(name, f"{value:,}" if isinstance(value, int) else value) for name, value in rows])


def thumbnail_uri(path: Path, *, max_side: int) -> str | None:
    """The image at `path` as a base64 JPEG data URI at most `max_side` pixels wide or high; None when it
    cannot be read (missing, not an image)."""
    try:
        image = load_rgb(path)
    except RecordError:
        return None
    image.thumbnail((max_side, max_side))
    buffer = io.BytesIO()
    image.save(buffer, format="JPEG", quality=78, optimize=True)
    return "data:image/jpeg;base64," + base64.b64encode(buffer.getvalue()).decode("ascii")


def section_id(index: int, section: Section) -> str:
    return f"s{index}-{section.kind}"


def render_page(*, title: str, inputs: list[str], sections: list[Section], problems: list[str]) -> str:
    """The whole page: a table of contents, everything the report could not show, then each section."""
    toc = "".join(f'<li><a href="#{section_id(i, s)}">{escape(s.title)}</a></li>' for i, s in enumerate(sections))
    missing = problems + [f"{s.title}: {note}" for s in sections for note in s.notes]
    missing_html = ("<ul>" + "".join(f"<li>{escape(m)}</li>" for m in missing) + "</ul>") if missing else \
        "<p>Nothing: every input was read in full.</p>"
    body = "".join(
        f'<section id="{section_id(i, s)}" class="report-section" data-kind="{escape(s.kind)}" '
        f'data-source="{escape(s.source)}"><h2>{escape(s.title)}</h2><p class="source">{escape(s.source)}</p>'
        + "".join(f'<p class="note">{escape(n)}</p>' for n in s.notes) + s.body + "</section>"
        for i, s in enumerate(sections))
    inputs_html = "".join(f"<li><code>{escape(p)}</code></li>" for p in inputs)
    return (f'<!DOCTYPE html><html lang="en"><head><meta charset="utf-8"><title>{escape(title)}</title>'
            f'<meta name="viewport" content="width=device-width, initial-scale=1"><style>{_CSS}</style></head>'
            f'<body><header><h1>{escape(title)}</h1><ul class="inputs">{inputs_html}</ul></header>'
            f'<nav><h2>Contents</h2><ol>{toc}</ol></nav>'
            f'<section id="not-shown" class="report-section" data-kind="not-shown"><h2>What this report could not show'
            f'</h2>{missing_html}</section>{body}</body></html>')


_CSS = """
body{font:14px/1.45 system-ui,-apple-system,'Segoe UI',sans-serif;margin:0 auto;max-width:1200px;padding:0 20px 40px;
color:#1d232b;background:#fff}
h1{font-size:22px;margin:20px 0 4px}
h2{font-size:18px;border-bottom:1px solid #d5dbe2;padding-bottom:4px;margin-top:32px}
h3{font-size:15px;margin:18px 0 6px}
code,.source{font-family:ui-monospace,Menlo,Consolas,monospace;font-size:12px;color:#5a6573}
.inputs{margin:0;padding-left:18px}nav ol{columns:2;font-size:13px}
table{border-collapse:collapse;margin:6px 0 12px;font-size:13px}
th,td{border:1px solid #d5dbe2;padding:3px 8px;text-align:left;vertical-align:top}th{background:#f2f4f7}
td:has(> .num){text-align:right}
.note{background:#fff6e0;border-left:4px solid #e0a100;padding:4px 10px;margin:6px 0}
.bad{color:#b3261e;font-weight:600}.good{color:#1e7b34;font-weight:600}
.plots{display:flex;flex-wrap:wrap;gap:12px}.plots figure{margin:0}.plots svg{max-width:100%;height:auto}
.plots figcaption{font-size:12px;color:#5a6573}
.gallery{display:grid;grid-template-columns:repeat(auto-fill,minmax(260px,1fr));gap:14px}
.region-figure{margin:0}.region-figure figcaption{font-size:12px;word-break:break-all}
.overlay{position:relative;width:100%;background:#e9edf1;line-height:0}
.overlay img{display:block;width:100%;height:auto}
.overlay svg.boxes{position:absolute;left:0;top:0;width:100%;height:100%}
.overlay.blank svg.boxes{position:static;display:block;height:auto}
svg.boxes rect.box{fill:none;stroke-width:2;vector-effect:non-scaling-stroke}
svg.boxes text{font:600 11px system-ui,sans-serif;paint-order:stroke;stroke:#000;stroke-width:2.5px;fill:#fff}
.samples{display:grid;grid-template-columns:repeat(auto-fill,minmax(540px,1fr));gap:10px}
.sample{border:1px solid #d5dbe2;border-radius:6px;padding:8px 12px}
.caption{font-weight:600}.kind{display:inline-block;font-size:11px;background:#e8eefc;color:#1f4fbf;border-radius:3px;
padding:0 5px;margin-right:6px;font-family:ui-monospace,monospace}
mark{background:#ffd8a8;padding:0 2px;border-radius:2px}
ul.negatives,ul.positives{margin:4px 0;padding-left:18px}
.thumbs{display:flex;gap:6px;flex-wrap:wrap}.thumb{font-size:11px;text-align:center;max-width:110px;word-break:break-all}
.thumb img{display:block;max-width:100px;max-height:100px;margin:auto}
"""
