"""`parse-scene-graph` and `build-vocab`: the scene-graph parser and the vocabulary as commands."""

from __future__ import annotations

import json
from pathlib import Path

from unimo_pipe.pipeline.errors import UserError
from unimo_pipe.pipeline.jsonl import atomic_write
from unimo_pipe.pipeline.readers import iter_pairs_input
from unimo_pipe.pipeline.text import normalize_text


def _captions(paths: list[Path], fmt: str) -> list[str]:
    captions = []
    for path in paths:
        if not path.exists():
            raise UserError(f"captions not found: {path}: check the path")
        for record in iter_pairs_input(path, fmt):
            captions.append(normalize_text(str(record.value.get("caption") or "")) if record.error is None else "")
    return captions


def _knowledge(wordnet: str | None):
    """WordNet as augment finds it (one warning line when it is not found)."""
    from unimo_pipe.models.negative_workers import WordKnowledge
    from unimo_pipe.models.wordnet import DISABLED, locate_or_warn

    if wordnet not in (None, DISABLED) and not Path(wordnet).is_dir():
        raise UserError(f"--wordnet {wordnet}: no such folder: pass a WordNet dict folder or {DISABLED}")
    return WordKnowledge(locate_or_warn(wordnet))


def parse_scene_graphs(captions_path: Path, out: Path, *, fmt: str, spacy_model: str, processes: int = 1,
                       wordnet: str | None = None) -> int:
    """One JSON line per caption, in input order (unreadable lines give an empty graph); returns the count."""
    from unimo_pipe.models.scene_graph import SceneGraphParser

    parser = SceneGraphParser(model=spacy_model, compounds=_knowledge(wordnet).compounds())
    captions = _captions([captions_path], fmt)
    with atomic_write(out) as f:
        for _, graph in parser.parse_many(captions, processes=processes):
            f.write(json.dumps(graph.to_dict(), ensure_ascii=False) + "\n")
    return len(captions)


def build_vocab(captions: list[Path], out: Path, *, fmt: str, spacy_model: str, merge: list[Path],
                processes: int = 1, wordnet: str | None = None) -> dict:
    """Object / attribute / relation frequencies of the captions (plus merged lists), written as JSON."""
    from unimo_pipe.models.negative_workers import build_vocabulary
    from unimo_pipe.models.negatives import Vocabulary

    vocabulary = build_vocabulary([c for c in _captions(captions, fmt) if c], spacy_model=spacy_model,
                                  processes=processes, knowledge=_knowledge(wordnet))
    for path in merge:
        vocabulary.merge(Vocabulary.load(path))
    vocabulary.save(out)
    return {"objects": len(vocabulary.objects), "attributes": sum(map(len, vocabulary.attributes.values())),
            "relations": sum(map(len, vocabulary.relations.values()))}
