"""Training: the loop and the concerns it delegates (precision, optimiser, checkpoints, logging)."""
