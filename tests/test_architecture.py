"""The contributor's rule, checked on the source: a new method touches only
peft/, a new backbone only models/ and layers/.

- The adapter contract (`moe_jax/adapters.py`) is a leaf: the backbone imports
  it without loading any method.
- models/ and layers/ import nothing from peft/ or above; data/ nothing from
  models/, peft/ or the training modules.
- Outside peft/, no code asks which method it has (`isinstance` of a method
  class) or reaches into a method module's private helpers: it calls the
  contract's lifecycle hooks (`Adapters.batch_preparer`, `check_restore`,
  `adapt_restored`, `regrown_frozen`, `train_slice`, `row_features`,
  `decode_batch`, `merges_per_task` / `merge_task`).
"""
import ast
import os
import re

import pytest

from moe_jax import paths
from moe_jax.peft import METHODS

PACKAGE = os.path.join(paths.REPO_ROOT, "moe_jax")
METHOD_CLASSES = {cls.__name__ for cls in METHODS.values()} - {"Adapters"}
METHOD_MODULES = {"ia3", "lora", "mov", "molora", "moelora", "milora", "moa", "moa_lib", "routers"}


def _sources(*under):
  for root, _, files in os.walk(os.path.join(PACKAGE, *under)):
    for f in files:
      if f.endswith(".py"):
        path = os.path.join(root, f)
        yield os.path.relpath(path, paths.REPO_ROOT), ast.parse(open(path).read(), path)


def _imports(tree):
  """Every moe_jax module a file imports, at module level or inside functions."""
  for node in ast.walk(tree):
    if isinstance(node, ast.Import):
      yield from (a.name for a in node.names)
    elif isinstance(node, ast.ImportFrom) and node.module:
      yield node.module
      yield from (f"{node.module}.{a.name}" for a in node.names)


def _within(module: str, package: str) -> bool:
  return module == package or module.startswith(package + ".")


def _outside_peft():
  return [(p, t) for p, t in _sources() if not p.startswith(os.path.join("moe_jax", "peft"))]


def test_no_code_outside_peft_asks_which_method_it_has():
  found = []
  for path, tree in _outside_peft():
    for node in ast.walk(tree):
      if isinstance(node, ast.Call) and getattr(node.func, "id", None) == "isinstance" and len(node.args) == 2:
        named = {n.id for n in ast.walk(node.args[1]) if isinstance(n, ast.Name)} | {
            n.attr for n in ast.walk(node.args[1]) if isinstance(n, ast.Attribute)}
        if named & METHOD_CLASSES:
          found.append(f"{path}:{node.lineno}: isinstance(..., {sorted(named & METHOD_CLASSES)[0]})")
  assert not found, "use the contract's hooks (moe_jax/adapters.py):\n" + "\n".join(found)


def test_no_code_outside_peft_uses_a_method_modules_private_helpers():
  found = []
  for path, tree in _outside_peft():
    for node in ast.walk(tree):
      if (isinstance(node, ast.Attribute) and isinstance(node.value, ast.Name) and node.value.id in METHOD_MODULES
          and node.attr.startswith("_") and not node.attr.startswith("__")):
        found.append(f"{path}:{node.lineno}: {node.value.id}.{node.attr}")
  assert not found, "\n".join(found)


ENTRY_POINTS = ("moe_jax.train", "moe_jax.eval", "moe_jax.infer", "moe_jax.export", "moe_jax.plan",
                "moe_jax.preflight")
ABOVE_TRAINING = ("moe_jax.evaluation", "moe_jax.tools", "moe_jax.gin_utils") + ENTRY_POINTS


