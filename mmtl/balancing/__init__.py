"""Task balancing: turn per-task losses (or gradients) into one update."""
