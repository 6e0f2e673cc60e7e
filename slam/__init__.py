"""slam: train a speech language model on one GPU in a day (the Slamming recipe, end to end)."""

__version__ = "0.1.0"
