"""The runtime every stage shares: CLI, config, shard runner, stores and input readers."""
