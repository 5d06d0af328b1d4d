"""The trainer and what it is made of: optimizer, partitioning, checkpoints and
weight loading, the frozen backbone's source, metrics, stop signals."""
