"""Model parts: encoders, fusion, heads, and the assembled multi-task model."""
