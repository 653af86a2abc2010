"""Data for generation: captions grouped by image (the references), datasets of (image, caption) training
examples or of images to caption, source -> target text examples, and the collator of the generator's
sequence layout.

Captions come in any caption format `import-pairs` reads (Karpathy-split JSON such as dataset_coco.json,
COCO captions JSON, JSONL {"id", "image", "caption", "split"?}, TSV); their images must be in a
region-feature folder (extract-regions or import-features output), found as `pipeline.formats.ImageKeys`
finds them. Rows that cannot be used are left out and counted by reason: the reader's (malformed_row,
missing_caption, ...), missing_caption (empty), image_not_in_features and ambiguous_image.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from unimo_pipe.pipeline.errors import RecordError, UserError
from unimo_pipe.pipeline.formats import ImageKeys


@dataclass
class CaptionSet:
    path: Path
    references: dict[str, list[str]]  # feature-store key -> its captions, images in first-seen order
    problems: Counter = field(default_factory=Counter)

    @classmethod
    def load(cls, path: Path, *, image_keys, splits: tuple[str, ...] = (), fmt: str = "auto",
             store: str = "the feature folder") -> CaptionSet:
        """The usable captions of `path` whose split is one of `splits` (all when empty or the file has
        no splits). `image_keys`: the images they may name (`store`: what holds them, for messages)."""
        from unimo_pipe.pipeline.readers import iter_captions
        from unimo_pipe.pipeline.text import normalize_text

        keys = ImageKeys(image_keys, store=store)
        references: dict[str, list[str]] = {}
        problems: Counter = Counter()
        for record in iter_captions(path, fmt):
            if record.error:
                problems[record.error] += 1
                continue
            value = record.value
            if splits and value.get("split") is not None and value["split"] not in splits:
                continue
            caption = normalize_text(value["caption"]) if isinstance(value.get("caption"), str) else ""
            if not caption:
                problems["missing_caption"] += 1
                continue
            try:
                key = keys.resolve(value.get("image"))
            except RecordError as exc:
                problems[exc.reason] += 1
                continue
            references.setdefault(key, []).append(caption)
        if not references:
            found = ", ".join(f"{k}: {v}" for k, v in sorted(problems.items())) or "no captions"
            where = f" in split {'/'.join(splits)}" if splits else ""
            raise UserError(f"{path} has no usable caption{where} ({found}): pass captions whose images are in "
                            f"{store}, or another split")
        return cls(path, references, problems)

    @property
    def images(self) -> list[str]:
        return list(self.references)

    def pairs(self) -> list[tuple[str, str]]:
        """(image key, caption) per caption: the training examples."""
        return [(image, caption) for image, captions in self.references.items() for caption in captions]

    def describe_left_out(self) -> str:
        return ", ".join(f"{reason}: {n}" for reason, n in sorted(self.problems.items()))


class CaptionDataset:
    """Map-style dataset of (image, caption) examples, or of images alone (`captions` None); the feature
    store is opened lazily, so again in each DataLoader worker."""

    def __init__(self, images: list[str], captions: list[str] | None, feature_dir: Path, *, max_regions: int = 100):
        self.images, self.captions, self.feature_dir, self.max_regions = images, captions, feature_dir, max_regions
        self._features = None

    @property
    def features(self):
        if self._features is None:
            from unimo_pipe.pipeline.feature_store import open_feature_dir

            self._features = open_feature_dir(self.feature_dir)
        return self._features

    def __len__(self) -> int:
        return len(self.images)

    def box_counts(self) -> np.ndarray:
        nbb = self.features.name2nbb
        return np.asarray([min(nbb[k], self.max_regions) for k in self.images], dtype=np.int32)

    def __getitem__(self, index: int) -> dict[str, Any]:
        from unimo_pipe.pipeline.training_data import read_regions

        item = {"index": index, "image": self.images[index], "source": ""}
        if self.captions is not None:
            item["target"] = self.captions[index]
        item.update(read_regions(self.features, self.images[index], self.max_regions))
        return item


class GenerationCollator:
    """Batches in the generator's layout (models/generator.py): the source left-padded (a caption's is the
    start token alone), the target right-padded and ended by the end token. A source longer than
    max_source_tokens is cut and counted: the batch's count under "truncated_sources", this collator's
    (in this process) in `truncated`."""

    def __init__(self, tokenizer, setup):
        self.tokenizer, self.setup = tokenizer, setup
        self.truncated = 0

    def __call__(self, items: list[dict[str, Any]]) -> dict[str, Any]:
        import torch

        from unimo_pipe.pipeline.training_data import Collator

        s = self.setup
        batch: dict[str, Any] = {"index": [it["index"] for it in items]}
        sources, truncated = [], 0
        for text in self._encode([it["source"] for it in items]):
            room = s.max_source_tokens - 2
            truncated += len(text) > room
            sources.append([s.start_id, *text[:room], s.end_id] if text else [s.start_id])
        batch["source_ids"], batch["source_mask"] = _padded(sources, s.pad_id, left=True)
        batch["truncated_sources"] = truncated
        self.truncated += truncated
        if "target" in items[0]:
            targets = [[*text[: s.max_target_tokens - 1], s.end_id] for text in self._encode([it["target"]
                                                                                              for it in items])]
            batch["target_ids"], batch["target_mask"] = _padded(targets, s.pad_id, left=False)
        if "features" in items[0]:
            batch.update({k: v for k, v in Collator.images(items).items() if k.startswith("region_")
                          and k != "region_soft_labels"})
        batch["index"] = torch.tensor(batch["index"])
        return batch

    def _encode(self, texts: list[str]) -> list[list[int]]:
        if not any(texts):
            return [[] for _ in texts]
        return self.tokenizer(texts, add_special_tokens=False)["input_ids"]


def _padded(rows: list[list[int]], pad: int, *, left: bool):
    import torch

    width = max(map(len, rows))
    ids = torch.full((len(rows), width), pad, dtype=torch.long)
    mask = torch.zeros((len(rows), width), dtype=torch.bool)
    for i, row in enumerate(rows):
        span = slice(width - len(row), width) if left else slice(0, len(row))
        ids[i, span] = torch.tensor(row, dtype=torch.long)
        mask[i, span] = True
    return ids, mask


@dataclass
class TextPairs:
    """Source -> target text examples (question generation, summarisation, conversational QA turns with their
    history flattened into the source): JSONL {"id"?, "source", "target"?} per line, or a TSV with a header
    naming "source" and "target" columns. "target" may be absent where only generating. Unusable lines
    are left out and counted: malformed_json / malformed_line, missing_field (no source, or no target where
    one is needed)."""

    path: Path
    ids: list[str]
    sources: list[str]
    targets: list[str | None]
    problems: Counter = field(default_factory=Counter)

    @classmethod
    def load(cls, path: Path, *, need_target: bool = True) -> TextPairs:
        from unimo_pipe.pipeline.labelled_data import read_rows

        ids, sources, targets, problems = [], [], [], Counter()
        for number, row in enumerate(read_rows(path), start=1):
            if isinstance(row, str):
                problems[row] += 1
                continue
            source, target = row.get("source"), row.get("target")
            usable_target = isinstance(target, str) and target.strip()
            if not (isinstance(source, str) and source.strip()) or (need_target and not usable_target):
                problems["missing_field"] += 1
                continue
            ids.append(str(row.get("id", number)))
            sources.append(source.strip())
            targets.append(target.strip() if usable_target else None)
        if not ids:
            found = ", ".join(f"{k}: {v}" for k, v in sorted(problems.items())) or "no lines"
            raise UserError(f"{path} has no usable example ({found}): use JSONL lines {{\"source\": ..., "
                            "\"target\": ...}} or a TSV with a header and source and target columns")
        return cls(path, ids, sources, targets, problems)

    def __len__(self) -> int:
        return len(self.ids)

    def describe_left_out(self) -> str:
        return ", ".join(f"{reason}: {n}" for reason, n in sorted(self.problems.items()))


class TextPairDataset:
    """Map-style dataset of the first `count` (default: all) TextPairs examples, targets left out where
    `with_targets` is off."""

    def __init__(self, pairs: TextPairs, *, with_targets: bool = True, count: int | None = None):
        self.pairs, self.with_targets = pairs, with_targets
        self.count = len(pairs) if count is None else min(count, len(pairs))

    def __len__(self) -> int:
        return self.count

    def lengths(self) -> np.ndarray:
        pairs = zip(self.pairs.sources[: self.count], self.pairs.targets[: self.count], strict=True)
        return np.asarray([len(s.split()) + len((t or "").split()) for s, t in pairs], dtype=np.int32)

    def __getitem__(self, index: int) -> dict[str, Any]:
        item = {"index": index, "source": self.pairs.sources[index]}
        if self.with_targets:
            item["target"] = self.pairs.targets[index]
        return item
