"""Tasks: each owns its targets, head, loss, predictions, metrics and trivial baseline."""
