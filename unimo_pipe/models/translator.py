"""Translation engines behind one interface: transformers seq2seq models, or CTranslate2 conversions of them.

`translate(texts, decoding, outputs)` returns `outputs` translations per text. Inputs are sorted by length
and cut into batches by a token budget (padding stays small; no per-sentence Python in the hot path);
on GPU the engines run in bf16 (where supported) under `torch.inference_mode`, and `precision="bfloat16"`
asks for it on CPU too. Each model's position limits hold: sources longer than its encoder takes are cut
(and counted), generation stops within its decoder's positions. A batch whose translation raises (CUDA out
of memory, a model error) is split in halves and tried again, down to single texts; the texts that still
fail get no translations and are reported.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from unimo_pipe.models.tokenizers import load_tokenizer
from unimo_pipe.pipeline.errors import UserError
from unimo_pipe.pipeline.jsonl import read_json, write_json_atomic
from unimo_pipe.pipeline.registry import Registry

ENGINES = Registry("translation engine")
DEFAULT_SOURCE_TOKENS = 512  # when neither the model nor its tokenizer states a limit
POSITION_LIMITS_FILE = "position_limits.json"  # in a CTranslate2 folder: the limits of the model it came from
PRECISIONS = ("auto", "float32", "bfloat16")  # auto: bfloat16 on GPU, else the model's own
_UNSET_LIMIT = 1_000_000  # tokenizers without a stated limit report a huge sentinel (int(1e30))


@dataclass(frozen=True)
class Decoding:
    method: str = "beam"  # "beam" or "sample" (noised beam is beam plus noise, applied by the caller)
    beam_size: int = 5
    top_k: int = 10
    top_p: float = 1.0
    temperature: float = 1.0
    max_new_tokens: int = 128
    seed: int = 0


@dataclass
class TranslationReport:
    """What `translate` calls met, added up over the calls it is passed to."""

    truncated: set[str] = field(default_factory=set)  # texts cut to the model's input limit
    failures: dict[str, str] = field(default_factory=dict)  # text -> why it has no translation

    @property
    def sources_truncated(self) -> int:
        """Distinct texts cut, however often they were translated."""
        return len(self.truncated)


@dataclass(frozen=True)
class PositionLimits:
    source_tokens: int  # the encoder's input, special tokens included
    target_tokens: int | None  # the decoder's positions; None: unknown, only the decoding settings cap output


def model_positions(config) -> tuple[int | None, int | None]:
    """The encoder's and the decoder's positions from a transformers config (None where it does not say)."""
    shared = _stated(getattr(config, "max_position_embeddings", None))
    source = _stated(getattr(config, "max_source_positions", None)) or shared
    target = _stated(getattr(config, "max_target_positions", None)) or shared
    return source, target


def position_limits(tokenizer, source: int | None, target: int | None) -> PositionLimits:
    """The model's limits, the source also within what its tokenizer was made for."""
    stated = [n for n in (source, _stated(getattr(tokenizer, "model_max_length", None))) if n]
    return PositionLimits(min(stated, default=DEFAULT_SOURCE_TOKENS), target)


def _stated(value) -> int | None:
    return value if isinstance(value, int) and 0 < value < _UNSET_LIMIT else None


def encode_sources(tokenizer, texts: list[str], max_tokens: int) -> tuple[list[list[int]], list[str]]:
    """Token ids of each text, cut to `max_tokens` by the tokenizer (so the end token stays), and the texts
    that were cut."""
    if not texts:
        return [], []
    # One token of room shows which texts are too long without tokenizing them untruncated.
    encoded = tokenizer(texts, truncation=True, max_length=max_tokens + 1)["input_ids"]
    too_long = [i for i, ids in enumerate(encoded) if len(ids) > max_tokens]
    if too_long:
        cut = tokenizer([texts[i] for i in too_long], truncation=True, max_length=max_tokens)["input_ids"]
        for i, ids in zip(too_long, cut, strict=True):
            encoded[i] = ids
    return encoded, [texts[i] for i in too_long]


def _encoded_sources(tokenizer, texts: list[str], limits: PositionLimits, report: TranslationReport | None
                     ) -> list[list[int]]:
    """Sources within the model's input limit; the texts that were cut go into `report`."""
    encoded, truncated = encode_sources(tokenizer, texts, limits.source_tokens)
    if report is not None:
        report.truncated.update(truncated)
    return encoded


def translate_in_halves(batch: list[int], translate: Callable[[list[int]], list[list[str]]]
                        ) -> tuple[dict[int, list[str]], dict[int, str]]:
    """`translate` over the indices of `batch`: a part that raises is split in halves and tried again, so a
    bad text (or a batch too big for memory) costs only itself. Returns translations and failures by index."""
    pending, translated, failed = [batch] if batch else [], {}, {}
    while pending:
        part = pending.pop()
        error = _try_part(part, translate, translated)
        if error is None:
            continue
        if len(part) == 1:
            failed[part[0]] = error
        else:
            half = len(part) // 2
            pending += [part[half:], part[:half]]
    return translated, failed


