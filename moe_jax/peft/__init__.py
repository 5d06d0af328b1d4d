"""PEFT methods; the adapter-site contract they plug into is moe_jax/adapters.py.

Each method is a frozen dataclass (`sites.Adapters` subclass) passed to
`build_model(config, adapters)`; `METHODS` names them for configs and CLIs.
"""
import difflib

import gin

from moe_jax.peft.ia3 import IA3
from moe_jax.peft.lora import LoRA
from moe_jax.peft.milora import MiLoRA
from moe_jax.peft.moa import MoA
from moe_jax.peft.moelora import MOELoRA
from moe_jax.peft.molora import MoLoRA
from moe_jax.peft.mov import MoV
from moe_jax.adapters import NO_ADAPTERS, Adapters

METHODS = {"none": Adapters, "ia3": IA3, "lora": LoRA, "mov": MoV, "molora": MoLoRA,
           "moelora": MOELoRA, "milora": MiLoRA, "moa": MoA}

# Named settings: the MoV paper's (Zadouri et al. 2023, Table 1) at the released
# code's values (LoRA/MoLoRA alpha 16, A ~ N(0, 0.02)); MOELoRA at the released
# MOELoRA code's; the other methods' defaults.
PRESETS = {
    "ia3": IA3(),
    "lora_r4": LoRA(rank=4, alpha=16.0, a_init="normal:0.02",
                    targets=("q", "k", "v", "o", "wi_0", "wi", "wo", "gate", "down")),
    "mov_10": MoV(num_experts=10),
    "mov_30": MoV(num_experts=30),
    "mov_60": MoV(num_experts=60),
    "molora_10": MoLoRA(num_experts=10, rank=4),
    "molora_15": MoLoRA(num_experts=15, rank=4),
    "moelora": MOELoRA(a_init="normal:0.01", dropout_rate=0.1, gate_init="torch_linear",
                       task_padding_row=True),
    "milora": MiLoRA(),
    "moa_4": MoA(domains=("d0", "d1", "d2", "d3")),
}


def register_with_gin():
  """Make every method (and its router options) configurable from gin files:
  `MoV.num_experts = 30`, `model/build_model.adapters = @MoV()`."""
  for cls in list(METHODS.values())[1:]:
    if not gin.config._REGISTRY.get_match(f"moe_jax.peft.{cls.__name__}"):
      gin.external_configurable(cls, module="moe_jax.peft")


def get_method(name: str, **kwargs) -> Adapters:
  if name not in METHODS:
    raise KeyError(f"unknown method {name!r}; close matches: {difflib.get_close_matches(name, METHODS)}; "
                   f"known: {sorted(METHODS)}")
  return METHODS[name](**kwargs)


__all__ = ["register_with_gin", "Adapters", "IA3", "LoRA", "METHODS", "MOELoRA", "MiLoRA", "MoA", "MoLoRA", "MoV",
           "NO_ADAPTERS", "PRESETS", "get_method"]
