from __future__ import annotations

import pytest
import torch

from unimo_pipe.models.decoding import (
    CachedDecoder,
    RecomputingDecoder,
    generate,
    repeated_ngram_tokens,
    search,
)
from unimo_pipe.models.decoding_options import SearchOptions
from unimo_pipe.models.generator import GenerationSetup, Generator
from unimo_pipe.models.objectives import seq2seq_attention
from unimo_pipe.models.unified import UnifiedModel, text_positions, tiny_encoder
from unimo_pipe.pipeline.errors import UserError

VOCAB, START, PAD, END, MASK = 40, 0, 1, 2, 4
BANNED = [START, PAD, MASK]


def make_generator(task: str, *, kind: str = "roberta", seed: int = 0) -> Generator:
    torch.manual_seed(seed)
    model = UnifiedModel(tiny_encoder(VOCAB, hidden=32, layers=2, kind=kind), region_dim=8)
    setup = GenerationSetup(task, START, END, PAD, tuple(BANNED), max_source_tokens=8, max_target_tokens=12)
    generator = Generator(model, setup).eval()
    with torch.no_grad():  # larger weights than the initialisation's: every input changes the output
        for parameter in generator.parameters():
            if parameter.dim() == 2:
                parameter.normal_(std=0.3)
    return generator


def caption_batch() -> dict:
    """Three images with 3, 5 and 1 real regions: a ragged batch."""
    torch.manual_seed(1)
    region_mask = torch.tensor([[1, 1, 1, 0, 0], [1, 1, 1, 1, 1], [1, 0, 0, 0, 0]], dtype=torch.bool)
    return {"region_features": torch.randn(3, 5, 8), "region_boxes": torch.rand(3, 5, 7), "region_mask": region_mask,
            "source_ids": torch.full((3, 1), START), "source_mask": torch.ones(3, 1, dtype=torch.bool)}


def text_batch() -> dict:
    """Three sources of 4, 6 and 3 tokens, left-padded."""
    source = torch.tensor([[PAD, PAD, START, 5, 6, END], [START, 7, 8, 9, 10, END], [PAD, PAD, PAD, START, 3, END]])
    return {"source_ids": source, "source_mask": source != PAD}


CASES = [("caption", caption_batch, "roberta"), ("caption", caption_batch, "bert"), ("text", text_batch, "roberta"),
         ("text", text_batch, "bert")]


@pytest.mark.parametrize(("task", "batch", "kind"), CASES)
@pytest.mark.parametrize("options", [SearchOptions(max_new_tokens=10, min_new_tokens=3),
                                     SearchOptions(beam_size=3, max_new_tokens=10, min_new_tokens=2),
                                     SearchOptions(beam_size=4, max_new_tokens=8, length_penalty=0.6,
                                                   no_repeat_ngram=2, early_stop=False)])
def test_cached_decoding_gives_the_tokens_of_recomputing_the_whole_sequence(task, batch, kind, options):
    generator = make_generator(task, kind=kind)
    cached = generate(generator, batch(), options, cached=True)
    recomputed = generate(generator, batch(), options, cached=False)
    assert [h.tokens for h in cached] == [h.tokens for h in recomputed]
    assert [h.score for h in cached] == pytest.approx([h.score for h in recomputed], abs=1e-4)
    assert all(len(h.tokens) >= options.min_new_tokens for h in cached)
    assert len({tuple(h.tokens) for h in cached}) > 1  # the rows really differ: a ragged batch, not one row thrice


@pytest.mark.parametrize(("task", "batch", "kind"), CASES[::3])
def test_beam_size_one_is_greedy_search(task, batch, kind):
    generator = make_generator(task, kind=kind, seed=3)
    greedy = generate(generator, batch(), SearchOptions(max_new_tokens=9, length_penalty=0.7))
    decoder = CachedDecoder(generator, batch())
    from unimo_pipe.models.decoding import beam_search

    beam = beam_search(decoder, 3, SearchOptions(max_new_tokens=9, length_penalty=0.7), end_id=END, banned=BANNED)
    assert [h.tokens for h in beam] == [h.tokens for h in greedy]
    assert [h.score for h in beam] == pytest.approx([h.score for h in greedy], abs=1e-5)


def test_a_wider_beam_finds_a_hypothesis_at_least_as_likely_as_greedy():
    generator = make_generator("caption", seed=5)
    options = SearchOptions(max_new_tokens=6, min_new_tokens=6, length_penalty=0.0)  # fixed length: sums compare
    greedy = generate(generator, caption_batch(), options)
    beam = generate(generator, caption_batch(), SearchOptions(beam_size=5, max_new_tokens=6, min_new_tokens=6,
                                                              length_penalty=0.0))
    assert all(b.score >= g.score - 1e-5 for b, g in zip(beam, greedy, strict=True))


