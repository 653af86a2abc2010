"""The unified single-stream transformer: one transformers encoder for text, images and pairs.

Text tokens use the encoder's own embeddings; an image is an [IMG] token followed by its regions, each
embedded as FC(feature) + FC(7-d box) summed, LayerNorm, dropout; a learned modality embedding (0 text,
1 image) is added to every position. Sequences are [IMG] regions... text...; the attention mask is the
padding mask (bidirectional), or any (L, L) pattern such as the seq2seq one from models/objectives.py.
d(V, W) for CMCL uses the [IMG] output (image) and the first text token's output ([CLS] / <s>).
Saved like transformers models: a folder with config.json and model.safetensors.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch
from torch import nn

CONFIG_FILE = "config.json"
WEIGHTS_FILE = "model.safetensors"


class UnifiedModel(nn.Module):
    def __init__(self, encoder: nn.Module, *, region_dim: int = 2048):
        super().__init__()
        hidden = encoder.config.hidden_size
        self.encoder = encoder
        self.region_dim = region_dim
        self.region_feature = nn.Linear(region_dim, hidden)
        self.region_box = nn.Linear(7, hidden)
        self.region_norm = nn.LayerNorm(hidden, eps=getattr(encoder.config, "layer_norm_eps", 1e-12))
        self.dropout = nn.Dropout(getattr(encoder.config, "hidden_dropout_prob", 0.1))
        self.modality = nn.Embedding(2, hidden)
        self.image_token = nn.Parameter(torch.zeros(hidden).normal_(std=0.02))

    @classmethod
    def from_encoder(cls, init: str, *, region_dim: int = 2048) -> UnifiedModel:
        """Start from a transformers encoder checkpoint (hub id or local folder), e.g. roberta-base."""
        from transformers import AutoModel

        from unimo_pipe.pipeline.errors import UserError

        try:
            encoder = AutoModel.from_pretrained(init, add_pooling_layer=False, attn_implementation="sdpa")
        except Exception as exc:  # many types for a bad path or an id not in the local cache
            raise UserError(f"cannot load encoder {init!r} ({type(exc).__name__}): pass a local folder or a "
                            "cached hub id such as roberta-base") from None
        return cls(encoder, region_dim=region_dim)

    @property
    def hidden_size(self) -> int:
        return self.encoder.config.hidden_size

    def embed_text(self, ids: torch.Tensor, positions: torch.Tensor | None = None) -> torch.Tensor:
        """`positions` (B, T): explicit text positions (counted from 0 over real tokens, see text_positions);
        None: the encoder's own numbering."""
        if positions is not None:
            positions = positions + self.position_offset
        return self.encoder.embeddings(input_ids=ids, position_ids=positions) + self.modality.weight[0]

    @property
    def position_offset(self) -> int:
        """Where the encoder's text positions start: RoBERTa numbers them from its padding index + 1."""
        padding = getattr(self.encoder.embeddings, "padding_idx", None)
        return 0 if padding is None else padding + 1

    def embed_image(self, features: torch.Tensor, boxes: torch.Tensor) -> torch.Tensor:
        regions = self.region_feature(features.to(self.region_feature.weight.dtype))
        regions = self.region_norm(regions + self.region_box(boxes.to(self.region_box.weight.dtype)))
        image = self.image_token.expand(features.shape[0], 1, -1)
        return self.dropout(torch.cat([image, regions], dim=1)) + self.modality.weight[1]

    def forward(self, *, text_ids: torch.Tensor | None = None, text_mask: torch.Tensor | None = None,
                region_features: torch.Tensor | None = None, region_boxes: torch.Tensor | None = None,
                region_mask: torch.Tensor | None = None, attention: torch.Tensor | None = None,
                text_positions: torch.Tensor | None = None, cache=None) -> dict:
        """Encode text, an image, or both. `attention` (B, L, L) or (L, L) overrides the padding pattern.
        `text_positions`: explicit text positions (embed_text); `cache`: a transformers Cache (e.g.
        DynamicCache) that keeps every layer's keys and values, for `extend` to continue from.

        Returns hidden states (B, L, H), `image` ([IMG] output) and `text` (first text token output).
        """
        parts, masks, image_length = [], [], 0
        if region_features is not None:
            parts.append(self.embed_image(region_features, region_boxes))
            batch = region_features.shape[0]
            ones = torch.ones(batch, 1, dtype=torch.bool, device=region_features.device)
            masks.append(torch.cat([ones, region_mask.bool()], dim=1))
            image_length = parts[-1].shape[1]
        if text_ids is not None:
            parts.append(self.embed_text(text_ids, text_positions))
            masks.append(text_mask.bool())
        hidden = torch.cat(parts, dim=1)
        keep = torch.cat(masks, dim=1)
        states = self.encoder.encoder(hidden, attention_mask=_additive_mask(keep, attention, hidden.dtype),
                                      past_key_values=cache)[0]
        return {"hidden": states, "image": states[:, 0] if image_length else None,
                "text": states[:, image_length] if text_ids is not None else None, "image_length": image_length}

    def extend(self, text_ids: torch.Tensor, text_positions: torch.Tensor, keep: torch.Tensor, cache) -> torch.Tensor:
        """Incremental decoding: the states (B, 1, H) of one new text token per row, which attends to every
        position `cache` holds and to itself; `keep` (B, cached + 1) marks the keys it may see (padding
        off). The new token's keys and values join the cache."""
        hidden = self.embed_text(text_ids, text_positions)
        return self.encoder.encoder(hidden, attention_mask=_additive_mask(keep, None, hidden.dtype),
                                    past_key_values=cache)[0]

    def set_dropout(self, rate: float) -> None:
        """Every dropout of the model (embeddings, attention, hidden states, regions) at `rate`, kept in the
        saved config. A tiny random encoder learns retrieval only without it (benchmarks/quality.py)."""
        for module in self.modules():
            if isinstance(module, nn.Dropout):
                module.p = rate
        self.encoder.config.hidden_dropout_prob = self.encoder.config.attention_probs_dropout_prob = rate

    def compile(self, **options) -> None:
        """torch.compile the transformer layers in place (parameter names, and so checkpoints, unchanged);
        the embedders and objectives around them stay eager."""
        self.encoder.encoder.compile(**options)

    def save_pretrained(self, folder: Path) -> None:
        from safetensors.torch import save_file

        folder.mkdir(parents=True, exist_ok=True)
        config = {"encoder": self.encoder.config.to_dict(), "region_dim": self.region_dim, "format": "unimo-pipe"}
        (folder / CONFIG_FILE).write_text(json.dumps(config, indent=2))
        save_file({k: v.contiguous() for k, v in self.state_dict().items()}, str(folder / WEIGHTS_FILE))

    @classmethod
    def from_pretrained(cls, folder: Path) -> UnifiedModel:
        from safetensors.torch import load_file
        from transformers import AutoConfig, AutoModel

        from unimo_pipe.pipeline.errors import UserError

        try:
            config = json.loads((folder / CONFIG_FILE).read_text())
            encoder_config = AutoConfig.for_model(**config["encoder"])
            weights = load_file(str(folder / WEIGHTS_FILE))
        except Exception as exc:  # missing, truncated or foreign files
            raise UserError(f"{folder} is not a saved unimo-pipe model ({type(exc).__name__}: {exc}): pass the "
                            f"model folder that pretrain or finetune wrote (OUT/model, with {CONFIG_FILE} and "
                            f"{WEIGHTS_FILE})") from None
        encoder = AutoModel.from_config(encoder_config, add_pooling_layer=False, attn_implementation="sdpa")
        model = cls(encoder, region_dim=config["region_dim"])
        try:
            model.load_state_dict(weights)
        except RuntimeError as exc:  # torch lists every missing, unexpected and mis-shaped name, over many lines
            first = str(exc).strip().splitlines()[-1].strip()[:200]
            raise UserError(f"{folder / WEIGHTS_FILE} does not match {folder / CONFIG_FILE} ({first}): pass the "
                            "model folder exactly as pretrain or finetune wrote it") from None
        return model


