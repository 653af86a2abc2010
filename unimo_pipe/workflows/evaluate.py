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
    result[f"{prefix}chance_r1"] = round(1 / len(unique), 4)
    return result


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
    images, texts, keys = encode_pairs(model, examples, Collator(tokenizer, max_text_tokens=options.max_text_tokens),
                                       count=count, batch_size=options.batch_size, device=device)
    result = retrieval_recall(images, texts, keys)
    result.update(pairs=count, images=len(set(keys)))
    if options.out is not None:
        from unimo_pipe.pipeline.jsonl import write_json_atomic

        write_json_atomic(options.out, result)
    return result
