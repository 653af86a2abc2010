"""Labelled examples for classification fine-tuning: image-text tasks (visual entailment such as SNLI-VE, VQA
as answer classification) and text tasks (GLUE-style single-sentence classification such as SST-2).

Input, one example per line:
- JSONL: {"image": KEY, "text": str, "label": str} ("id" optional), where KEY names an image of a
  region-feature folder (an extract-regions or import-features output); text tasks leave "image" out.
- TSV with a header row (GLUE's layout): a "sentence" (or "text") column, or a sentence pair in "sentence1" and
  "sentence2" columns (STS-B), and a "label" (or "score") column; text only.
Regression data (STS-B) has numeric labels; one that is not a number is counted as non_numeric_label.

Lines that cannot be used are left out and counted by reason: malformed_json / malformed_line,
missing_field (text or label absent or empty, or the image for image-text data), unknown_image (not in
the feature folder) and ambiguous_image (its name matches several images there; images are found as
`pipeline.formats.ImageKeys` finds them: exactly, then by a unique file name or stem). In data scored
against a trained model, a label the model does not know is counted as unknown_label and kept, with
target -1: it is scored as wrong, as VQA scores answers outside the answer vocabulary. A file with no
usable line is one clear error.
"""

from __future__ import annotations

import json
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from unimo_pipe.pipeline.errors import RecordError, UserError
from unimo_pipe.pipeline.formats import ImageKeys


@dataclass
class LabelledExamples:
    path: Path
    images: list[str]
    texts: list[str]
    targets: list  # index into labels, -1 for a label outside them (scored as wrong); regression: the values
    labels: list[str]
    problems: Counter = field(default_factory=Counter)

    @classmethod
    def load(cls, path: Path, *, image_keys=None, labels: list[str] | None = None, regression: bool = False,
             pair_separator: str = " ") -> LabelledExamples:
        """The usable lines of `path`. `image_keys`: the feature folder's images (None: a text task).
        `labels`: the classes to score against (a trained model's); None takes the classes found in the
        file, sorted (training data). `regression`: the labels are numbers (STS-B's similarity), kept as
        float targets, with no classes. A sentence pair (STS-B's sentence1, sentence2) is one text, its
        halves joined by `pair_separator` (the tokenizer's separator token)."""
        rows, problems = [], Counter()
        if image_keys is not None:
            image_keys = ImageKeys(image_keys, store="the feature folder")
        for row in read_rows(path):
            example, problem = _example(row, image_keys, pair_separator) if isinstance(row, dict) else (None, row)
            if not problem and regression:
                example, problem = _numeric(example)
            if problem:
                problems[problem] += 1
            else:
                rows.append(example)
        if regression:
            if not rows:
                raise UserError(f"{path} has no usable example ({_described(problems)}): regression needs a numeric "
                                '"label" (or "score") per line')
            return cls(path, [r[0] for r in rows], [r[1] for r in rows], [r[2] for r in rows], [], +problems)
        if labels is None:
            labels = sorted({label for _, _, label in rows})
        index = {label: i for i, label in enumerate(labels)}
        problems["unknown_label"] = sum(label not in index for _, _, label in rows)
        problems = +problems  # drop zero counts
        if not rows:
            raise UserError(f"{path} has no usable example ({_described(problems)}): use JSONL lines "
                            '{"image": KEY in the feature folder, "text": ..., "label": ...} ("image" left out for '
                            'text tasks) or a TSV with a header and "sentence" and "label" columns')
        if len(labels) < 2:
            raise UserError(f"{path} has a single class ({labels[0]!r}): classification needs at least two labels")
        return cls(path, [r[0] for r in rows], [r[1] for r in rows], [index.get(r[2], -1) for r in rows],
                   list(labels), problems)

    def __len__(self) -> int:
        return len(self.texts)

    @property
    def text_lengths(self) -> np.ndarray:
        return np.asarray([len(t.split()) for t in self.texts], dtype=np.int32)