def load_for_features(folder: Path, region_dim: int | None, features: Path | None) -> UnifiedModel:
    """A saved model that must take the `region_dim`-d region features of `features` (None: a text task)."""
    from unimo_pipe.pipeline.errors import UserError

    model = UnifiedModel.from_pretrained(folder)
    if region_dim is not None and model.region_dim != region_dim:
        raise UserError(f"{folder} takes {model.region_dim}-d region features but {features} holds "
                        f"{region_dim}-d ones: use features from the detector the model was trained with")
    return model


def tiny_encoder(vocab_size: int, *, hidden: int = 32, layers: int = 2, heads: int = 2, kind: str = "roberta",
                 intermediate: int | None = None):
    """A randomly initialised transformers encoder (RoBERTa or BERT layout): tiny for tests and demos, or
    any size for benchmarks (e.g. hidden 768, 12 layers, intermediate 3072 is the base size)."""
    from transformers import AutoModel, BertConfig, RobertaConfig

    config_class = RobertaConfig if kind == "roberta" else BertConfig
    config = config_class(vocab_size=vocab_size, hidden_size=hidden, num_hidden_layers=layers,
                          num_attention_heads=heads, intermediate_size=intermediate or hidden * 2,
                          max_position_embeddings=600,
                          pad_token_id=1 if kind == "roberta" else 0)
    return AutoModel.from_config(config, add_pooling_layer=False, attn_implementation="sdpa")


def text_positions(mask: torch.Tensor) -> torch.Tensor:
    """Each text token's position among its row's real tokens (0, 1, ...; padding gets 0), so that a row
    padded on the left, or with padding between source and target, numbers its tokens without gaps."""
    return (mask.long().cumsum(1) - 1).clamp(min=0)


def _additive_mask(keep: torch.Tensor, attention: torch.Tensor | None, dtype: torch.dtype) -> torch.Tensor:
    """The additive attention mask: (B, 1, 1, L) over keys when only padding is masked, so that SDPA
    broadcasts it instead of reading a (B, 1, L, L) tensor in every layer; (B, 1, L, L) when `attention`
    (B, L, L) or (L, L) adds a pattern (seq2seq)."""
    allowed = keep[:, None, None, :]
    if attention is not None:
        allowed = allowed & (attention if attention.dim() == 3 else attention[None]).bool()[:, None]
    return torch.zeros(allowed.shape, dtype=dtype, device=keep.device).masked_fill(~allowed, torch.finfo(dtype).min)
