"""Data pipelines: data set generators and converters that feed the mmtl package."""
