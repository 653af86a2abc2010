from __future__ import annotations

import pytest

from unimo_pipe.models.caption_metrics import PTB, PYTHON, caption_scores, java_available, python_tokenise

REFERENCES = {
    "COCO_val2014_000000391895.jpg": ["A man with a red helmet on a small moped on a dirt road.",
                                      "Man riding a motor bike on a dirt road on the countryside.",
                                      "A man riding on the back of a motorcycle."],
    "COCO_val2014_000000522418.jpg": ["A woman wearing a net on her head cutting a cake.",
                                      "A woman cutting a large white sheet cake."],
    "COCO_val2014_000000184613.jpg": ["A child holding a flowered umbrella and petting a yak.",
                                      "A young man holding an umbrella next to a herd of cattle.",
                                      "a young boy barefoot holding an umbrella touching the horn of a cow",
                                      "A boy holding an umbrella while standing next to livestock."],
}
PREDICTIONS = {"COCO_val2014_000000522418.jpg": "a woman cutting a cake with a knife.",
               "COCO_val2014_000000391895.jpg": "A man riding a motorcycle on a dirt road",
               "COCO_val2014_000000184613.jpg": "a boy with an umbrella next to a cow"}


def _pycocoevalcap_figures(gts: dict, res: dict, with_meteor: bool) -> tuple[dict, dict]:
    """pycocoevalcap's own scorers on already tokenised captions, as its COCOEvalCap runs them."""
    from pycocoevalcap.bleu.bleu import Bleu
    from pycocoevalcap.cider.cider import Cider
    from pycocoevalcap.rouge.rouge import Rouge

    totals, per_image = {}, {k: {} for k in gts}
    bleu, bleus = Bleu(4).compute_score(gts, res, verbose=0)
    scorers = [(bleu, bleus, ["BLEU-1", "BLEU-2", "BLEU-3", "BLEU-4"])]
    if with_meteor:
        from pycocoevalcap.meteor.meteor import Meteor

        score, scores = Meteor().compute_score(gts, res)
        scorers.append(([score], [scores], ["METEOR"]))
    for name, scorer in (("ROUGE-L", Rouge()), ("CIDEr-D", Cider())):
        score, scores = scorer.compute_score(gts, res)
        scorers.append(([score], [scores], [name]))
    for score, scores, names in scorers:
        for value, each, name in zip(score, scores, names, strict=True):
            totals[name] = value
            for image, v in zip(gts, each, strict=True):
                per_image[image][name] = v
    return totals, per_image


def test_python_tokenisation_figures_are_pycocoevalcaps_own():
    totals, per_image = caption_scores(PREDICTIONS, REFERENCES, use_java=False)
    images = list(PREDICTIONS)  # the predictions' order, not the references'
    gts = {k: [python_tokenise(t) for t in REFERENCES[k]] for k in images}
    res = {k: [python_tokenise(PREDICTIONS[k])] for k in images}
    expected_totals, expected_per_image = _pycocoevalcap_figures(gts, res, with_meteor=False)
    assert "METEOR" not in totals and totals["tokenization"] == PYTHON and totals["images"] == 3
    for name, value in expected_totals.items():
        assert totals[name] == pytest.approx(value, abs=1e-6)
        for image in images:
            assert per_image[image][name] == pytest.approx(expected_per_image[image][name], abs=1e-6)
    assert python_tokenise("A man, riding a MOTOR-bike.") == "a man riding a motor bike"
    # every reference counts: dropping the references a caption matches best lowers its score
    fewer = {k: v[-1:] for k, v in REFERENCES.items()}
    assert caption_scores(PREDICTIONS, fewer, use_java=False)[0]["BLEU-4"] < totals["BLEU-4"]


@pytest.mark.slow  # two METEOR Java processes: about 30 s
@pytest.mark.skipif(not java_available(), reason="needs a Java runtime (default-jre-headless; CI installs it)")
def test_ptb_tokenisation_and_meteor_figures_are_pycocoevalcaps_own():
    from pycocoevalcap.tokenizer.ptbtokenizer import PTBTokenizer

    totals, per_image = caption_scores(PREDICTIONS, REFERENCES)
    assert totals["tokenization"] == PTB
    tokenizer = PTBTokenizer()
    images = list(PREDICTIONS)
    gts = tokenizer.tokenize({k: [{"caption": c} for c in REFERENCES[k]] for k in images})
    res = tokenizer.tokenize({k: [{"caption": PREDICTIONS[k]}] for k in images})
    expected_totals, expected_per_image = _pycocoevalcap_figures(gts, res, with_meteor=True)
    assert set(expected_totals) <= set(totals)
    for name, value in expected_totals.items():
        assert totals[name] == pytest.approx(value, abs=1e-6)
        for image in images:
            assert per_image[image][name] == pytest.approx(expected_per_image[image][name], abs=1e-6)
    assert 0 < totals["METEOR"] < 1 and totals["CIDEr-D"] > 0