def test_search_limits_hold():
    generator = make_generator("text", seed=2)
    for options in (SearchOptions(max_new_tokens=4, min_new_tokens=4),
                    SearchOptions(beam_size=3, max_new_tokens=5, min_new_tokens=5, no_repeat_ngram=1)):
        for hypothesis in generate(generator, text_batch(), options):
            assert len(hypothesis.tokens) == options.max_new_tokens  # no end token before the minimum
            assert not set(hypothesis.tokens) & set(BANNED)
            if options.no_repeat_ngram == 1:
                assert len(set(hypothesis.tokens)) == len(hypothesis.tokens)


def test_repeated_ngram_tokens():
    assert repeated_ngram_tokens([5, 6, 7, 5, 6], 3) == {7}
    assert repeated_ngram_tokens([5, 6, 5], 2) == {6}
    assert repeated_ngram_tokens([5, 6], 3) == set()
    assert repeated_ngram_tokens([5, 6, 5], 1) == {5, 6}


def test_generation_uses_the_seq2seq_pattern_of_pretraining():
    """The one helper: image and source bidirectional, the target causal and seeing the whole source."""
    generator = make_generator("caption")
    batch = caption_batch()
    target = torch.tensor([[7, 8, END]])
    inputs = generator.joint_inputs({k: v[:1] for k, v in batch.items()}, target, torch.ones_like(target).bool())
    image_length = 1 + batch["region_mask"].shape[1]
    expected = seq2seq_attention(torch.tensor([False, True, True, True]), prefix=image_length)
    assert torch.equal(inputs["attention"], expected)
    prefix = image_length + 1
    assert bool(expected[:prefix, :prefix].all()) and not bool(expected[:prefix, prefix:].any())
    assert torch.equal(expected[prefix:, prefix:], torch.ones(3, 3, dtype=torch.bool).tril())
    assert bool(expected[prefix:, :prefix].all())
    # pretraining's form, a fragment inside the text, is the same function
    fragment = torch.tensor([False, True, True, False])
    assert torch.equal(seq2seq_attention(fragment, prefix=2), seq2seq_attention(torch.cat([torch.zeros(2).bool(),
                                                                                           fragment])))


def test_text_positions_skip_padding():
    mask = torch.tensor([[False, False, True, True, True], [True, True, True, False, True]])
    assert text_positions(mask).tolist() == [[0, 0, 0, 1, 2], [0, 1, 2, 2, 3]]


def test_generator_round_trip_and_a_model_not_fine_tuned_for_generation(tmp_path):
    generator = make_generator("caption", seed=4)
    generator.save_pretrained(tmp_path / "gen")
    loaded = Generator.from_pretrained(tmp_path / "gen").eval()
    options = SearchOptions(beam_size=2, max_new_tokens=6)
    assert [h.tokens for h in generate(loaded, caption_batch(), options)] == \
        [h.tokens for h in generate(generator, caption_batch(), options)]
    generator.model.save_pretrained(tmp_path / "plain")
    with pytest.raises(UserError, match="not fine-tuned for generation"):
        Generator.from_pretrained(tmp_path / "plain")


def test_teacher_forced_loss_predicts_each_target_token_from_the_previous_state():
    """The loss the recipe trains is the decoder's: the log-probability of a sequence under teacher forcing
    equals the sum of the decoding steps' log-probabilities of the same tokens."""
    generator = make_generator("text", seed=6)
    batch = text_batch()
    target = torch.tensor([[9, 10, END], [11, END, PAD], [12, 13, 14]])
    target_mask = target != PAD
    with torch.no_grad():
        loss = generator({**batch, "target_ids": target, "target_mask": target_mask})["loss"]
        decoder = RecomputingDecoder(generator, batch)
        logits, total = decoder.start(1), 0.0
        for column in range(target.shape[1]):
            logprobs = torch.log_softmax(logits, -1).gather(1, target[:, column : column + 1]).squeeze(1)
            total += float((logprobs * target_mask[:, column]).sum())
            logits = decoder.step(target[:, column])
    assert float(loss) == pytest.approx(-total / int(target_mask.sum()), rel=1e-4)


def test_search_returns_one_hypothesis_per_row_for_a_batch_of_one():
    generator = make_generator("caption", seed=7)
    one = {k: v[1:2] for k, v in caption_batch().items()}
    for beams in (1, 3):
        hypotheses = search(CachedDecoder(generator, one), 1, SearchOptions(beam_size=beams, max_new_tokens=5),
                            end_id=END, banned=BANNED)
        assert len(hypotheses) == 1 and 1 <= len(hypotheses[0].tokens) <= 5


def test_lengths_past_the_models_positions_are_one_clear_error():
    generator = make_generator("text")
    positions = generator.model.encoder.config.max_position_embeddings - generator.model.position_offset
    generator.check_lengths(positions - generator.setup.max_source_tokens)
    with pytest.raises(UserError, match="positions: lower --max-source-tokens"):
        generator.check_lengths(positions - generator.setup.max_source_tokens + 1)
