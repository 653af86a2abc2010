"""Text generation metrics: ROUGE-1/2/L F-measures (Google's rouge-score, Porter stemming, as the
CNN/DailyMail literature reports them) and corpus BLEU (sacrebleu, its default 13a tokenisation), one
reference per example."""

from __future__ import annotations

from typing import Any

ROUGE_TYPES = ("rouge1", "rouge2", "rougeL")


def text_scores(predictions: list[str], references: list[str]) -> tuple[dict[str, Any], list[dict[str, float]]]:
    """(totals, per-example scores): ROUGE F-measures x 100 (mean over examples) and sacrebleu's corpus BLEU."""
    import sacrebleu
    from rouge_score import rouge_scorer

    scorer = rouge_scorer.RougeScorer(list(ROUGE_TYPES), use_stemmer=True)
    per_example = []
    for prediction, reference in zip(predictions, references, strict=True):
        scores = scorer.score(reference, prediction)
        per_example.append({name: round(100 * scores[name].fmeasure, 4) for name in ROUGE_TYPES})
    count = max(len(per_example), 1)
    totals: dict[str, Any] = {f"ROUGE-{name[5:]}": round(sum(s[name] for s in per_example) / count, 4)
                              for name in ROUGE_TYPES}
    totals["BLEU"] = round(sacrebleu.corpus_bleu(predictions, [references]).score, 4)
    totals["examples"] = len(predictions)
    return totals, per_example
