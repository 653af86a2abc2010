"""Labelled image-text examples for classification fine-tuning: visual entailment (SNLI-VE), VQA as
answer classification, or any task that gives an image and a text one label.

Input: JSONL, one example per line: {"image": KEY, "text": str, "label": str} ("id" optional), where
KEY names an image of a region-feature folder (an extract-regions or import-features output). Lines that
cannot be used are left out and counted by reason: malformed_json, missing_field (image, text or label
absent or empty) and unknown_image (not in the feature folder). In data scored against a trained model,
a label the model does not know is counted as unknown_label and kept, with target -1: it is scored as
wrong, as VQA scores answers outside the answer vocabulary. A file with no usable line is one clear error.
"""

from __future__ import annotations

import json
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from unimo_pipe.pipeline.errors import UserError


@dataclass
class LabelledExamples:
    path: Path
    images: list[str]
    texts: list[str]
    targets: list[int]  # index into labels; -1 for a label outside them (scored as wrong)
    labels: list[str]
    problems: Counter = field(default_factory=Counter)

    @classmethod
    def load(cls, path: Path, *, image_keys, labels: list[str] | None = None) -> LabelledExamples:
        """The usable lines of `path`. `labels`: the classes to score against (a trained model's); None
        takes the classes found in the file, sorted (training data)."""
        rows, problems = [], Counter()
        with path.open("rb") as f:
            for raw in f:
                if raw.strip():
                    row, problem = _parse(raw, image_keys)
                    if problem:
                        problems[problem] += 1
                    else:
                        rows.append(row)
        if labels is None:
            labels = sorted({label for _, _, label in rows})
        index = {label: i for i, label in enumerate(labels)}
        problems["unknown_label"] = sum(label not in index for _, _, label in rows)
        problems = +problems  # drop zero counts
        if not rows:
            found = ", ".join(f"{k}: {v}" for k, v in sorted(problems.items())) or "no lines"
            raise UserError(f"{path} has no usable example ({found}): each line must be "
                            '{"image": KEY in the feature folder, "text": ..., "label": ...}')
        if len(labels) < 2:
            raise UserError(f"{path} has a single class ({labels[0]!r}): classification needs at least two labels")
        return cls(path, [r[0] for r in rows], [r[1] for r in rows], [index.get(r[2], -1) for r in rows],
                   list(labels), problems)

    def __len__(self) -> int:
        return len(self.texts)

    @property
    def text_lengths(self) -> np.ndarray:
        return np.asarray([len(t.split()) for t in self.texts], dtype=np.int32)


def _parse(raw: bytes, image_keys) -> tuple[tuple[str, str, str] | None, str | None]:
    try:
        row = json.loads(raw)
    except (json.JSONDecodeError, UnicodeDecodeError):
        return None, "malformed_json"
    if not isinstance(row, dict):
        return None, "malformed_json"
    image, text, label = row.get("image"), row.get("text"), row.get("label")
    if not (isinstance(image, str) and image and isinstance(text, str) and text.strip()
            and isinstance(label, str | int) and str(label)):
        return None, "missing_field"
    if image not in image_keys:
        return None, "unknown_image"
    return (image, text, str(label)), None


class LabelledDataset:
    """Map-style dataset: an example's text, class index and regions (the feature store is opened lazily,
    so again in each DataLoader worker)."""

    def __init__(self, examples: LabelledExamples, feature_dir: Path, *, max_regions: int = 100):
        self.examples, self.feature_dir, self.max_regions = examples, feature_dir, max_regions
        self._features = None

    @property
    def features(self):
        if self._features is None:
            from unimo_pipe.pipeline.feature_store import open_feature_dir

            self._features = open_feature_dir(self.feature_dir)
        return self._features

    def __len__(self) -> int:
        return len(self.examples)

    def box_counts(self) -> np.ndarray:
        nbb = self.features.name2nbb
        return np.asarray([min(nbb[k], self.max_regions) for k in self.examples.images], dtype=np.int32)

    def __getitem__(self, index: int) -> dict[str, Any]:
        from unimo_pipe.pipeline.training_data import read_regions

        ex = self.examples
        return {"index": index, "text": ex.texts[index], "label": ex.targets[index],
                **read_regions(self.features, ex.images[index], self.max_regions)}
