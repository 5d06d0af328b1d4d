"""SeqIO task and mixture registrations (importing this package registers them).

The P3/T0 training mixture and the held-out zero-shot suite are registered by
the data layer (`moe_jax/data/`); see README "Status".
"""
