from __future__ import annotations

import random

import pytest

from tests.conftest import SHORT_MODEL_POSITIONS
from unimo_pipe.models.backtranslation import BackTranslator, Noise, Quality, add_noise, is_degenerate, rejection
from unimo_pipe.models.translator import Decoding, TranslationReport, build_engine, length_batches
from unimo_pipe.pipeline.errors import UserError


class FakeEngine:
    """Deterministic 'translations': records its inputs, returns variants from a fixed list; texts that
    contain `fails_on` fail, as a real engine reports them."""

    def __init__(self, table, fails_on=None):
        self.table = table
        self.fails_on = fails_on
        self.calls = []
        self.outputs = []  # per call: translations asked per text

    def translate(self, texts, decoding, outputs=1, *, report=None):
        self.calls.append(list(texts))
        self.outputs.append(outputs)
        results = []
        for text in texts:
            if self.fails_on is not None and self.fails_on in text:
                report.failures[text] = "ValueError: cannot translate this"
                results.append([])
            else:
                results.append([self.table(text, i, decoding.seed) for i in range(outputs)])
        return results


def test_length_batches_respect_the_token_budget_and_cover_everything():
    lengths = [5, 50, 7, 48, 6, 51, 9]
    batches = length_batches(lengths, max_batch_tokens=110)
    assert sorted(i for b in batches for i in b) == list(range(7))
    assert all(max(lengths[i] for i in b) * len(b) <= 110 or len(b) == 1 for b in batches)
    assert [sorted(lengths[i] for i in b) for b in batches][0] == [5, 6, 7, 9]


def test_filters_name_their_reason():
    quality = Quality()
    caption = "A dog runs on the beach."
    assert rejection("", caption, quality) == "empty"
    assert rejection("a dog runs on the beach", caption, quality) == "same_as_caption"
    assert rejection("the the the the dog", caption, quality) == "degenerate"
    assert rejection("A dog.", caption, quality) == "length_ratio"
    assert rejection("A dog is running along the shore and the sea and more and more sand.", caption,
                     quality) == "length_ratio"
    assert rejection("A dog is running on the sand.", caption, quality) is None
    assert is_degenerate("on a bench on a bench on a bench") and not is_degenerate("a cat on a mat")
    assert rejection("the the the the dog x y z", caption, Quality(drop_degenerate=False)) is None


def test_noise_drops_blanks_and_shuffles_locally():
    words = [f"w{i}" for i in range(200)]
    noised = add_noise(" ".join(words), Noise(), random.Random(0)).split()
    dropped = 200 - len(noised)
    assert 5 < dropped < 40 and 5 < noised.count("<blank>") < 40
    kept = [w for w in noised if w != "<blank>"]
    positions = [int(w[1:]) for w in kept]
    assert positions != sorted(positions)  # some local swaps happened
    assert all(abs(a - b) < 40 for a, b in zip(positions, sorted(positions), strict=True))
    assert add_noise("a b c d", Noise(), random.Random(3)) == add_noise("a b c d", Noise(), random.Random(3))


def round_trip(positives=3, rounds=3, variants=None, method="sample", forward_fails_on=None, backward_fails_on=None,
               max_translations=None):
    variants = variants or (lambda text, i, seed: f"{text} pivot{(i + seed) % 4}")
    forward = FakeEngine(variants, forward_fails_on)
    backward = FakeEngine(lambda text, i, seed: text.replace("pivot", "variant number "), backward_fails_on)
    translator = BackTranslator(round_trips={"de": (forward, backward)}, method=method,
                                decoding=Decoding(seed=0), positives=positives, max_rounds=rounds,
                                max_translations=max_translations)
    return translator, forward, backward


def test_later_rounds_ask_only_the_short_captions_for_what_they_miss():
    # "a dog": every sample is new; "a cat": only two distinct samples exist, so it stays one short
    def variants(text, i, seed):
        return f"{text} pivot{i + 10 * seed}" if "dog" in text else f"{text} pivot{min(i, 1)}"

    translator, forward, backward = round_trip(positives=3, rounds=2, variants=variants)
    done = translator.run(["a dog on a sofa", "a cat on a mat"])
    assert [len(p) for p in done.positives] == [3, 2]
    assert forward.calls == [["a dog on a sofa", "a cat on a mat"], ["a cat on a mat"]]
    # 5 of the 9 candidates looked at passed (the dog's last 3 came after it was full), so round 1 asks the
    # cat's 1 missing positive ceil(1 / (5/9)) = 2 times
    assert forward.outputs == [6, 2] and len(backward.calls[1]) <= 2


