"""extract-regions / import-features: sampled images with their boxes drawn and named (Visual Genome classes
and attributes, confidence), and histograms of boxes per image and of confidences.

The boxes are an SVG over the thumbnail in the image's own pixel coordinates (viewBox W x H), so they line up
at any display size; an image whose file is not at hand gets a blank canvas of its size instead.
"""

from __future__ import annotations

import random
import zlib
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from unimo_pipe.pipeline.errors import UserError
from unimo_pipe.pipeline.feature_store import RegionFeatureReader, nbb_file_name, open_feature_dir
from unimo_pipe.pipeline.formats import SUMMARY_FILE, key_within
from unimo_pipe.pipeline.jsonl import read_json
from unimo_pipe.workflows.report.discover import Found
from unimo_pipe.workflows.report.page import Section, escape, thumbnail_uri
from unimo_pipe.workflows.report.plots import figure_html, histogram

REGION_STAGES = ("extract-regions", "import-features")
LABELLED_BOXES = 8  # the most confident boxes get a text label; every box keeps its name as a tooltip
THUMBNAIL_SIDE = 480
CONFIDENCE_IMAGES = 300  # images whose confidences the histogram reads (each read decodes all its arrays)


@dataclass(frozen=True, kw_only=True)
class ReportSettings:
    samples: int
    seed: int
    images: Path | None  # --images: where image files are, overriding each stage's own image folder


def regions_section(found: Found, settings: ReportSettings) -> Section:
    section = Section(kind="regions", title=f"{found.stage}: regions", source=found.path)
    readers = _readers(found, section)
    keys = sorted({key for reader in readers for key in reader.name2nbb} & _shard_keys(found, readers))
    if not keys:
        section.notes.append("no region features to show")
        return section
    root = settings.images or image_root(found.config())
    chosen = sorted(random.Random(settings.seed).sample(keys, min(settings.samples, len(keys))))
    missing = []
    figures = []
    for key in chosen:
        reader = next(r for r in readers if key in r)
        figure, found_file = _figure(reader, key, root)
        figures.append(figure)
        if not found_file:
            missing.append(key)
    if missing:
        where = f"in {root}" if root else "(no image folder: pass --images DIR)"
        section.notes.append(f"{len(missing)} of {len(chosen)} sampled image file(s) not found {where}, drawn on a "
                             f"blank canvas of their size: {', '.join(missing[:10])}"
                             + (" ..." if len(missing) > 10 else ""))
    wanted = set(keys)
    counts = [n for reader in readers for key, n in reader.name2nbb.items() if key in wanted]
    confidences, read = _confidences(readers, keys)
    plots = [figure_html(histogram(counts, title="boxes per image", xlabel="boxes", integer=True))]
    if len(confidences):
        caption = "" if read == len(keys) else f"confidences of the first {read:,} of {len(keys):,} images"
        plots.append(figure_html(histogram(confidences, title="box confidence", xlabel="confidence"), caption))
    section.body = (f"<p>{len(keys):,} images, {sum(counts):,} boxes; {len(chosen)} sampled (seed {settings.seed}). "
                    "Labels: attribute, Visual Genome class, confidence.</p>"
                    f'<div class="plots">{"".join(plots)}</div><div class="gallery">{"".join(figures)}</div>')
    return section


def _readers(found: Found, section: Section) -> list[RegionFeatureReader]:
    """The merged store of a finished output, else the per-shard stores still there (a half-written run); for
    one shard folder, its own store, else the merged one it went into."""
    places = [found.root] if found.kind == "stage" and found.complete else list(found.shards)
    readers = []
    for place in places:
        try:
            readers.append(open_feature_dir(place))
        except UserError as exc:
            if found.kind == "shard" and (found.root / SUMMARY_FILE).is_file():
                return [open_feature_dir(found.root)]
            section.notes.append(str(exc))
    return readers


def _shard_keys(found: Found, readers: list[RegionFeatureReader]) -> set[str]:
    """The images to show: all of them, or, for one shard folder, those its nbb sidecar lists."""
    everything = {key for reader in readers for key in reader.name2nbb}
    if found.kind != "shard" or not readers:
        return everything
    sidecar = found.path / nbb_file_name(*readers[0].suffix_args)
    return set(read_json(sidecar)) if sidecar.is_file() else everything


def image_root(config: dict) -> Path | None:
    """Where the image files of a region stage's keys are, from its config (None: not known)."""
    if config.get("images"):
        return Path(config["images"])
    if config.get("image_list"):
        return Path(config["image_list"]).parent
    return None


