"""`python -m moe_jax.train` as one of two processes joined by jax.distributed
on localhost (gloo, 1 CPU device each), as a pod's hosts run it:

    python two_process_trainer.py PORT PROCESS_ID --gin_file=... --gin.KEY=VALUE ...

(launch/*.sh set MOE_JAX_DISTRIBUTED and let jax find the slice; here the
coordinator is named.) Exits with the trainer's status, after LINGER_SECONDS
(if set) to finish later than the other process, as a slow host does."""
import os
import sys
import time

os.environ.setdefault("JAX_PLATFORMS", "cpu")

import jax  # noqa: E402

jax.config.update("jax_cpu_collectives_implementation", "gloo")
jax.distributed.initialize(f"127.0.0.1:{sys.argv[1]}", num_processes=2, process_id=int(sys.argv[2]))

from moe_jax import gin_utils, train  # noqa: E402

code = gin_utils.run(train.main, sys.argv[3:])
time.sleep(float(os.environ.get("LINGER_SECONDS", 0)))
gin_utils.exit_process(code)
