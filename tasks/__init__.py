"""`import tasks` registers every seqio Task and Mixture of moe-jax.

Mixtures: `t0_train` (T0's 38 training datasets, every template; rate per
task the train size, or 500000 // num_templates above 500,000 rows, as the
MoV release),
`t0_eval_score_eval` (held-out suite, original-task templates, rank
classification), `commonsense_train` and `commonsense_score_eval` (MiLoRA).
Eval suites for `moe_jax.data.rank_eval`: `eval_suite("t0_eval")`,
`eval_suite("commonsense")`. Data come from `$MOE_JAX_DATA_DIR` (default
../shared/data).
"""
from tasks.registration import eval_suite, register_all, REGISTERED

register_all()

__all__ = ["REGISTERED", "eval_suite", "register_all"]
