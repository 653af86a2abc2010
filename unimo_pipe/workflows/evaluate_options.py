"""Options of `unimo-pipe evaluate` (kept apart from the recipe so the CLI can list them without torch)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from unimo_pipe.pipeline.config import option


@dataclass
class EvaluateOptions:
    model: Path | None = option(None, help="a saved model folder (`pretrain` writes OUT/model)", required=True,
                                must_exist=True, metavar="DIR")
    shards: Path | None = option(None, help="shards holding the test pairs (`unimo-pipe shard` --out)",
                                 required=True, must_exist=True, metavar="DIR")
    tokenizer: str = option("", help="the tokenizer the model was trained with: folder or cached hub id",
                            required=True)
    out: Path | None = option(None, help="write the recalls to this JSON file too", metavar="FILE")
    pairs: int = option(0, help="evaluate the first N pairs (0: all)", minimum=0)
    batch_size: int = option(64, help="pairs encoded at once", minimum=1)
    max_text_tokens: int = option(64, help="text length limit", minimum=8)
    max_regions: int = option(100, help="regions per image", minimum=1)