def test_every_pivot_asks_only_for_what_the_ones_before_left():
    forward_de = FakeEngine(lambda text, i, seed: f"{text} de{i}")
    forward_fr = FakeEngine(lambda text, i, seed: f"{text} fr{i}")
    backward = FakeEngine(lambda text, i, seed: text.replace(" de", " variant de ").replace(" fr", " variant fr "))
    translator = BackTranslator(round_trips={"de": (forward_de, backward), "fr": (forward_fr, backward)},
                                decoding=Decoding(), positives=2, max_rounds=3)
    done = translator.run(["a dog on a sofa"])
    assert len(done.positives[0]) == 2 and {p["pivot"] for p in done.positives[0]} == {"de"}
    assert forward_de.outputs == [2] and forward_fr.calls == []  # de's two candidates were enough


@pytest.mark.parametrize("method", ["sample", "beam", "noised-beam"])
def test_work_per_caption_is_bounded_and_the_captions_it_stops_are_counted(method):
    # every candidate reads "a dog on a sofa": the dog's are the caption itself, the cat's one positive then
    # duplicates, so neither fills up and only the budget ends the rounds
    translator, forward, backward = round_trip(positives=3, rounds=10, method=method, max_translations=20,
                                               variants=lambda text, i, seed: "same")
    backward.table = lambda text, i, seed: "a dog on a sofa" if "same" in text else text
    done = translator.run(["a dog on a sofa", "a cat on a mat", "a dog on a sofa"])
    asked = [sum(outputs * call.count(caption) for outputs, call in zip(forward.outputs, forward.calls, strict=True))
             for caption in ("a dog on a sofa", "a cat on a mat")]
    backward_texts = sum(len(call) for call in backward.calls)
    assert done.positives[0] == [] and len(done.positives[1]) == 1
    assert done.rejected["same_as_caption"] > 0 and done.rejected["duplicate"] > 0
    assert done.translations <= 2 * 20 and sum(asked) + backward_texts <= 2 * 20
    assert done.budget_reached == 2
    assert done.translations >= 2 * 20 - (2 if method == "beam" else 1) * 2  # the budget was spent, not less


def test_an_accepting_model_needs_no_second_round_and_the_old_doubling_is_gone():
    translator, forward, _ = round_trip(positives=3, rounds=3)
    done = translator.run(["a dog on a sofa"])
    assert len(done.positives[0]) == 3 and forward.outputs == [6] and done.translations == 12


def test_each_distinct_caption_is_translated_once_and_positives_are_distinct():
    translator, forward, _ = round_trip()
    captions = ["a dog on a sofa", "a cat on a mat", "a dog on a sofa"]
    positives = translator.run(captions).positives
    assert [len(p) for p in positives] == [3, 3, 3]
    assert positives[0] == positives[2]
    assert forward.calls[0] == ["a dog on a sofa", "a cat on a mat"]
    texts = [p["text"] for p in positives[0]]
    assert len(set(texts)) == 3 and all(p["pivot"] == "de" and p["method"] == "sample" for p in positives[0])


def test_shortfall_draws_more_rounds_then_stops_without_padding():
    translator, forward, _ = round_trip(positives=3, variants=lambda text, i, seed: f"{text} pivot{min(i, 1)}")
    done = translator.run(["a dog on a sofa"])
    positives, rejected = done.positives, done.rejected
    assert len(positives[0]) == 2  # only two distinct candidates exist
    assert len(forward.calls) == 3  # the budget: three rounds
    assert rejected["duplicate"] > 0


@pytest.mark.parametrize("method", ["sample", "noised-beam"])
def test_a_caption_whose_translation_fails_is_reported_and_the_rest_go_on(method):
    translator, forward, _ = round_trip(positives=500, method=method, forward_fails_on="cat")  # 500: more rounds
    done = translator.run(["a dog on a sofa", "a cat on a mat", "a dog on a sofa"])
    assert done.failures == [None, "ValueError: cannot translate this", None]
    assert done.positives[1] == [] and done.positives[0] and done.positives[0] == done.positives[2]
    assert len(forward.calls) > 1 and all("cat" not in text for call in forward.calls[1:] for text in call)


