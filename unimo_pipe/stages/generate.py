"""`generate`: a fine-tuned generator's output, sharded and resumable like every stage: captions of images
(finetune-caption's OUT/model) or targets of source texts (finetune-seq2seq's).

Captions: of the images --captions names (any caption format; with --split, that split's only), or of
every image of --features. Text: of every source of --sources (JSONL {"id"?, "source"} or a TSV with a
source column); a source longer than the model's --max-source-tokens is cut and counted
(sources_truncated). Decoding is greedy or beam search (--beam-size, --length-penalty, --min/--max-new-
tokens, --no-repeat-ngram, --early-stop), batched, incremental: each batch's prefix (regions or source) is
encoded once and every step runs only the new token against the cached keys and values (--no-cache
recomputes the whole sequence every step instead: the same output, slower). Per shard: generations.jsonl,
one row {"id", "image" | "source", "text", "score"} per input (score: sum of log-probabilities / length **
length penalty). An image the captions name that has no features fails with image_not_in_features.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from unimo_pipe.models.decoding_options import DecodingOptions
from unimo_pipe.pipeline.config import option
from unimo_pipe.pipeline.errors import RecordError, UserError
from unimo_pipe.pipeline.formats import GENERATIONS_FILE, ImageKeys
from unimo_pipe.pipeline.stage import CommonOptions, Record, RunContext, ShardContext, Stage

DEVICES = ("auto", "cpu", "cuda")


@dataclass
class GenerateOptions(DecodingOptions, CommonOptions):
    model: Path | None = option(None, help="a fine-tuned generator (finetune-caption's OUT/model)", required=True,
                                must_exist=True, metavar="DIR")
    tokenizer: str = option("", help="the tokenizer the model was trained with", required=True)
    features: Path | None = option(None, help="region features of the images to caption (extract-regions or "
                                   "import-features output)", must_exist=True, metavar="DIR")
    captions: Path | None = option(None, help="caption only the images this caption file names (any caption "
                                   "format; default: every image of --features)", must_exist=True, metavar="FILE")
    split: str = option("", help="with --captions: only that split's images (e.g. test)")
    sources: Path | None = option(None, help='source texts, for a text generator: JSONL {"id"?, "source"} or a TSV '
                                  "with a header naming a source column", must_exist=True, metavar="FILE")
    max_regions: int = option(100, help="regions per image", minimum=1)
    batch_size: int = option(32, help="images decoded at once", minimum=1, affects_output=False)
    device: str = option("auto", help="where to decode", choices=DEVICES, affects_output=False)
    cache: bool = option(True, help="incremental decoding with cached keys and values (off: recompute every "
                         "step; the same output, slower)", affects_output=False)
    shard_size: int = option(5_000, help="images per shard", minimum=1)


class Generate(Stage):
    name = "generate"
    summary = "captions of images or targets of source texts by a fine-tuned generator (greedy or beam search, " \
              "cached decoding), into JSONL"
    options_class = GenerateOptions

    def check(self, options: GenerateOptions) -> list[str]:
        if (options.features is None) == (options.sources is None):
            return ["pass --features (and optionally --captions) to caption images, or --sources to generate "
                    "from texts"]
        return []

    def iter_records(self, options: GenerateOptions) -> Iterator[Record]:
        from unimo_pipe.pipeline.feature_store import open_feature_dir

        if options.sources is not None:
            yield from _sources(options.sources)
            return

        keys = open_feature_dir(options.features).name2nbb
        if options.captions is None:
            for key in sorted(keys):
                yield Record(key, {"image": key})
            return
        yield from _named_images(options.captions, ImageKeys(keys, store=str(options.features)), options.split)

    def open(self, options: GenerateOptions, run: RunContext) -> None:
        import torch

        from unimo_pipe.models.generator import Generator
        from unimo_pipe.models.tokenizers import load_tokenizer
        from unimo_pipe.pipeline.generation_data import GenerationCollator

        self.device = torch.device(("cuda" if torch.cuda.is_available() else "cpu") if options.device == "auto"
                                   else options.device)
        self.generator = Generator.from_pretrained(options.model).to(self.device).eval()
        if self.generator.with_image != (options.sources is None):
            wanted = "--sources" if not self.generator.with_image else "--features"
            raise UserError(f"{options.model} is a {self.generator.setup.task} generator: give it {wanted}")
        self.generator.check_lengths(options.max_new_tokens)
        self.tokenizer = load_tokenizer(options.tokenizer, of="--tokenizer")
        if len(self.tokenizer) > self.generator.model.encoder.config.vocab_size:
            raise UserError(f"--tokenizer {options.tokenizer} has {len(self.tokenizer)} tokens but {options.model} "
                            "knows fewer: pass the tokenizer the model was fine-tuned with")
        self.collator = GenerationCollator(self.tokenizer, self.generator.setup)
        self.truncated = 0

    def process_shard(self, records: list[Record], ctx: ShardContext) -> None:
        from unimo_pipe.pipeline.generation_data import CaptionDataset

        o = ctx.options
        if o.sources is not None:
            dataset = [{"index": i, "source": r.value["source"]} for i, r in enumerate(records)]
        else:
            dataset = CaptionDataset([r.value["image"] for r in records], None, o.features, max_regions=o.max_regions)
        texts: dict[int, tuple[str, float]] = {}
        failed: dict[int, RecordError] = {}
        for start in range(0, len(records), o.batch_size):
            items = []
            for i in range(start, min(start + o.batch_size, len(records))):
                try:
                    items.append(dataset[i])
                except UserError as exc:  # one image's damaged features
                    failed[i] = RecordError("damaged_features", str(exc))
            if items:
                texts.update(self._caption(items, o))
        if o.sources is not None:
            ctx.stats.count("sources_truncated", self.truncated)
        self.truncated = 0
        with ctx.path(GENERATIONS_FILE).open("w", encoding="utf-8") as f:
            for i, record in enumerate(records):
                with ctx.record(record.key):
                    if i in failed:
                        raise failed[i]
                    text, score = texts[i]
                    f.write(json.dumps({"id": record.key, **record.value, "text": text,
                                        "score": round(score, 6)}) + "\n")

    def _caption(self, items: list[dict], options: GenerateOptions) -> dict[int, tuple[str, float]]:
        import torch

        from unimo_pipe.models.decoding import generate
        from unimo_pipe.pipeline.training_data import batch_to_device

        collated = self.collator(items)
        self.truncated += collated["truncated_sources"]
        batch = batch_to_device(collated, self.device)
        with torch.autocast(self.device.type, dtype=torch.bfloat16, enabled=self.device.type == "cuda"):
            hypotheses = generate(self.generator, batch, options.search_options(), cached=options.cache)
        return {item["index"]: (self.tokenizer.decode(h.tokens, skip_special_tokens=True).strip(), h.score)
                for item, h in zip(items, hypotheses, strict=True)}

    def models_used(self, options: GenerateOptions) -> list[str]:
        return [f"generator {options.model}: the weights finetune-caption or finetune-seq2seq trained"]


def _named_images(captions: Path, keys: ImageKeys, split: str) -> Iterator[Record]:
    """One record per distinct image the caption file names (in file order), a failed one per image it
    names that has no features."""
    from unimo_pipe.pipeline.readers import iter_captions

    seen: set[str] = set()
    for record in iter_captions(captions):
        if record.error:
            yield record
            continue
        if split and record.value.get("split") not in (None, split):
            continue
        name = record.value.get("image")
        try:
            key = keys.resolve(name)
        except RecordError as exc:
            if name not in seen:
                seen.add(name)
                yield Record(f"image {name}", error=exc.reason, detail=exc.detail)
            continue
        if key not in seen:
            seen.add(key)
            yield Record(key, {"image": key})


def _sources(path: Path) -> Iterator[Record]:
    """One record per source text, a failed one per line without a usable source."""
    from unimo_pipe.pipeline.labelled_data import read_rows

    for number, row in enumerate(read_rows(path), start=1):
        if isinstance(row, str):
            yield Record(f"{path.name}:{number}", error=row)
        elif not (isinstance(row.get("source"), str) and row["source"].strip()):
            yield Record(f"{path.name}:{number}", error="missing_source")
        else:
            yield Record(str(row.get("id", number)), {"source": row["source"].strip()})
