"""Everything a video goes through before it meets a model."""
