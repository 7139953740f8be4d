"""The pipeline's stages, each a function of one frozen config and a run folder: train, discover."""
