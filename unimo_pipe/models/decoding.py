"""Decoding for generation models (models/generator.py): greedy and beam search over ragged batches, with
incremental (key/value-cached) steps or, for reference, the whole sequence recomputed every step.

A decoder is what a search drives: `start(repeat)` encodes the batch's prefix (image regions and / or the
source text) and returns the logits of the first new token, each row repeated `repeat` times (the beams);
`step(tokens, order)` appends one token per row, after reordering the rows by `order` (beam search's
survivors), and returns the next logits. CachedDecoder encodes the prefix once and runs each step's one
new token against the cached keys and values; RecomputingDecoder runs the whole sequence again (the
seq2seq pattern over prefix and generated tokens), so both give the same tokens.

Scores are sum(log p) / length ** length_penalty, the length counting the end token where there is one.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

import torch
import torch.nn.functional as F

from unimo_pipe.models.decoding_options import SearchOptions


@dataclass(frozen=True)
class Hypothesis:
    tokens: list[int]  # without the end token
    score: float


class Decoder(Protocol):
    def start(self, repeat: int) -> torch.Tensor: ...

    def step(self, tokens: torch.Tensor, order: torch.Tensor | None = None) -> torch.Tensor: ...


def generate(generator, batch: dict, options: SearchOptions, *, cached: bool = True) -> list[Hypothesis]:
    """The best hypothesis of each example of a collated batch (pipeline/generation_data.py), on the
    generator's device, in eval mode."""
    generator.eval()
    decoder = (CachedDecoder if cached else RecomputingDecoder)(generator, batch)
    return search(decoder, len(batch["source_ids"]), options, end_id=generator.setup.end_id,
                  banned=list(generator.setup.banned_ids))


def search(decoder: Decoder, batch_size: int, options: SearchOptions, *, end_id: int, banned: list[int]
           ) -> list[Hypothesis]:
    """The best hypothesis of each row: greedy for beam size 1, else beam search."""
    run = greedy_search if options.beam_size == 1 else beam_search
    with torch.no_grad():
        return run(decoder, batch_size, options, end_id=end_id, banned=banned)


def greedy_search(decoder: Decoder, batch_size: int, options: SearchOptions, *, end_id: int, banned: list[int]
                  ) -> list[Hypothesis]:
    logits = decoder.start(1)
    generated = torch.zeros((batch_size, 0), dtype=torch.long, device=logits.device)
    total = torch.zeros(batch_size, device=logits.device)
    length = torch.zeros(batch_size, dtype=torch.long, device=logits.device)
    done = torch.zeros(batch_size, dtype=torch.bool, device=logits.device)
    for step in range(options.max_new_tokens):
        best, token = next_token_scores(logits, generated, step, options, end_id=end_id, banned=banned).max(-1)
        token = torch.where(done, end_id, token)  # an ended row repeats the end token, never read
        total += torch.where(done, 0.0, best)
        length += (~done).long()
        generated = torch.cat([generated, token[:, None]], dim=1)
        done |= token == end_id
        if bool(done.all()) or step == options.max_new_tokens - 1:
            break
        logits = decoder.step(token)
    scores = (total / length.clamp(min=1).float() ** options.length_penalty).tolist()
    return [Hypothesis(_until_end(row, end_id), score) for row, score in zip(generated.tolist(), scores, strict=True)]


def beam_search(decoder: Decoder, batch_size: int, options: SearchOptions, *, end_id: int, banned: list[int]
                ) -> list[Hypothesis]:
    """Beam search as transformers' BeamSearchScorer does it: per row, the 2K best continuations of the K
    beams; those that end (ranked within the first K) join the row's K best ended hypotheses, the best K
    others go on. A row is done when K have ended (early stop) or, without early stop, when no live beam
    can beat the worst of them."""
    beams, penalty = options.beam_size, options.length_penalty
    logits = decoder.start(beams)
    device = logits.device
    beam_scores = torch.zeros(batch_size, beams, device=device)
    beam_scores[:, 1:] = -1e9  # at first every beam holds the same prefix: continue from one only
    beam_scores = beam_scores.view(-1)
    generated = torch.zeros((batch_size * beams, 0), dtype=torch.long, device=device)
    ended: list[list[tuple[float, list[int]]]] = [[] for _ in range(batch_size)]
    done = [False] * batch_size
    for step in range(options.max_new_tokens):
        scores = next_token_scores(logits, generated, step, options, end_id=end_id, banned=banned)
        vocab = scores.shape[1]
        totals = (beam_scores[:, None] + scores).view(batch_size, beams * vocab)
        top_totals, top_index = (t.tolist() for t in totals.topk(2 * beams, dim=1))
        history = generated.tolist()
        rows, tokens, kept = [], [], []
        for b in range(batch_size):
            if done[b]:
                rows += [b * beams] * beams
                tokens += [end_id] * beams
                kept += [0.0] * beams
                continue
            chosen = 0
            for rank, (total, index) in enumerate(zip(top_totals[b], top_index[b], strict=True)):
                beam, token = divmod(index, vocab)
                if token == end_id:
                    if rank < beams:
                        _keep_best(ended[b], beams, (total / (step + 1) ** penalty, history[b * beams + beam]))
                    continue
                rows.append(b * beams + beam)
                tokens.append(token)
                kept.append(total)
                chosen += 1
                if chosen == beams:
                    break
            done[b] = _row_done(ended[b], beams, max(kept[-beams:]) / (step + 1) ** penalty, options)
        order = torch.tensor(rows, device=device)
        new_tokens = torch.tensor(tokens, device=device)
        generated = torch.cat([generated[order], new_tokens[:, None]], dim=1)
        beam_scores = torch.tensor(kept, device=device)
        if all(done) or step == options.max_new_tokens - 1:
            break
        logits = decoder.step(new_tokens, order)
    history, live = generated.tolist(), beam_scores.tolist()
    length = generated.shape[1]
    for b in range(batch_size):
        if not done[b]:  # out of steps: the live beams end here, without an end token
            for row in range(b * beams, (b + 1) * beams):
                _keep_best(ended[b], beams, (live[row] / length ** penalty, history[row]))
    return [Hypothesis(_until_end(tokens, end_id), score) for score, tokens in (row[0] for row in ended)]


