"""Tiny Marian translation models with random weights and a SentencePiece vocabulary trained on the spot.

They load through the real transformers code (MarianTokenizer / MarianMTModel from a folder) and convert
for CTranslate2, so every code path runs; their translations mean nothing. A TINY_RANDOM_MODEL file in
the folder lets runs say so.
"""

from __future__ import annotations

import json
import tempfile
from pathlib import Path

TINY_MARKER = "TINY_RANDOM_MODEL"


def build_tiny_marian(out: Path, *, source: str, target: str, texts: list[str], seed: int = 0,
                      vocab_size: int = 400, max_positions: int = 256) -> Path:
    """A tiny Marian in `out`; `max_positions` bounds both its source and its generated tokens."""
    import sentencepiece as spm
    import torch
    from transformers import MarianConfig, MarianMTModel, MarianTokenizer

    out.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory() as tmp:
        corpus = Path(tmp) / "corpus.txt"
        corpus.write_text("\n".join(texts), encoding="utf-8")
        spm.SentencePieceTrainer.train(input=str(corpus), model_prefix=str(Path(tmp) / "sp"), vocab_size=vocab_size,
                                       character_coverage=1.0, model_type="unigram", minloglevel=2,
                                       hard_vocab_limit=False)
        model_bytes = (Path(tmp) / "sp.model").read_bytes()
    for name in ("source.spm", "target.spm"):
        (out / name).write_bytes(model_bytes)
    processor = spm.SentencePieceProcessor(model_proto=model_bytes)
    vocab = {processor.id_to_piece(i): i for i in range(processor.get_piece_size())}
    for special in ("</s>", "<unk>", "<pad>"):
        vocab.setdefault(special, len(vocab))
    (out / "vocab.json").write_text(json.dumps(vocab), encoding="utf-8")
    tokenizer = MarianTokenizer(str(out / "source.spm"), str(out / "target.spm"), str(out / "vocab.json"),
                                source_lang=source, target_lang=target)
    tokenizer.save_pretrained(str(out))
    config = MarianConfig(vocab_size=len(vocab), d_model=32, encoder_layers=1, decoder_layers=1,
                          encoder_attention_heads=2, decoder_attention_heads=2, encoder_ffn_dim=64,
                          decoder_ffn_dim=64, max_position_embeddings=max_positions, pad_token_id=vocab["<pad>"],
                          eos_token_id=vocab["</s>"], decoder_start_token_id=vocab["<pad>"],
                          forced_eos_token_id=vocab["</s>"])
    state = torch.random.get_rng_state()
    torch.manual_seed(seed)
    try:
        MarianMTModel(config).save_pretrained(str(out))
    finally:
        torch.random.set_rng_state(state)
    (out / TINY_MARKER).write_text("random weights: for tests and demos only\n")
    return out
