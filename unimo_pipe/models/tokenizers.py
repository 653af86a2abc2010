"""Loading transformers tokenizers with one-line errors for the usual mistakes."""

from __future__ import annotations

from unimo_pipe.pipeline.errors import UserError


def load_tokenizer(name: str, *, of: str = "the model"):
    """A tokenizer from a local folder or a cached hub id; `of` names what it belongs to in the error."""
    from transformers import AutoTokenizer

    try:
        return AutoTokenizer.from_pretrained(name)
    except Exception as exc:  # many exception types for a bad path or unknown hub id
        raise UserError(f"cannot load the tokenizer of {of} {name!r} ({type(exc).__name__}): pass a local "
                        "tokenizer or model folder, or a hub id that is already in the local cache") from None
