"""The run's model as the gin files configure it (`model.preset = ...`,
`model.adapters = @MoV()`): the one factory every entry point calls."""
from __future__ import annotations

from typing import Optional

import gin

from moe_jax.adapters import NO_ADAPTERS
from moe_jax.models import build_model, get_preset


@gin.configurable
def model(preset: str = gin.REQUIRED, adapters=NO_ADAPTERS, dtype: str = "float32",
          param_dtype: str = "float32", dropout_rate: float = 0.0, z_loss: float = 1e-4,
          loss_normalizing_factor: str = "num_real_target_tokens", config_overrides: Optional[dict] = None,
          scan_layers: Optional[bool] = None, remat_policy: str = "none"):
  """The run's model: a backbone preset, its dtypes and dropout, and a PEFT method.

  `param_dtype` is the backbone's (adapters and routers always keep float32);
  `scan_layers` None keeps the preset's choice.
  """
  layout = {} if scan_layers is None else {"scan_layers": scan_layers}
  config = get_preset(preset, dtype=dtype, param_dtype=param_dtype, dropout_rate=dropout_rate,
                      remat_policy=remat_policy, **layout, **(config_overrides or {}))
  return build_model(config, adapters, z_loss=z_loss, loss_normalizing_factor=loss_normalizing_factor)