def _try_part(part: list[int], translate, translated: dict[int, list[str]]) -> str | None:
    """Why `part` failed, or None. The exception goes when this returns, so the memory its frames hold (a CUDA
    out of memory's tensors) is free before the halves run."""
    try:
        outputs = translate(part)
    except Exception as exc:  # any failure of generation is the batch's, not the run's
        return f"{type(exc).__name__}: {exc}"
    translated.update(zip(part, outputs, strict=True))
    return None


def _record_failures(texts: list[str], failed: dict[int, str], report: TranslationReport | None) -> None:
    if report is not None:
        report.failures.update((texts[i], why) for i, why in failed.items())


def length_batches(lengths: list[int], max_batch_tokens: int, max_batch_size: int = 512) -> list[list[int]]:
    """Indices grouped into batches of similar length whose padded size stays within the token budget."""
    order = sorted(range(len(lengths)), key=lambda i: lengths[i])
    batches, current, longest = [], [], 0
    for i in order:
        longest_if_added = max(longest, lengths[i])
        if current and (longest_if_added * (len(current) + 1) > max_batch_tokens or len(current) >= max_batch_size):
            batches.append(current)
            current, longest_if_added = [], lengths[i]
        current.append(i)
        longest = longest_if_added
    if current:
        batches.append(current)
    return batches


