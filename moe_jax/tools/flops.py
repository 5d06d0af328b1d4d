"""FLOPs of a traced program, counting every iteration of its loops.

XLA's cost analysis (`compiled.cost_analysis()["flops"]`) counts a loop body
once, so with scanned layers it reports about one layer's FLOPs, not N.
Counting on the jaxpr instead multiplies a `scan` body by its length. The
rules follow XLA's HloCostAnalysis, so an unrolled program counts about the
same either way (tests/test_flops.py checks this against XLA): a dot is
2 x batch x M x N x K, an elementwise arithmetic op one FLOP per output
element, a reduction one per input element; data movement (reshape,
transpose, gather, slices, converts) is free. Transcendentals (exp, log,
tanh, ...) are counted apart, as XLA does.

The count is of the whole (global) program; divide by the chips for one chip.
"""
from __future__ import annotations

import math

import jax
from jax.extend import core as jcore

# One FLOP per output element.
_ELEMENTWISE = {
    "add", "add_any", "sub", "mul", "div", "rem", "max", "min", "neg", "abs", "sign", "floor", "ceil",
    "round", "select_n", "eq", "ne", "lt", "le", "gt", "ge", "and", "or", "not", "xor", "clamp",
    "integer_pow", "square", "nextafter", "is_finite", "sqrt", "rsqrt", "cbrt",
}
_TRANSCENDENTAL = {"exp", "exp2", "log", "log1p", "expm1", "tanh", "logistic", "sin", "cos", "tan", "atan2",
                   "pow", "erf", "erfc", "erf_inv", "lgamma", "digamma", "asin", "acos", "atan", "sinh", "cosh",
                   "asinh", "acosh", "atanh"}
# One FLOP per input element.
_REDUCTIONS = {"reduce_sum", "reduce_max", "reduce_min", "reduce_prod", "reduce_and", "reduce_or", "argmax",
               "argmin", "cumsum", "cumlogsumexp", "cummax", "cummin", "cumprod", "reduce_precision"}


def _size(aval) -> int:
  shape = getattr(aval, "shape", ())
  return math.prod(shape) if shape is not None else 1


def _dot_flops(eqn) -> int:
  lhs, rhs = (v.aval for v in eqn.invars[:2])
  (lc, rc), (lb, _) = eqn.params["dimension_numbers"]
  contracted = math.prod(lhs.shape[d] for d in lc)
  # output = batch x lhs-free x rhs-free; each output element is a K-long dot.
  return 2 * _size(eqn.outvars[0].aval) * contracted


def count(jaxpr, while_trips: int = 1) -> dict:
  """{"flops", "transcendentals"} of a (closed) jaxpr. `while_trips`: how many
  times to count a `while_loop` body, whose trip count the jaxpr does not
  state (a decode loop: its maximum length)."""
  totals = {"flops": 0, "transcendentals": 0}
  _walk(getattr(jaxpr, "jaxpr", jaxpr), 1, totals, while_trips)
  return totals


def _walk(jaxpr, times: int, totals: dict, while_trips: int) -> None:
  for eqn in jaxpr.eqns:
    name = eqn.primitive.name
    if name == "dot_general":
      totals["flops"] += times * _dot_flops(eqn)
    elif name in _ELEMENTWISE:
      totals["flops"] += times * sum(_size(v.aval) for v in eqn.outvars)
    elif name in _TRANSCENDENTAL:
      totals["transcendentals"] += times * sum(_size(v.aval) for v in eqn.outvars)
    elif name in _REDUCTIONS:
      totals["flops"] += times * _size(eqn.invars[0].aval)
    elif name == "scan":
      _walk(eqn.params["jaxpr"].jaxpr, times * eqn.params["length"], totals, while_trips)
    elif name == "while":
      _walk(eqn.params["cond_jaxpr"].jaxpr, times * while_trips, totals, while_trips)
      _walk(eqn.params["body_jaxpr"].jaxpr, times * while_trips, totals, while_trips)
    elif name == "cond":  # one branch runs: count the costliest
      best = {"flops": 0, "transcendentals": 0}
      for branch in eqn.params["branches"]:
        t = {"flops": 0, "transcendentals": 0}
        _walk(branch.jaxpr, times, t, while_trips)
        best = max(best, t, key=lambda d: d["flops"])
      for k in totals:
        totals[k] += best[k]
    else:  # pjit, custom_vjp/jvp calls, remat, shard_map, ...: their bodies run once
      for sub in jcore.jaxprs_in_params(eqn.params):
        _walk(getattr(sub, "jaxpr", sub), times, totals, while_trips)


def of_traced(traced: "jax.stages.Traced", while_trips: int = 1) -> dict:
  return count(traced.jaxpr, while_trips)