@pytest.mark.parametrize("under, forbidden", [
    (("utils",), ("moe_jax.training", "moe_jax.models", "moe_jax.data", "moe_jax.peft",
                  "moe_jax.kernels", "moe_jax.layers", "moe_jax.adapters") + ABOVE_TRAINING),
    (("layers",), ("moe_jax.peft", "moe_jax.kernels", "moe_jax.training", "moe_jax.data",
                   "moe_jax.models") + ABOVE_TRAINING),
    (("models",), ("moe_jax.peft", "moe_jax.kernels", "moe_jax.training", "moe_jax.data") + ABOVE_TRAINING),
    (("kernels",), ("moe_jax.peft", "moe_jax.models", "moe_jax.training", "moe_jax.data") + ABOVE_TRAINING),
    (("data",), ("moe_jax.peft", "moe_jax.models", "moe_jax.training") + ABOVE_TRAINING),
    (("peft",), ("moe_jax.training",) + ABOVE_TRAINING),
    (("training",), ABOVE_TRAINING),
    # evaluation/ restores through training/ and is configured by gin_utils, which it does not import.
    (("evaluation",), ("moe_jax.tools", "moe_jax.gin_utils") + ENTRY_POINTS),
])
def test_imports_point_down(under, forbidden):
  found = [f"{path}: imports {m}" for path, tree in _sources(*under) for m in set(_imports(tree))
           if any(_within(m, f) for f in forbidden)]
  assert not found, "\n".join(sorted(found))


@pytest.mark.parametrize("module, forbidden", [
    # The data readers are leaves under the source dispatcher (sources.py) and the task builder (p3.py).
    ("data/jsonl.py", ("moe_jax.data.sources", "moe_jax.data.p3")),
    ("data/parquet.py", ("moe_jax.data.sources", "moe_jax.data.p3")),
    ("data/p3_release.py", ("moe_jax.data.sources", "moe_jax.data.p3")),
    ("data/sources.py", ("moe_jax.data.p3",)),
    ("errors.py", ("moe_jax",)),
])
def test_no_import_circles(module, forbidden):
  tree = ast.parse(open(os.path.join(PACKAGE, module)).read())
  found = sorted({m for m in _imports(tree) if any(_within(m, f) for f in forbidden)} - {"moe_jax", "moe_jax.errors"})
  assert not found, f"moe_jax/{module} imports {found}"


def test_the_adapter_contract_is_a_leaf():
  tree = ast.parse(open(os.path.join(PACKAGE, "adapters.py")).read())
  ours = {m for m in _imports(tree) if m.startswith("moe_jax")}
  assert ours <= {"moe_jax", "moe_jax.segments"}, ours


def _aliases():
  """The old module names kept for users' imports (`moe_jax/fs.py` and the like:
  a module that replaces itself in sys.modules with its new home)."""
  found = set()
  for path, tree in _sources():
    src = ast.unparse(tree)
    if "sys.modules[__name__] =" in src:
      found.add(os.path.splitext(path)[0].replace(os.sep, "."))
  return found


def test_the_package_imports_no_old_alias_names():
  aliases = _aliases()
  assert {"moe_jax.fs", "moe_jax.trainer", "moe_jax.inference", "moe_jax.peft.sites"} <= aliases
  found = [f"{path}: imports {m} (an alias kept for users; import the module it names)"
           for path, tree in _sources() for m in set(_imports(tree)) if m in aliases]
  assert not found, "\n".join(sorted(found))


# --- Function-level imports --------------------------------------------------
# An import inside a function hides an edge from a reader of the file's header.
# It is allowed only for a heavy optional dependency (TensorFlow and seqio,
# promptsource, matplotlib, torch, HF datasets, pyarrow: `python -m
# moe_jax.plan` and the model code must load without them), and in the planner
# and the argparse tools (LAZY_FILES below). Each says why in a comment.
HEAVY = {"tensorflow", "seqio", "promptsource", "matplotlib", "torch", "transformers", "datasets", "pyarrow",
         "pandas", "tensorflow_datasets"}
# The planner sets XLA_FLAGS (simulated devices) before jax loads; the argparse
# tools answer --help and bad flags before it. Each says so once, in a comment
# starting with LAZY_NOTE above its first import.
LAZY_FILES = {"moe_jax/plan.py", "moe_jax/tools/"}
LAZY_NOTE = "# Imports inside functions:"


def _all_modules():
  """{dotted name: (path, tree)} for moe_jax/ and tasks/."""
  found = {}
  for top in ("moe_jax", "tasks"):
    for root, _, files in os.walk(os.path.join(paths.REPO_ROOT, top)):
      for f in files:
        if f.endswith(".py"):
          path = os.path.join(root, f)
          rel = os.path.relpath(path, paths.REPO_ROOT)
          name = os.path.splitext(rel)[0].replace(os.sep, ".")
          name = name[:-len(".__init__")] if name.endswith(".__init__") else name
          found[name] = (rel, ast.parse(open(path).read(), path))
  return found


