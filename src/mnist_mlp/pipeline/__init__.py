"""The DVC pipeline's history: the way back to a commit's outputs."""