@ENGINES.register("transformers")
class TransformersEngine:
    def __init__(self, *, model: str, device: str = "cpu", max_batch_tokens: int = 8192, precision: str = "auto"):
        from transformers import AutoConfig, AutoModelForSeq2SeqLM

        self.name = model
        self.tokenizer = load_tokenizer(model, of="translation model")
        try:
            config = AutoConfig.from_pretrained(model)
        except Exception as exc:
            raise UserError(f"cannot load translation model {model!r} ({type(exc).__name__})") from None
        if not getattr(config, "is_encoder_decoder", False):
            raise UserError(f"{model!r} is a {config.model_type} model, not a translation (encoder-decoder) model")
        dtype = _torch_dtype(precision, device)
        self.model = AutoModelForSeq2SeqLM.from_pretrained(model, dtype=dtype).to(device).eval()
        self.limits = position_limits(self.tokenizer, *model_positions(config))
        self.device = device
        self.max_batch_tokens = max_batch_tokens

    def translate(self, texts: list[str], decoding: Decoding, outputs: int = 1, *,
                  report: TranslationReport | None = None) -> list[list[str]]:
        """`outputs` translations per text (none for a text that failed); what was cut or failed is added to
        `report`."""
        encoded = _encoded_sources(self.tokenizer, texts, self.limits, report)
        results: list[list[str]] = [[] for _ in texts]
        budget = max(1, self.max_batch_tokens // max(outputs, 1))
        for batch in length_batches([len(e) for e in encoded], budget):
            translated, failed = translate_in_halves(
                batch, lambda part: self._generate([encoded[i] for i in part], decoding, outputs))
            for i, translations in translated.items():
                results[i] = translations
            _record_failures(texts, failed, report)
        return results

    def _generate(self, sources: list[list[int]], decoding: Decoding, outputs: int) -> list[list[str]]:
        import torch

        inputs = self.tokenizer.pad({"input_ids": sources}, return_tensors="pt").to(self.device)
        torch.manual_seed(decoding.seed)
        new_tokens = output_budget(decoding, max(map(len, sources)), self.limits.target_tokens)
        with torch.inference_mode():
            generated = self.model.generate(**inputs, **_generate_args(decoding, outputs, new_tokens))
        texts_out = self.tokenizer.batch_decode(generated, skip_special_tokens=True)
        return [texts_out[k * outputs : (k + 1) * outputs] for k in range(len(sources))]


def _check_precision(precision: str) -> None:
    if precision not in PRECISIONS:
        raise UserError(f"translation precision {precision!r} is not one of {', '.join(PRECISIONS)}")


def _torch_dtype(precision: str, device: str):
    """The dtype to load a transformers model in; None: as its checkpoint stores it."""
    import torch

    _check_precision(precision)
    if precision == "auto":
        return torch.bfloat16 if device.startswith("cuda") and torch.cuda.is_bf16_supported() else None
    return {"float32": torch.float32, "bfloat16": torch.bfloat16}[precision]


def _ct2_compute_type(precision: str, device: str) -> str:
    _check_precision(precision)
    if precision == "auto":
        return "bfloat16" if device.startswith("cuda") else "default"
    return precision


def output_budget(decoding: Decoding, source_tokens: int, target_tokens: int | None = None) -> int:
    """Generated tokens allowed: longer outputs would fail the length-ratio filter anyway, and none may need a
    decoder position the model lacks (the start token takes position 0, the last new token is never fed)."""
    return min(decoding.max_new_tokens, 2 * source_tokens + 8, target_tokens or decoding.max_new_tokens)


def _generate_args(decoding: Decoding, outputs: int, new_tokens: int) -> dict:
    args = {"max_new_tokens": new_tokens, "num_return_sequences": outputs}
    if decoding.method == "sample":
        args.update(do_sample=True, top_k=decoding.top_k, top_p=decoding.top_p, temperature=decoding.temperature,
                    num_beams=1)
    else:
        args.update(do_sample=False, num_beams=max(decoding.beam_size, outputs))
    return args


@ENGINES.register("ctranslate2")
class CTranslate2Engine:
    """A model converted with `unimo-pipe convert-translator`; the folder also holds the tokenizer files."""

    def __init__(self, *, model: str, device: str = "cpu", max_batch_tokens: int = 8192, precision: str = "auto"):
        import ctranslate2

        path = Path(model)
        if not (path / "model.bin").is_file():
            raise UserError(f"{model} is not a CTranslate2 model folder (no model.bin): convert it with "
                            "`unimo-pipe convert-translator MODEL OUT`")
        self.name = model
        self.tokenizer = load_tokenizer(model, of="translation model")
        compute_type = _ct2_compute_type(precision, device)
        try:
            self.translator = ctranslate2.Translator(str(path), device=device.split(":")[0],
                                                     compute_type=compute_type)
        except ValueError as exc:  # a compute type this device lacks
            raise UserError(f"CTranslate2 cannot run {model} in {compute_type} on {device}: {exc}") from None
        self.limits = position_limits(self.tokenizer, *_converted_positions(path))
        self.max_batch_tokens = max_batch_tokens

    def translate(self, texts: list[str], decoding: Decoding, outputs: int = 1, *,
                  report: TranslationReport | None = None) -> list[list[str]]:
        """`outputs` translations per text (none for a text that failed); what was cut or failed is added to
        `report`."""
        encoded = _encoded_sources(self.tokenizer, texts, self.limits, report)
        tokens = [self.tokenizer.convert_ids_to_tokens(ids) for ids in encoded]
        translated, failed = translate_in_halves(
            list(range(len(texts))), lambda part: self._translate_tokens([tokens[i] for i in part], decoding, outputs))
        _record_failures(texts, failed, report)
        return [translated.get(i, []) for i in range(len(texts))]

    def _translate_tokens(self, tokens: list[list[str]], decoding: Decoding, outputs: int) -> list[list[str]]:
        sampling = decoding.method == "sample"
        results = self.translator.translate_batch(
            tokens, max_batch_size=self.max_batch_tokens, batch_type="tokens",
            beam_size=1 if sampling else max(decoding.beam_size, outputs), num_hypotheses=outputs,
            sampling_topk=decoding.top_k if sampling else 1, sampling_topp=decoding.top_p if sampling else 1.0,
            sampling_temperature=decoding.temperature,
            # transformers spends the last position on the forced end-of-sentence (Marian, FSMT): match it
            max_decoding_length=output_budget(decoding, max((len(t) for t in tokens), default=1),
                                              self.limits.target_tokens) - 1,
            return_scores=False)
        decode = self.tokenizer.convert_tokens_to_ids
        return [[self.tokenizer.decode(decode(h), skip_special_tokens=True) for h in r.hypotheses] for r in results]


def _converted_positions(folder: Path) -> tuple[int | None, int | None]:
    """The positions recorded at conversion; folders converted before they were recorded have none."""
    try:
        limits = read_json(folder / POSITION_LIMITS_FILE)
    except (OSError, ValueError):
        return None, None
    if not isinstance(limits, dict):
        return None, None
    return _stated(limits.get("source_tokens")), _stated(limits.get("target_tokens"))


def build_engine(engine: str, model: str, *, device: str, max_batch_tokens: int = 8192, precision: str = "auto"):
    """A registered translation engine; `precision` is one of PRECISIONS."""
    return ENGINES.get(engine)(model=model, device=device, max_batch_tokens=max_batch_tokens, precision=precision)


def convert_for_ctranslate2(model: str, out: Path, *, quantization: str | None = None) -> Path:
    """Convert a transformers translation model for the CTranslate2 engine (tokenizer files copied along)."""
    from ctranslate2.converters import TransformersConverter
    from transformers import AutoConfig

    tokenizer = load_tokenizer(model, of="translation model")
    try:
        TransformersConverter(model).convert(str(out), quantization=quantization, force=True)
        source, target = model_positions(AutoConfig.from_pretrained(model))
    except Exception as exc:
        raise UserError(f"cannot convert {model!r} for CTranslate2 ({type(exc).__name__}: {exc})") from None
    tokenizer.save_pretrained(str(out))
    # CTranslate2's own config does not keep them, and its engine needs them to stay within the model.
    write_json_atomic(out / POSITION_LIMITS_FILE, {"source_tokens": source, "target_tokens": target})
    return out

