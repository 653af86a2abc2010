from __future__ import annotations

import torch

from unimo_pipe.models.objectives import span_mask
from unimo_pipe.models.tiny_tokenizer import build_tiny_tokenizer


def test_tiny_tokenizer_wraps_texts_in_specials_that_span_masking_never_masks(tmp_path):
    from transformers import AutoTokenizer

    build_tiny_tokenizer(tmp_path / "tok", ["a red dog above a blue cat", "a blue cat below a red dog"] * 3)
    tokenizer = AutoTokenizer.from_pretrained(str(tmp_path / "tok"))
    encoded = tokenizer(["a red dog above a blue cat", "a cat"], padding=True, return_tensors="pt")
    ids, mask = encoded["input_ids"], encoded["attention_mask"].bool()
    assert tokenizer.convert_ids_to_tokens(ids[0].tolist())[0] == "<s>"  # CMCL's [CLS] state is not a word's
    assert ids[0, -1] == tokenizer.eos_token_id and ids[1, 0] == tokenizer.cls_token_id == tokenizer.bos_token_id
    specials = torch.tensor([tokenizer.pad_token_id, tokenizer.cls_token_id, tokenizer.sep_token_id])
    special = torch.isin(ids, specials) | ~mask
    for seed in range(50):
        _, labels = span_mask(ids, special, mask_id=tokenizer.mask_token_id, vocab_size=len(tokenizer), rate=0.5,
                              generator=torch.Generator().manual_seed(seed))
        assert not (labels != -100)[special].any()
        assert (labels != -100).any()
