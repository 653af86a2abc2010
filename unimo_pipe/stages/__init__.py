"""One module per stage; each processes one shard and returns its stats (see `pipeline.stage`)."""
