"""Pieces of the preprocess stage (`acetune.stages.preprocess`): SSL features, sample planning, output store."""