def test_a_failed_way_back_fails_the_caption_it_came_from():
    translator, _, _ = round_trip(rounds=1, variants=lambda text, i, seed: f"{text} pivot{i}",
                                  backward_fails_on="cat on a mat pivot1")
    done = translator.run(["a dog on a sofa", "a cat on a mat"])
    assert done.failures == [None, "ValueError: cannot translate this"] and done.positives[1] == []


def test_noised_beam_noises_the_forward_beam_output():
    translator, forward, backward = round_trip(method="noised-beam",
                                               variants=lambda text, i, seed: "one two three four five six seven")
    positives = translator.run(["a b c d e f g"]).positives
    assert all(p["method"] == "noised-beam" for p in positives[0])
    assert len({p["text"] for p in positives[0]}) == len(positives[0]) >= 1


def test_meaning_filter_with_the_real_sentence_encoder():
    from unimo_pipe.models.embedders import TextEncoder

    candidates = {0: "A dog is running along the sandy beach.", 1: "The stock market fell sharply on Tuesday."}
    forward = FakeEngine(lambda text, i, seed: f"p{i % 2}")
    backward = FakeEngine(lambda text, i, seed: candidates[int(text[1])])
    translator = BackTranslator(round_trips={"de": (forward, backward)}, decoding=Decoding(), positives=2,
                                max_rounds=1, quality=Quality(0.1, 10.0, 0.5), encoder=TextEncoder(device="cpu"))
    done = translator.run(["A dog runs on the beach."])
    positives, rejected = done.positives, done.rejected
    assert [p["text"] for p in positives[0]] == [candidates[0]] and positives[0][0]["similarity"] > 0.5
    assert rejected["low_similarity"] >= 1 and set(rejected) <= {"low_similarity", "duplicate"}


def test_engines_agree_on_beam_search(tiny_translators):
    texts = ["A dog runs on the beach.", "Two cats sleep on a red sofa near the window."]
    decoding = Decoding(method="beam", beam_size=3, max_new_tokens=20)
    hf = build_engine("transformers", str(tiny_translators / "translator-en-de"), device="cpu")
    ct2 = build_engine("ctranslate2", str(tiny_translators / "ct2-en-de"), device="cpu")
    assert hf.translate(texts, decoding) == ct2.translate(texts, decoding)
    sampled = hf.translate(texts, Decoding(method="sample", max_new_tokens=20, seed=1), 3)
    assert [len(s) for s in sampled] == [3, 3]
    assert sampled == hf.translate(texts, Decoding(method="sample", max_new_tokens=20, seed=1), 3)
    assert sampled != hf.translate(texts, Decoding(method="sample", max_new_tokens=20, seed=2), 3)


def test_bad_models_are_clear_errors(tmp_path):
    from transformers import BertConfig, BertModel

    with pytest.raises(UserError, match="cannot load the tokenizer of translation model"):
        build_engine("transformers", str(tmp_path / "missing"), device="cpu")
    bert = tmp_path / "bert"
    BertModel(BertConfig(vocab_size=50, hidden_size=8, num_hidden_layers=1, num_attention_heads=2,
                         intermediate_size=8)).save_pretrained(bert)
    from tests.models.test_backtranslation_helpers import save_word_tokenizer

    save_word_tokenizer(bert)
    with pytest.raises(UserError, match="is a bert model, not a translation"):
        build_engine("transformers", str(bert), device="cpu")
    with pytest.raises(UserError, match="not a CTranslate2 model folder"):
        build_engine("ctranslate2", str(bert), device="cpu")


@pytest.mark.parametrize("engine", ["transformers", "ctranslate2"])
def test_engines_keep_to_the_model_positions(short_translators, engine):
    """A 64-position model: a long source is cut (and counted), and generation stops within the decoder's
    positions however many new tokens are asked for."""
    folder = short_translators / f"{'translator' if engine == 'transformers' else 'ct2'}-en-de"
    translator = build_engine(engine, str(folder), device="cpu")
    long_caption = "A bird on a branch near a small red house. " * 12  # far over 64 tokens
    medium_caption = "A bird on a branch near a small red house. " * 3  # fits, but 2x its length does not
    report = TranslationReport()
    translations = translator.translate([long_caption, medium_caption, "A dog."],
                                        Decoding(method="beam", beam_size=2, max_new_tokens=500), report=report)
    assert [len(t) for t in translations] == [1, 1, 1]
    assert report.sources_truncated == 1 and report.failures == {}
    tokenizer = translator.tokenizer
    assert max(len(tokenizer(t[0])["input_ids"]) for t in translations) <= SHORT_MODEL_POSITIONS + 1


