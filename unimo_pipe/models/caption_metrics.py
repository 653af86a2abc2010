"""COCO caption metrics through the COCO caption evaluation package (pycocoevalcap): BLEU-1..4, METEOR,
ROUGE-L and CIDEr-D (pycocoevalcap's Cider is the CIDEr-D variant: clipped counts, length penalty).

As the COCO evaluation server does, captions and references are first tokenised by Stanford's PTB
tokenizer (lower-cased, punctuation dropped), which, like METEOR, runs on Java. Without a Java runtime
the scores that need none (BLEU, ROUGE-L, CIDEr-D) are computed on a Python tokenisation (lower-cased,
split on anything not a letter, digit or apostrophe) and labelled so: they differ a little from the
official figures.
"""

from __future__ import annotations

import re
import shutil
from typing import Any

BLEU_NAMES = ("BLEU-1", "BLEU-2", "BLEU-3", "BLEU-4")
ALL_METRICS = (*BLEU_NAMES, "METEOR", "ROUGE-L", "CIDEr-D")
JAVA_METRICS = ("METEOR",)
PTB = "ptb (Stanford PTBTokenizer, Java)"
PYTHON = "python (without Java: lower-cased, split on non-word characters)"
_WORD = re.compile(r"[a-z0-9']+")


def java_available() -> bool:
    return shutil.which("java") is not None


def caption_scores(predictions: dict[str, str], references: dict[str, list[str]], *,
                   metrics: tuple[str, ...] = ALL_METRICS, use_java: bool | None = None
                   ) -> tuple[dict[str, Any], dict[str, dict[str, float]]]:
    """(totals, per-image scores) of one caption per image against all of its references; the images are
    those of `predictions`, each of which needs references. totals: each metric, "images" and
    "tokenization" (which tokeniser made the words); a Java metric without Java is left out."""
    use_java = java_available() if use_java is None else use_java
    images = list(predictions)
    gts, res = _tokenised(references, predictions, images, use_java)
    totals: dict[str, Any] = {}
    per_image: dict[str, dict[str, float]] = {image: {} for image in images}
    for names, scorer in _scorers(metrics, use_java):
        score, scores = scorer(gts, res)
        if len(names) == 1:
            score, scores = [score], [scores]
        for name, total, each in zip(names, score, scores, strict=True):
            totals[name] = round(float(total), 6)
            for image, value in zip(images, each, strict=True):
                per_image[image][name] = round(float(value), 6)
    totals["images"] = len(images)
    totals["tokenization"] = PTB if use_java else PYTHON
    return totals, per_image


def python_tokenise(text: str) -> str:
    return " ".join(_WORD.findall(text.lower()))


def _tokenised(references, predictions, images, use_java) -> tuple[dict, dict]:
    gts = {image: list(references[image]) for image in images}
    res = {image: [predictions[image]] for image in images}
    if not use_java:
        return ({k: [python_tokenise(t) for t in v] for k, v in gts.items()},
                {k: [python_tokenise(t) for t in v] for k, v in res.items()})
    from pycocoevalcap.tokenizer.ptbtokenizer import PTBTokenizer

    tokenizer = PTBTokenizer()
    wrap = lambda table: {k: [{"caption": t} for t in v] for k, v in table.items()}  # noqa: E731
    return tokenizer.tokenize(wrap(gts)), tokenizer.tokenize(wrap(res))


def _scorers(metrics: tuple[str, ...], use_java: bool):
    """(names, compute(gts, res) -> (score, scores)) of each pycocoevalcap scorer the metrics need."""
    from pycocoevalcap.bleu.bleu import Bleu
    from pycocoevalcap.cider.cider import Cider
    from pycocoevalcap.rouge.rouge import Rouge

    if any(name in metrics for name in BLEU_NAMES):
        yield BLEU_NAMES, lambda gts, res: Bleu(4).compute_score(gts, res, verbose=0)
    if "METEOR" in metrics and use_java:
        yield ("METEOR",), _meteor
    if "ROUGE-L" in metrics:
        yield ("ROUGE-L",), Rouge().compute_score
    if "CIDEr-D" in metrics:
        yield ("CIDEr-D",), Cider().compute_score


def _meteor(gts, res):
    from pycocoevalcap.meteor.meteor import Meteor

    scorer = Meteor()
    try:
        return scorer.compute_score(gts, res)
    finally:
        del scorer  # its __del__ ends the Java process
