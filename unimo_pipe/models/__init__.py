"""Models used by the stages: detector, translator wrapper, scene-graph parser, transformer, losses."""
