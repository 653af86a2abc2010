"""A small byte-level BPE tokenizer (RoBERTa's special tokens) trained on a few sentences, saved the
transformers way, so tests and demos tokenise through the real AutoTokenizer code. Like RoBERTa's, it
wraps every text in `<s> ... </s>`, so the first position (CMCL's [CLS] state) is `<s>`, never a word."""

from __future__ import annotations

from pathlib import Path

SPECIALS = ["<s>", "<pad>", "</s>", "<unk>", "<mask>"]


def build_tiny_tokenizer(out: Path, texts: list[str], *, vocab_size: int = 600) -> Path:
    from tokenizers import ByteLevelBPETokenizer
    from transformers import PreTrainedTokenizerFast

    bpe = ByteLevelBPETokenizer()
    bpe.train_from_iterator(texts, vocab_size=vocab_size, min_frequency=1, special_tokens=SPECIALS,
                            show_progress=False)
    from tokenizers.processors import RobertaProcessing

    bpe.post_processor = RobertaProcessing(("</s>", bpe.token_to_id("</s>")), ("<s>", bpe.token_to_id("<s>")))
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=bpe, bos_token="<s>", eos_token="</s>", pad_token="<pad>",
                                        unk_token="<unk>", mask_token="<mask>", cls_token="<s>", sep_token="</s>")
    tokenizer.save_pretrained(str(out))
    return out
