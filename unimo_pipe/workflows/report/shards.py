"""shard: training records per file kind, and the manifest's checks (schema, every file there, checksums,
totals that add up)."""

from __future__ import annotations

from unimo_pipe.pipeline.errors import UserError
from unimo_pipe.pipeline.formats import MANIFEST_FILE, TRAINING_FILES, load_manifest, sha256_of
from unimo_pipe.workflows.report.discover import Found
from unimo_pipe.workflows.report.page import Section, escape, table


def shards_section(found: Found) -> Section:
    section = Section(kind="shards", title="shard: training shards", source=found.path)
    try:
        manifest = load_manifest(found.root)
    except UserError as exc:
        section.notes.append(str(exc))
        return section
    files = manifest.get("files", [])
    rows, problems = [], 0
    for entry in files:
        path = found.root / entry["path"]
        with path.open("rb") as f:
            lines = sum(1 for _ in f)
        same = sha256_of(path) == entry.get("sha256")
        problems += (not same) + (lines != entry.get("records"))
        rows.append((escape(entry["path"]), escape(entry.get("kind")), f"{entry.get('records', 0):,}",
                     _verdict(lines == entry.get("records"), f"{lines:,}"), _verdict(same, "match" if same else
                                                                                    "differs")))
    totals = manifest.get("totals", {})
    added = {kind: sum(e.get("records", 0) for e in files if e.get("kind") == kind) for kind in TRAINING_FILES}
    checks = [("schema version", True, str(manifest.get("schema_version"))),
              ("every listed file present", True, f"{len(files)} files"),
              ("records and checksums as listed", problems == 0, f"{problems} problem(s)" if problems else "all"),
              ("totals add up", added == {k: totals.get(k, 0) for k in TRAINING_FILES}, str(totals))]
    section.body = ("<h3>Records per kind</h3>" + table(("kind", "records"), [(k, f"{v:,}") for k, v in totals.items()])
                    + f"<h3>Checks of {MANIFEST_FILE}</h3>"
                    + table(("check", "result", "detail"), [(escape(name), _verdict(ok, "ok" if ok else "FAILED"),
                                                             escape(detail)) for name, ok, detail in checks], raw=True)
                    + "<h3>Files</h3>" + table(("file", "kind", "records listed", "lines", "sha256"), rows, raw=True)
                    + "<p>Image features: <code>" + escape(manifest.get("image_features")) + "</code></p>")
    if problems:
        section.notes.append(f"{problems} manifest check(s) failed: the shards changed after `shard` wrote them; "
                             "rebuild them")
    return section


def _verdict(ok: bool, text: str) -> str:
    return f'<span class="{"good" if ok else "bad"}">{escape(text)}</span>'