def _import_nodes(tree):
  """(import node, inside a function?) for every import of a file."""
  def walk(node, in_function):
    for child in ast.iter_child_nodes(node):
      if isinstance(child, (ast.Import, ast.ImportFrom)):
        yield child, in_function
      yield from walk(child, in_function or isinstance(child, (ast.FunctionDef, ast.AsyncFunctionDef)))
  yield from walk(tree, False)


def _targets(node, modules):
  """The modules an import statement loads: ours by dotted name (with their
  parent packages), third-party ones by their top-level name."""
  names = ([a.name for a in node.names] if isinstance(node, ast.Import)
           else [f"{node.module}.{a.name}" if f"{node.module}.{a.name}" in modules else node.module
                 for a in node.names])
  out = set()
  for name in names:
    if name.split(".")[0] in ("moe_jax", "tasks"):
      parts = name.split(".")
      out.update(".".join(parts[:i]) for i in range(1, len(parts) + 1) if ".".join(parts[:i]) in modules)
    else:
      out.add(name.split(".")[0])
  return out


def _module_level_graph(modules):
  return {name: set().union(*[_targets(n, modules) for n, in_fn in _import_nodes(tree) if not in_fn] or [set()])
          for name, (_, tree) in modules.items()}


def _loads_heavy(target, graph):
  seen, todo = set(), [target]
  while todo:
    m = todo.pop()
    if m in seen:
      continue
    seen.add(m)
    if m in HEAVY:
      return True
    todo.extend(graph.get(m, ()))
  return False


def test_the_module_level_import_graph_has_no_circle():
  modules = _all_modules()
  graph = {m: {t for t in ts if t in modules and t != m and not m.startswith(t + ".")}
           for m, ts in _module_level_graph(modules).items()}
  state, circle = {}, []

  def visit(m, stack):
    state[m] = "open"
    for t in sorted(graph[m]):
      if state.get(t) == "open":
        circle.append(" -> ".join(stack[stack.index(t):] + [t]))
      elif t not in state:
        visit(t, stack + [t])
    state[m] = "done"

  for m in sorted(graph):
    if m not in state:
      visit(m, [m])
  assert not circle, "\n".join(circle)


def _says_why(lines, i):
  """A comment (not only a pylint/noqa marker) on the import's line, on another
  line of its run of imports, or on the line above the run."""
  def comment(line):
    text = line.partition("#")[2]
    text = re.sub(r"pylint:\s*disable=\S+|noqa(:\s*\S+)?", "", text)
    return bool(text.strip(" #()"))

  start = end = i
  while start > 0 and lines[start - 1].strip().startswith(("import ", "from ")):
    start -= 1
  while end + 1 < len(lines) and lines[end + 1].strip().startswith(("import ", "from ")):
    end += 1
  return any(comment(lines[j]) for j in range(start, end + 1)) or lines[start - 1].strip().startswith("#")


def test_imports_inside_functions_are_for_heavy_dependencies_and_say_why():
  modules = _all_modules()
  graph = _module_level_graph(modules)
  found = []
  for name, (path, tree) in modules.items():
    lines = open(os.path.join(paths.REPO_ROOT, path)).read().splitlines()
    lazy = any(path == f or (f.endswith("/") and path.startswith(f)) for f in LAZY_FILES)
    lazy_note = lazy and any(l.startswith(LAZY_NOTE) for l in lines)
    for node, in_function in _import_nodes(tree):
      if not in_function:
        continue
      if not lazy_note and not _says_why(lines, node.lineno - 1):
        found.append(f"{path}:{node.lineno}: no comment says why this import is inside a function")
      if not lazy and not any(_loads_heavy(t, graph) for t in _targets(node, modules)):
        found.append(f"{path}:{node.lineno}: {lines[node.lineno - 1].strip()!r} loads nothing heavy; "
                     "import it at the top of the file")
  assert not found, "\n".join(found)
