"""`unimo-pipe report PATH... --out report.html`: what the pipeline made, as one self-contained HTML page.

discover.py finds what each PATH is; one module per section (stage_summary, regions, augment, retrieval,
shards, training) reads the outputs through pipeline/formats.py and the stores; page.py writes the page.
A section shows only what exists, and says what it could not show; nothing here raises on bad data.
"""

from __future__ import annotations

import time
import zipfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from unimo_pipe.pipeline.errors import UserError
from unimo_pipe.pipeline.jsonl import atomic_write
from unimo_pipe.workflows.report.discover import Found, discover
from unimo_pipe.workflows.report.page import Section, render_page
from unimo_pipe.workflows.report.regions import REGION_STAGES, ReportSettings

DEFAULT_SAMPLES = 12


@dataclass(frozen=True)
class ReportResult:
    path: Path
    sections: int
    notes: int
    bytes: int
    seconds: float


def _detail_sections() -> dict[str, tuple[str, Callable[[Found, ReportSettings], Section]]]:
    """The section (its kind, its builder) each stage has beyond its accounting."""
    from unimo_pipe.workflows.report.augment import augment_section
    from unimo_pipe.workflows.report.regions import regions_section
    from unimo_pipe.workflows.report.retrieval import retrieval_section
    from unimo_pipe.workflows.report.shards import shards_section

    return {**dict.fromkeys(REGION_STAGES, ("regions", regions_section)), "augment": ("augment", augment_section),
            "retrieve": ("retrieval", retrieval_section), "shard": ("shards", lambda found, _: shards_section(found))}


def build_sections(found: list[Found], settings: ReportSettings) -> list[Section]:
    from unimo_pipe.workflows.report.stage_summary import stage_section
    from unimo_pipe.workflows.report.training import scores_section, training_section

    details = _detail_sections()
    sections = []
    for item in found:
        if item.kind in ("training", "scores"):
            build = training_section if item.kind == "training" else scores_section
            sections.append(_safely(lambda i, _, build=build: build(i), item, settings, item.kind))
            continue
        sections.append(_safely(lambda i, _: stage_section(i), item, settings, "stage"))
        if item.stage in details and (item.shards or item.complete):
            kind, build = details[item.stage]
            sections.append(_safely(build, item, settings, kind))
    return sections


# What damaged files raise while a section reads them (a corrupt store or npz, a malformed JSON value)
_DAMAGE = (UserError, OSError, ValueError, KeyError, TypeError, IndexError, zipfile.BadZipFile)


def _safely(build: Callable[[Found, ReportSettings], Section], item: Found, settings: ReportSettings,
            kind: str) -> Section:
    """The section, or, where a damaged file stops it, an empty one saying which file and why."""
    try:
        return build(item, settings)
    except _DAMAGE as exc:
        return Section(kind=kind, title=f"{item.stage or kind}: {item.path.name}", source=item.path,
                       notes=[f"could not be shown: {type(exc).__name__}: {exc}"])


def write_report(paths: list[Path], out: Path, *, samples: int = DEFAULT_SAMPLES, images: Path | None = None,
                 seed: int = 0) -> ReportResult:
    """Write the report of everything found under `paths` to `out`."""
    started = time.perf_counter()
    if samples < 0:
        raise UserError(f"--samples must be 0 or more, not {samples}")
    if images is not None and not images.is_dir():
        raise UserError(f"--images {images} is not a folder: pass the folder holding the image files")
    found, problems = discover(paths)
    settings = ReportSettings(samples=samples, seed=seed, images=images)
    sections = build_sections(found, settings)
    page = render_page(title="unimo-pipe report", inputs=[str(p) for p in paths], sections=sections,
                       problems=problems)
    out.parent.mkdir(parents=True, exist_ok=True)
    with atomic_write(out) as f:
        f.write(page)
    out.chmod(0o644)  # a page to share, not the private temporary file atomic_write starts from
    return ReportResult(out, len(sections), len(problems) + sum(len(s.notes) for s in sections),
                        len(page.encode("utf-8")), time.perf_counter() - started)
