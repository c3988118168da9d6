"""Evaluation: metrics, trivial baselines and reports."""
