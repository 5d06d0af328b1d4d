"""Data: JSONL sources, P3 templates as seqio Tasks, feature converters, rank evaluation."""
