"""unimo-pipe: UNIMO-style cross-modal contrastive pretraining data, end to end."""

__version__ = "0.1.0"