def is_text_only(path: Path) -> bool:
    """Whether a labelled file is a text task: a TSV, or JSONL whose first example has no image."""
    if path.suffix.lower() == ".tsv":
        return True
    first = next((row for row in read_rows(path) if isinstance(row, dict)), None)
    return first is not None and "image" not in first


def read_rows(path: Path) -> Iterator[dict | str]:
    """Each line as a dict, or as the reason it is not one."""
    tsv = path.suffix.lower() == ".tsv"
    header = None
    with path.open("rb") as f:
        for raw in f:
            if not raw.strip():
                continue
            try:
                line = raw.decode("utf-8")
            except UnicodeDecodeError:
                yield "malformed_line" if tsv else "malformed_json"
                continue
            if not tsv:
                yield _json_row(line)
            elif header is None:
                header = line.rstrip("\r\n").split("\t")
            else:
                fields = line.rstrip("\r\n").split("\t")
                yield dict(zip(header, fields, strict=True)) if len(fields) == len(header) else "malformed_line"


def _json_row(line: str) -> dict | str:
    try:
        row = json.loads(line)
    except json.JSONDecodeError:
        return "malformed_json"
    return row if isinstance(row, dict) else "malformed_json"


def _described(problems: Counter) -> str:
    return ", ".join(f"{k}: {v}" for k, v in sorted(problems.items())) or "no lines"


def _numeric(example: tuple[str, str, str]) -> tuple[tuple[str, str, float] | None, str | None]:
    try:
        value = float(example[2])
    except ValueError:
        return None, "non_numeric_label"
    return ((example[0], example[1], value), None) if np.isfinite(value) else (None, "non_numeric_label")


def _example(row: dict, image_keys: ImageKeys | None, pair_separator: str = " "
             ) -> tuple[tuple[str, str, str] | None, str | None]:
    text, label = row.get("text", row.get("sentence")), row.get("label", row.get("score"))
    first, second = row.get("sentence1"), row.get("sentence2")
    if text is None and isinstance(first, str) and isinstance(second, str) and first.strip() and second.strip():
        text = f"{first.strip()}{pair_separator}{second.strip()}"
    image = row.get("image") if image_keys is not None else ""
    if not (isinstance(text, str) and text.strip() and isinstance(label, str | int | float) and str(label)
            and isinstance(image, str) and (image or image_keys is None)):
        return None, "missing_field"
    if image_keys is not None:
        try:
            image = image_keys.resolve(image)
        except RecordError as exc:
            return None, "unknown_image" if exc.reason == "image_not_in_features" else exc.reason
    return (image, text, str(label)), None


class LabelledDataset:
    """Map-style dataset: an example's text, class index and, for image-text tasks, its regions (the feature
    store is opened lazily, so again in each DataLoader worker)."""

    def __init__(self, examples: LabelledExamples, feature_dir: Path | None, *, max_regions: int = 100):
        self.examples, self.feature_dir, self.max_regions = examples, feature_dir, max_regions
        self._features = None

    @property
    def features(self):
        if self._features is None and self.feature_dir is not None:
            from unimo_pipe.pipeline.feature_store import open_feature_dir

            self._features = open_feature_dir(self.feature_dir)
        return self._features

    def __len__(self) -> int:
        return len(self.examples)

    def box_counts(self) -> np.ndarray:
        if self.feature_dir is None:
            return np.zeros(len(self), dtype=np.int32)
        nbb = self.features.name2nbb
        return np.asarray([min(nbb[k], self.max_regions) for k in self.examples.images], dtype=np.int32)

    def __getitem__(self, index: int) -> dict[str, Any]:
        from unimo_pipe.pipeline.training_data import read_regions

        ex = self.examples
        item = {"index": index, "text": ex.texts[index], "label": ex.targets[index]}
        if self.feature_dir is not None:
            item.update(read_regions(self.features, ex.images[index], self.max_regions))
        return item