def _figure(reader: RegionFeatureReader, key: str, image_root: Path | None) -> tuple[str, bool]:
    dump = reader.get_dump(key, names=True)
    width, height, boxes = _pixel_boxes(dump, reader.meta.get(key, {}))
    inside = key_within(image_root, key) if image_root is not None else None
    uri = thumbnail_uri(image_root / inside, max_side=THUMBNAIL_SIDE) if inside is not None else None
    conf = dump.get("conf")
    labels = _Labels(width)
    shapes = "".join(_box(boxes[i], _label(dump, i)) for i in range(len(boxes))) + "".join(
        labels.place(*boxes[i][[0, 1, 2]].tolist(), _label(dump, i))  # most confident first: they win the space
        for i in (np.argsort(-conf, kind="stable") if conf is not None else np.arange(len(boxes)))[:LABELLED_BOXES])
    canvas = "" if uri else f'<rect class="canvas" x="0" y="0" width="{width:g}" height="{height:g}" fill="#cfd6de"/>'
    svg = (f'<svg class="boxes" data-image="{escape(key)}" viewBox="0 0 {width:g} {height:g}" '
           f'preserveAspectRatio="none" xmlns="http://www.w3.org/2000/svg">{canvas}{shapes}</svg>')
    picture = f'<img src="{uri}" alt="{escape(key)}" data-image="{escape(key)}">' if uri else ""
    caption = f"{escape(key)}: {len(boxes)} boxes, {width:g}x{height:g}" + ("" if uri else " (image file not found)")
    return (f'<figure class="region-figure"><div class="overlay{"" if uri else " blank"}">{picture}{svg}</div>'
            f"<figcaption>{caption}</figcaption></figure>"), uri is not None


def _pixel_boxes(dump: dict[str, np.ndarray], meta: dict) -> tuple[float, float, np.ndarray]:
    """(width, height, xyxy pixel boxes): stored `boxes` where the stage kept them, else norm_bb scaled by the
    image's size (from img_meta), else by a 1000-wide canvas of the boxes' own aspect."""
    norm = dump["norm_bb"][:, :4].astype(np.float64)
    width, height = float(meta.get("width", 0) or 0), float(meta.get("height", 0) or 0)
    if "boxes" in dump:
        boxes = dump["boxes"].astype(np.float64)
        if not (width and height):
            width, height = (float(max(boxes[:, 2].max(initial=1), 1)), float(max(boxes[:, 3].max(initial=1), 1)))
        return width, height, boxes
    if not (width and height):
        width, height = 1000.0, 1000.0
    return width, height, norm * np.array([width, height, width, height])


class _Labels:
    """Box labels placed so far on one image; a label that would cover one of them is left to the tooltip."""

    def __init__(self, width: float):
        self.width = width
        self.size = max(width / 30, 8)  # about the same size on screen whatever the image's size
        self.placed: list[tuple[float, float, float]] = []  # (left, right, baseline)

    def place(self, x1: float, y1: float, x2: float, label: str) -> str:
        right = x1 > self.width / 2  # a label starting right of the middle runs leftwards, staying on the image
        extent = len(label) * self.size * 0.6
        left = x2 - 2 - extent if right else x1 + 2
        baseline = max(y1 + self.size, self.size)
        if any(left < end and start < left + extent and abs(baseline - other) < self.size
               for start, end, other in self.placed):
            return ""
        self.placed.append((left, left + extent, baseline))
        return (f'<text x="{(x2 - 2 if right else x1 + 2):.1f}" y="{baseline:.1f}" text-anchor='
                f'"{"end" if right else "start"}" style="font-size:{self.size:.1f}px">{escape(label)}</text>')


def _label(dump: dict[str, np.ndarray], index: int) -> str:
    """"attribute class confidence" of one box, by Visual Genome's names where the store has class ids."""
    names = dump.get("object_names")
    name = str(names[index]) if names is not None else "region"
    attribute = str(dump["attr_names"][index]) + " " if "attr_names" in dump else ""
    confidence = f" {float(dump['conf'][index]):.2f}" if "conf" in dump else ""
    return f"{attribute}{name}{confidence}"


def _box(box: np.ndarray, label: str) -> str:
    hue = zlib.crc32(label.rsplit(" ", 1)[0].encode()) % 360  # one colour per attribute + class
    x1, y1, x2, y2 = (float(v) for v in box)
    return (f'<rect class="box" data-box="{x1:.2f} {y1:.2f} {x2:.2f} {y2:.2f}" x="{x1:.2f}" y="{y1:.2f}" '
            f'width="{max(x2 - x1, 0):.2f}" height="{max(y2 - y1, 0):.2f}" stroke="hsl({hue},85%,55%)">'
            f"<title>{escape(label)}</title></rect>")


def _confidences(readers: list[RegionFeatureReader], keys: list[str]) -> tuple[np.ndarray, int]:
    values, read = [], 0
    for key in keys[:CONFIDENCE_IMAGES]:
        reader = next(r for r in readers if key in r)
        dump = reader.get_dump(key)
        if "conf" not in dump:
            return np.zeros(0), 0
        values.append(dump["conf"])
        read += 1
    return (np.concatenate(values) if values else np.zeros(0)), read