def next_token_scores(logits: torch.Tensor, generated: torch.Tensor, step: int, options: SearchOptions, *,
                      end_id: int, banned: list[int]) -> torch.Tensor:
    """Log-probabilities (N, V) of the next token: `banned` ids never, the end token not before
    min_new_tokens, and no token that would repeat an n-gram (no_repeat_ngram)."""
    logits = logits.float().clone()
    logits[:, banned] = float("-inf")
    if step < options.min_new_tokens:
        logits[:, end_id] = float("-inf")
    if options.no_repeat_ngram and generated.shape[1] >= options.no_repeat_ngram:
        for row, tokens in enumerate(generated.tolist()):
            repeats = repeated_ngram_tokens(tokens, options.no_repeat_ngram)
            if repeats:
                logits[row, list(repeats)] = float("-inf")
    return F.log_softmax(logits, dim=-1)


def repeated_ngram_tokens(tokens: list[int], n: int) -> set[int]:
    """The tokens that, appended to `tokens`, would complete an n-gram already in them."""
    if len(tokens) < n:
        return set()
    context = tuple(tokens[len(tokens) - n + 1:]) if n > 1 else ()
    return {tokens[i + n - 1] for i in range(len(tokens) - n + 1) if tuple(tokens[i:i + n - 1]) == context}


def _keep_best(ended: list[tuple[float, list[int]]], size: int, hypothesis: tuple[float, list[int]]) -> None:
    ended.append(hypothesis)
    ended.sort(key=lambda h: -h[0])
    del ended[size:]


def _row_done(ended: list[tuple[float, list[int]]], beams: int, best_live: float, options: SearchOptions) -> bool:
    if len(ended) < beams:
        return False
    return options.early_stop or ended[-1][0] >= best_live


def _until_end(tokens: list[int], end_id: int) -> list[int]:
    return tokens[: tokens.index(end_id)] if end_id in tokens else tokens


# -- decoders of a generator (models/generator.py) on one collated batch --


class CachedDecoder:
    """The prefix encoded once into a transformers DynamicCache; each step runs only the new tokens."""

    def __init__(self, generator, batch: dict):
        self.generator, self.batch = generator, batch

    def start(self, repeat: int) -> torch.Tensor:
        from transformers import DynamicCache

        self.cache = DynamicCache()
        out = self.generator.model(**self.generator.prefix_inputs(self.batch), cache=self.cache)
        self.keep = self.generator.prefix_keep(self.batch)
        self.position = self.batch["source_mask"].long().sum(1)
        logits = self.generator.logits(out["hidden"][:, -1])
        if repeat > 1:
            self.cache.batch_repeat_interleave(repeat)
            self.keep = self.keep.repeat_interleave(repeat, dim=0)
            self.position = self.position.repeat_interleave(repeat, dim=0)
            logits = logits.repeat_interleave(repeat, dim=0)
        return logits

    def step(self, tokens: torch.Tensor, order: torch.Tensor | None = None) -> torch.Tensor:
        if order is not None:
            self.cache.reorder_cache(order)
            self.keep, self.position = self.keep[order], self.position[order]
        self.keep = torch.cat([self.keep, torch.ones_like(self.keep[:, :1])], dim=1)
        states = self.generator.model.extend(tokens[:, None], self.position[:, None], self.keep, self.cache)
        self.position = self.position + 1
        return self.generator.logits(states[:, -1])


class RecomputingDecoder:
    """Every step encodes the prefix and all generated tokens again: the reference the cache must match."""

    def __init__(self, generator, batch: dict):
        self.generator, self.batch = generator, batch

    def start(self, repeat: int) -> torch.Tensor:
        self.batch = {k: v.repeat_interleave(repeat, dim=0) if isinstance(v, torch.Tensor) else v
                      for k, v in self.batch.items()}
        self.generated = self.batch["source_ids"][:, :0]
        out = self.generator.model(**self.generator.prefix_inputs(self.batch))
        return self.generator.logits(out["hidden"][:, -1])

    def step(self, tokens: torch.Tensor, order: torch.Tensor | None = None) -> torch.Tensor:
        if order is not None:
            self.batch = {k: v[order] if isinstance(v, torch.Tensor) else v for k, v in self.batch.items()}
            self.generated = self.generated[order]
        self.generated = torch.cat([self.generated, tokens[:, None]], dim=1)
        inputs = self.generator.joint_inputs(self.batch, self.generated, torch.ones_like(self.generated,
                                                                                         dtype=torch.bool))
        return self.generator.logits(self.generator.model(**inputs)["hidden"][:, -1])

