"""Model families acetune can train (see `acetune.models.family`)."""
