"""`unimo-pipe inspect SHARDS`: the manifest in a few lines, and some decoded examples of each kind."""

from __future__ import annotations

import json
from pathlib import Path

from unimo_pipe.pipeline.errors import UserError
from unimo_pipe.pipeline.feature_store import RegionFeatureReader, open_feature_dir
from unimo_pipe.pipeline.formats import load_manifest

SHOWN_OBJECTS = 5


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
    stores: dict[str, RegionFeatureReader | None] = {}
    for kind in ("pair", "text", "image"):
        shown = 0
        for entry in (f for f in files if f["kind"] == kind):
            with (shards / entry["path"]).open(encoding="utf-8") as f:
                for line in f:
                    if shown == examples:
                        break
                    row = json.loads(line)
                    lines.append(f"  {kind}: {_short(row)}{_objects_note(row, stores) if kind == 'image' else ''}")
                    shown += 1
    return "\n".join(lines)


def _objects_note(row: dict, stores: dict[str, RegionFeatureReader | None]) -> str:
    """The most confident detections of an image row, by their Visual Genome names ("" when not at hand)."""
    source = str(row.get("source", ""))
    if source not in stores:
        try:
            stores[source] = open_feature_dir(Path(source))
        except (UserError, OSError):
            stores[source] = None
    store = stores[source]
    if store is None or row.get("id") not in store:
        return ""
    dump = store.get_dump(row["id"], names=True)
    if "object_names" not in dump:
        return ""
    order = dump["conf"].argsort()[::-1] if "conf" in dump else range(len(dump["object_names"]))
    attributes = dump.get("attr_names")
    shown = [f"{attributes[i] + ' ' if attributes is not None else ''}{dump['object_names'][i]}"
             for i in list(order)[:SHOWN_OBJECTS]]
    return f"  objects: {', '.join(shown)}"
