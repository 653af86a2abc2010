"""`unimo-pipe evaluate`: image-text retrieval R@1/5/10 of a saved model on shards' pairs.

Images and captions are encoded separately by the same transformer ([IMG] and first-token states, as
CMCL trains them) and ranked by cosine. Text->image (IR): does a caption find its own image in the top
k? Image->text (TR): does an image find any of its captions? An image with several captions counts once.
"""

from __future__ import annotations

from typing import Any

import torch

from unimo_pipe.workflows.evaluate_options import EvaluateOptions


def retrieval_recall(images: torch.Tensor, texts: torch.Tensor, image_keys: list[str], *,
                     prefix: str = "") -> dict[str, float]:
    """R@1/5/10 for text->image (the caption's own image) and image->text (any of its captions).
    `images` and `texts` are row-aligned with `image_keys` (one row per pair)."""
    position = {key: i for i, key in reversed(list(enumerate(image_keys)))}  # first row of each image
    unique = list(dict.fromkeys(image_keys))
    image_vectors = torch.nn.functional.normalize(images[[position[k] for k in unique]].float(), dim=-1)
    text_vectors = torch.nn.functional.normalize(texts.float(), dim=-1)
    scores = text_vectors @ image_vectors.T  # (texts, images)
    index = {key: i for i, key in enumerate(unique)}
    truth = torch.tensor([index[k] for k in image_keys], device=scores.device)
    result = {}
    for k in (1, 5, 10):
        top = scores.topk(min(k, len(unique)), dim=1).indices
        result[f"{prefix}ir_r{k}"] = round(float((top == truth[:, None]).any(1).float().mean()), 4)
        top_texts = scores.T.topk(min(k, len(image_keys)), dim=1).indices  # (images, k) text rows
        hits = (truth[top_texts] == torch.arange(len(unique), device=scores.device)[:, None]).any(1)
        result[f"{prefix}tr_r{k}"] = round(float(hits.float().mean()), 4)
    result.update(retrieval_chance(image_keys, prefix=prefix))
    return result


def retrieval_chance(image_keys: list[str], *, prefix: str = "") -> dict[str, float]:
    """What a random ranking scores at each K: text->image `chance_r{k}` = k / images; image->text
    `chance_tr_r{k}`: the chance that k captions drawn at random hold one of the image's own, averaged over
    images (an image with more captions is found more easily)."""
    from collections import Counter
    from math import comb

    captions, count = Counter(image_keys), len(image_keys)
    result = {}
    for k in (1, 5, 10):
        result[f"{prefix}chance_r{k}"] = round(min(k, len(captions)) / len(captions), 4)
        drawn = min(k, count)
        missed = [comb(count - own, drawn) / comb(count, drawn) for own in captions.values()]
        result[f"{prefix}chance_tr_r{k}"] = round(1 - sum(missed) / len(missed), 4)
    return result


@torch.no_grad()
def compositional_accuracy(model, examples, collator, images: torch.Tensor, texts: torch.Tensor, *,
                           batch_size: int, device: torch.device) -> dict[str, Any]:
    """Per kind of hard negative in the shards (replace_object, swap_attributes, ...): how often the model
    scores a pair's own caption above that negative against the pair's image. `images` and `texts` are
    the first pairs' vectors (encode_pairs); every negative of those pairs counts. Chance is 0.5."""
    rows = [examples.row(i) for i in range(len(images))]
    negatives = [(i, n["text"], n["kind"]) for i, row in enumerate(rows) for n in row.get("negatives", [])]
    if not negatives:
        return {}
    encoded = torch.cat([encode_texts(model, collator, [t for _, t, _ in negatives[start:start + batch_size]],
                                      device=device) for start in range(0, len(negatives), batch_size)])
    owner = torch.tensor([i for i, _, _ in negatives], device=images.device)
    true = torch.nn.functional.cosine_similarity(images[owner], texts[owner])
    wrong = torch.nn.functional.cosine_similarity(images[owner], encoded.to(images.device))
    correct: dict[str, list[float]] = {}
    wins = (true > wrong).float() + 0.5 * (true == wrong).float()  # a tie is a coin flip
    for (_, _, kind), right in zip(negatives, wins.tolist(), strict=True):
        correct.setdefault(kind, []).append(right)
    return {"compositional": {kind: round(sum(v) / len(v), 4) for kind, v in sorted(correct.items())},
            "compositional_negatives": {kind: len(v) for kind, v in sorted(correct.items())}}


def encode_texts(model, collator, texts: list[str], *, device: torch.device) -> torch.Tensor:
    """First-token vectors of `texts`, as CMCL scores captions (call under no_grad, in eval mode)."""
    from unimo_pipe.pipeline.training_data import batch_to_device

    batch = batch_to_device(collator.texts([{"index": i, "text": t} for i, t in enumerate(texts)]), device)
    with torch.autocast(device.type, dtype=torch.bfloat16, enabled=device.type == "cuda"):
        return model(text_ids=batch["text_ids"], text_mask=batch["text_mask"])["text"].float()


@torch.no_grad()
def encode_pairs(model, examples, collator, *, count: int, batch_size: int, device: torch.device
                 ) -> tuple[torch.Tensor, torch.Tensor, list[str]]:
    """[IMG] and caption vectors of the first `count` pairs, encoded separately in batches, and the pairs'
    image keys."""
    from unimo_pipe.pipeline.training_data import PairDataset, Sampling, batch_to_device

    dataset = PairDataset(examples, sampling=Sampling(0, 0, 0, 0))
    was_training = model.training
    model.eval()
    images, texts = [], []
    for start in range(0, count, batch_size):
        batch = collator.pairs([dataset[i] for i in range(start, min(start + batch_size, count))])
        batch = batch_to_device(batch, device)
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=device.type == "cuda"):
            images.append(model(region_features=batch["region_features"], region_boxes=batch["region_boxes"],
                                region_mask=batch["region_mask"])["image"].float())
            texts.append(model(text_ids=batch["text_ids"], text_mask=batch["text_mask"])["text"].float())
    model.train(was_training)
    return torch.cat(images), torch.cat(texts), [examples.keys[i] for i in range(count)]


def evaluate_retrieval(options: EvaluateOptions) -> dict[str, Any]:
    from unimo_pipe.models.tokenizers import load_tokenizer
    from unimo_pipe.models.unified import UnifiedModel
    from unimo_pipe.pipeline.training_data import Collator, Examples

    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    model = UnifiedModel.from_pretrained(options.model).to(device)
    tokenizer = load_tokenizer(options.tokenizer, of="--tokenizer")
    examples = Examples(options.shards, "pair", max_regions=options.max_regions)
    count = min(options.pairs or len(examples.keys), len(examples.keys))
    collator = Collator(tokenizer, max_text_tokens=options.max_text_tokens)
    images, texts, keys = encode_pairs(model, examples, collator, count=count, batch_size=options.batch_size,
                                       device=device)
    result = retrieval_recall(images, texts, keys)
    result.update(pairs=count, images=len(set(keys)))
    model.eval()
    result.update(compositional_accuracy(model, examples, collator, images, texts, batch_size=options.batch_size,
                                         device=device))
    if options.out is not None:
        from unimo_pipe.pipeline.jsonl import write_json_atomic

        write_json_atomic(options.out, result)
    return result
