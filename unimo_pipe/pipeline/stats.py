"""Per-shard accounting: every record ends up ok, failed (with a reason) or skipped (with a reason)."""

from __future__ import annotations

import functools
import importlib.metadata
import platform
from collections import Counter
from dataclasses import dataclass, field
from typing import Any

MAX_FAILURE_EXAMPLES = 20
_VERSIONED_PACKAGES = (
    "unimo-pipe", "numpy", "lmdb", "msgpack", "h5py", "torch", "torchvision", "transformers",
    "spacy", "sentence-transformers", "faiss-cpu", "ctranslate2",
)


@dataclass
class ShardStats:
    shard: int
    records: int = 0
    ok: int = 0
    failed: int = 0
    skipped: int = 0
    failure_reasons: Counter = field(default_factory=Counter)
    skip_reasons: Counter = field(default_factory=Counter)
    failure_examples: list[dict[str, str]] = field(default_factory=list)
    counters: Counter = field(default_factory=Counter)

    def succeed(self, n: int = 1) -> None:
        self.ok += n

    def fail(self, key: str, reason: str, detail: str = "") -> None:
        self.failed += 1
        self.failure_reasons[reason] += 1
        if len(self.failure_examples) < MAX_FAILURE_EXAMPLES:
            self.failure_examples.append({"record": key, "reason": reason, "detail": detail[:300]})

    def skip(self, reason: str) -> None:
        """A record deliberately not written (a duplicate, say): counted, not an error."""
        self.skipped += 1
        self.skip_reasons[reason] += 1

    def count(self, name: str, n: int = 1) -> None:
        """Any other event worth reporting (captions truncated, say)."""
        self.counters[name] += n

    @property
    def accounted(self) -> int:
        return self.ok + self.failed + self.skipped

    def to_dict(self, *, elapsed_s: float, config_hash: str) -> dict[str, Any]:
        return {
            "shard": self.shard,
            "records": self.records,
            "ok": self.ok,
            "failed": self.failed,
            "skipped": self.skipped,
            "failure_reasons": dict(self.failure_reasons),
            "skip_reasons": dict(self.skip_reasons),
            "failure_examples": self.failure_examples,
            "counters": dict(self.counters),
            "elapsed_s": round(elapsed_s, 4),
            "records_per_s": round(self.records / elapsed_s, 2) if elapsed_s > 0 else None,
            "config_hash": config_hash,
            "versions": package_versions(),
        }


@dataclass
class InputProblems:
    """Bad rows of a run's side inputs (an upstream output or a file of options, not the records being
    processed): counted by reason, with their places ("FILE:LINE"); kept in OUT/summary.json."""

    count: int = 0
    reasons: Counter = field(default_factory=Counter)
    examples: list[dict[str, str]] = field(default_factory=list)

    def add(self, where: str, reason: str, detail: str = "") -> None:
        self.count += 1
        self.reasons[reason] += 1
        if len(self.examples) < MAX_FAILURE_EXAMPLES:
            self.examples.append({"where": where, "reason": reason, "detail": detail[:300]})

    def to_dict(self) -> dict[str, Any]:
        return {"count": self.count, "reasons": dict(self.reasons), "examples": self.examples}


def merge_stats(shards: list[dict[str, Any]]) -> dict[str, Any]:
    """Totals over committed shards' stats.json contents."""
    totals: dict[str, Any] = {"records": 0, "ok": 0, "failed": 0, "skipped": 0, "elapsed_s": 0.0}
    reasons: Counter = Counter()
    skips: Counter = Counter()
    counters: Counter = Counter()
    for shard in shards:
        for key in ("records", "ok", "failed", "skipped", "elapsed_s"):
            totals[key] += shard.get(key, 0)
        reasons.update(shard.get("failure_reasons", {}))
        skips.update(shard.get("skip_reasons", {}))
        counters.update(shard.get("counters", {}))
    totals["elapsed_s"] = round(totals["elapsed_s"], 4)
    totals["records_per_s"] = round(totals["records"] / totals["elapsed_s"], 2) if totals["elapsed_s"] else None
    totals.update(failure_reasons=dict(reasons), skip_reasons=dict(skips), counters=dict(counters))
    return totals


@functools.cache
def package_versions() -> dict[str, str]:
    versions = {"python": platform.python_version()}
    for name in _VERSIONED_PACKAGES:
        try:
            versions[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            continue
    return versions
