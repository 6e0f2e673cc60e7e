"""Pre-training: recipe schema, budget, schedule, optimisers, checkpoints, distribution and the loop."""
