"""What a search takes (models/decoding.py), apart from it so that option lists load without torch."""

from __future__ import annotations

from dataclasses import dataclass

from unimo_pipe.pipeline.config import option


@dataclass(frozen=True)
class SearchOptions:
    beam_size: int = 1
    length_penalty: float = 1.0
    min_new_tokens: int = 1
    max_new_tokens: int = 20
    no_repeat_ngram: int = 0  # n > 0: no n-gram appears twice in what is generated
    early_stop: bool = True  # beam search stops once beam_size hypotheses have ended


@dataclass
class DecodingOptions:
    """The search flags of `generate` and of the generation recipes' validation."""

    beam_size: int = option(1, help="beams (1: greedy search)", minimum=1)
    length_penalty: float = option(1.0, help="a hypothesis scores sum(log p) / length ** this (0: no length "
                                   "normalisation; above 1 favours longer ones)")
    min_new_tokens: int = option(1, help="no end token before this many tokens", minimum=0)
    max_new_tokens: int = option(20, help="tokens generated at most", minimum=1)
    no_repeat_ngram: int = option(0, help="no n-gram of this size twice in one output (0: off)", minimum=0)
    early_stop: bool = option(True, help="beam search stops once beam-size hypotheses have ended (off: once no "
                              "live beam can beat them)")

    def search_options(self) -> SearchOptions:
        return SearchOptions(beam_size=self.beam_size, length_penalty=self.length_penalty,
                             min_new_tokens=self.min_new_tokens, max_new_tokens=self.max_new_tokens,
                             no_repeat_ngram=self.no_repeat_ngram, early_stop=self.early_stop)
