"""`unimo-pipe inspect SHARDS`: the manifest in a few lines, and some decoded examples of each kind."""

from __future__ import annotations

import json
from pathlib import Path

from unimo_pipe.pipeline.formats import load_manifest


def _short(row: dict) -> str:
    shown = {}
    for key, value in row.items():
        if isinstance(value, list):
            shown[key] = value[:2] + ([f"... {len(value)} in all"] if len(value) > 2 else [])
        else:
            shown[key] = value
    return json.dumps(shown, ensure_ascii=False)


def describe_shards(shards: Path, *, examples: int = 2, verify: bool = False) -> str:
    manifest = load_manifest(shards, verify=verify)
    files = manifest["files"]
    lines = [f"{shards}: schema {manifest['schema_version']}, {len(files)} files"
             + (" (checksums verified)" if verify else ""),
             "records: " + ", ".join(f"{kind} {count:,}" for kind, count in manifest["totals"].items()),
             f"image features: {manifest.get('image_features')}"]
    for kind in ("pair", "text", "image"):
        shown = 0
        for entry in (f for f in files if f["kind"] == kind):
            with (shards / entry["path"]).open(encoding="utf-8") as f:
                for line in f:
                    if shown == examples:
                        break
                    lines.append(f"  {kind}: {_short(json.loads(line))}")
                    shown += 1
    return "\n".join(lines)
