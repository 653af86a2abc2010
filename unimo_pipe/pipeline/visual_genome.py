"""The Visual Genome 1600 object / 400 attribute / 20 relation vocabularies of the bottom-up-attention
detector, shipped as package data (data/visual_genome/, credit in its CREDITS.md): what the detector's
`object_ids` and `attr_ids` mean. Line i names class i; its first comma-separated synonym is the display name.
"""

from __future__ import annotations

import functools
from importlib.resources import files

import numpy as np

VOCABULARY_FILES = {"objects": "objects_vocab.txt", "attributes": "attributes_vocab.txt",
                    "relations": "relations_vocab.txt"}


@functools.cache
def vocabulary(kind: str) -> tuple[str, ...]:
    """The display names of one vocabulary ("objects", "attributes" or "relations"), by class index."""
    text = (files("unimo_pipe.pipeline") / "data" / "visual_genome" / VOCABULARY_FILES[kind]).read_text(
        encoding="utf-8")
    return tuple(line.split(",")[0].strip() for line in text.splitlines() if line.strip())


def names_of(ids: np.ndarray, kind: str) -> list[str]:
    """The names of class ids; an id outside the vocabulary (another detector's) reads as "#ID"."""
    names = vocabulary(kind)
    return [names[i] if 0 <= i < len(names) else f"#{i}" for i in np.asarray(ids).astype(int).reshape(-1).tolist()]