def fail_on_text(engine, text: str, monkeypatch) -> list[int]:
    """Make the engine's model raise for any batch holding `text`; returns the sizes of the batches it got."""
    source_ids = engine.tokenizer(text)["input_ids"]
    sizes = []
    if hasattr(engine, "model"):
        generate = engine.model.generate

        def failing_generate(**inputs):
            rows = [row[mask.bool()].tolist() for row, mask in zip(inputs["input_ids"], inputs["attention_mask"],
                                                                   strict=True)]
            sizes.append(len(rows))
            if source_ids in rows:
                raise RuntimeError("CUDA out of memory (simulated)")
            return generate(**inputs)

        monkeypatch.setattr(engine.model, "generate", failing_generate)
    else:
        source_tokens = engine.tokenizer.convert_ids_to_tokens(source_ids)
        engine.translator = FailingTranslator(engine.translator, source_tokens, sizes)
    return sizes


class FailingTranslator:
    def __init__(self, translator, source_tokens, sizes):
        self.translator, self.source_tokens, self.sizes = translator, source_tokens, sizes

    def translate_batch(self, tokens, **options):
        self.sizes.append(len(tokens))
        if self.source_tokens in tokens:
            raise RuntimeError("CUDA out of memory (simulated)")
        return self.translator.translate_batch(tokens, **options)


@pytest.mark.parametrize("engine", ["transformers", "ctranslate2"])
def test_a_failing_batch_is_halved_until_only_the_bad_text_fails(tiny_translators, monkeypatch, engine):
    folder = tiny_translators / f"{'translator' if engine == 'transformers' else 'ct2'}-en-de"
    translator = build_engine(engine, str(folder), device="cpu")
    texts = ["A dog runs on the beach.", "Two cats sleep on a red sofa.", "A bird sings.", "A horse eats hay."]
    sizes = fail_on_text(translator, texts[1], monkeypatch)
    report = TranslationReport()
    translations = translator.translate(texts, Decoding(method="beam", beam_size=2, max_new_tokens=10),
                                        report=report)
    assert [len(t) for t in translations] == [1, 0, 1, 1]
    assert report.failures == {texts[1]: "RuntimeError: CUDA out of memory (simulated)"}
    assert sorted(sizes) == [1, 1, 2, 2, 4]


def cpu_runs_bfloat16() -> bool:
    import torch

    try:
        return bool((torch.ones(2, 2, dtype=torch.bfloat16) @ torch.ones(2, 2, dtype=torch.bfloat16)).sum() == 8)
    except RuntimeError:
        return False


@pytest.mark.skipif(not cpu_runs_bfloat16(), reason="this torch has no bfloat16 matmul on CPU")
def test_transformers_engine_translates_in_bfloat16_on_cpu(tiny_translators):
    """The precision GPUs get, on CPU: dtype mistakes in the translation path show without a GPU."""
    import torch

    folder = str(tiny_translators / "translator-en-de")
    assert next(build_engine("transformers", folder, device="cpu").model.parameters()).dtype == torch.float32
    translator = build_engine("transformers", folder, device="cpu", precision="bfloat16")
    assert next(translator.model.parameters()).dtype == torch.bfloat16
    texts = ["A dog runs on the beach.", "Two cats sleep on a red sofa near the window."]
    assert [len(t) for t in translator.translate(texts, Decoding(method="beam", beam_size=2, max_new_tokens=12))] \
        == [1, 1]
    sampled = translator.translate(texts, Decoding(method="sample", max_new_tokens=12), 3)
    assert [len(t) for t in sampled] == [3, 3] and all(isinstance(s, str) for t in sampled for s in t)


def test_an_unknown_precision_is_a_clear_error(tiny_translators):
    with pytest.raises(UserError, match="precision 'float8'"):
        build_engine("transformers", str(tiny_translators / "translator-en-de"), device="cpu", precision="float8")
