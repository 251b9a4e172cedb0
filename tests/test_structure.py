"""The package's shape: layers import only downwards, no import cycle, the engine never imports a
task, and the task layer's functions stay short enough to read."""

import ast
import pathlib
import subprocess
import sys

import pytest

SRC = pathlib.Path(__file__).resolve().parents[1] / "src" / "visionssm"

# layer of each top-level part of the package (DESIGN.md): a module imports only from its own
# layer or below (the engine and the tasks share a layer, the engine never imports a task)
LAYERS = {"ops": 0, "layers": 1, "models": 2, "engine": 3, "data": 3, "classification": 3, "dense": 3, "bench": 3,
          "analysis": 3, "export": 3, "video": 3, "video_task": 3, "train": 4, "cli": 4, "__main__": 4}
TASKS = ("visionssm.classification", "visionssm.dense", "visionssm.bench", "visionssm.analysis", "visionssm.export",
         "visionssm.video", "visionssm.train", "visionssm.cli")


def module_name(path: pathlib.Path) -> str:
    parts = path.relative_to(SRC.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def top_level_imports(path: pathlib.Path) -> set[str]:
    """The visionssm modules a file imports when it is imported (not those imported inside functions)."""
    tree = ast.parse(path.read_text())
    found = set()
    for node in tree.body:
        if isinstance(node, ast.Import):
            found |= {a.name for a in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            found.add(node.module)
            found |= {f"{node.module}.{a.name}" for a in node.names}
    own = {module_name(p) for p in SRC.rglob("*.py")}
    this = module_name(path)
    return {m for m in found if m in own and m not in ("visionssm", this)}


GRAPH = {module_name(p): top_level_imports(p) for p in SRC.rglob("*.py")}


def part(module: str) -> str:
    return module.split(".")[1] if "." in module else ""


def test_every_module_imports_only_its_own_layer_or_below():
    upward = [(m, dep) for m, deps in GRAPH.items() for dep in deps
              if part(m) in LAYERS and part(dep) in LAYERS and LAYERS[part(dep)] > LAYERS[part(m)]]
    assert upward == []


def test_the_engine_never_imports_a_task():
    bad = [(m, dep) for m, deps in GRAPH.items() if m.startswith("visionssm.engine") for dep in deps
           if dep.startswith(TASKS)]
    assert bad == []


def test_there_is_no_import_cycle():
    state, cycles = {}, []

    def visit(m, stack):
        state[m] = "open"
        for dep in GRAPH.get(m, ()):
            if state.get(dep) == "open":
                cycles.append(stack[stack.index(dep):] + [dep])
            elif dep not in state:
                visit(dep, stack + [dep])
        state[m] = "done"

    for m in GRAPH:
        if m not in state:
            visit(m, [m])
    assert cycles == [], cycles


def test_importing_the_training_loop_loads_no_task_module():
    code = ("import sys, visionssm.engine.loop, visionssm.engine.evaluate, visionssm.train; "
            "print(sorted(m for m in sys.modules if m.startswith(('visionssm.dense', 'visionssm.bench'))))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"


TASK_LAYER = ["engine", "train.py", "classification.py", "dense/tasks.py", "video_task.py"]


@pytest.mark.parametrize("where", TASK_LAYER)
def test_task_layer_functions_are_short(where):
    files = sorted((SRC / where).rglob("*.py")) if (SRC / where).is_dir() else [SRC / where]
    long = []
    for path in files:
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                length = node.end_lineno - node.lineno + 1
                if length > 80 and node.name != "train_parser":  # a flat list of flags
                    long.append(f"{path.name}:{node.name} ({length} lines)")
    assert long == []
