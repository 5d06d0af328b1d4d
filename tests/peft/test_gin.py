"""Methods are gin-configurable with their paper defaults overridable."""
import gin

from moe_jax import peft


def test_methods_bind_from_gin():
  peft.register_with_gin()
  peft.register_with_gin()  # idempotent
  with gin.unlock_config():
    gin.parse_config("""
        MoV.num_experts = 30
        MoV.top_k = 2
        MiLoRA.top_k = 4
    """)
  try:
    mov = gin.get_configurable("moe_jax.peft.MoV")()
    assert mov.num_experts == 30 and mov.top_k == 2 and mov.routing == "token"
    assert gin.get_configurable("moe_jax.peft.MiLoRA")().top_k == 4
  finally:
    gin.clear_config()
