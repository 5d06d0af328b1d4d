"""Tools beside the trainer: the command-line tools with their own argparse
flags (`param_count`, `zero_shot`, `decode_demo`) and the planner's helpers
(`flops`, the FLOP count of a jaxpr; `tpu_slices`, the Cloud TPU slice table).
Only entry points and benchmarks import them."""
