"""The package's layout holds: the method imports only itself, the models neither the stages nor
the analysis, only command modules import the command-line layer, the imports form no cycle,
and every command's work is a Python function."""

import ast
import json
import os
import re
import subprocess
import sys

from conftest import REPO

PACKAGE = os.path.join(REPO, "b2diffurl")
# The modules that are commands (python -m ...): the only ones besides the scripts that may import cli.
COMMANDS = {"b2diffurl.analysis.evaluate", "b2diffurl.analysis.generate", "b2diffurl.analysis.compare",
            "b2diffurl.stage.plan", "b2diffurl.lab.pretrain", "b2diffurl.lab.ceiling",
            "b2diffurl.lab.conditioning"}


def _modules() -> dict[str, str]:
    """Module name -> file, for every module of the package."""
    found = {}
    for folder, _, files in os.walk(PACKAGE):
        for name in files:
            if name.endswith(".py"):
                path = os.path.join(folder, name)
                parts = os.path.relpath(path, REPO)[:-3].split(os.sep)
                found[".".join(parts[:-1] if parts[-1] == "__init__" else parts)] = path
    return found


def _imports(path: str, modules: dict[str, str], top_level_only: bool = False) -> set[str]:
    """The package modules `path` imports (`from b2diffurl.x import y` counts x.y when y is a module)."""
    tree = ast.parse(open(path).read())
    nodes = tree.body if top_level_only else ast.walk(tree)
    imported = set()
    for node in nodes:
        if isinstance(node, ast.Import):
            imported |= {alias.name for alias in node.names if alias.name.startswith("b2diffurl")}
        elif isinstance(node, ast.ImportFrom) and (node.module or "").startswith("b2diffurl"):
            for alias in node.names:
                name = f"{node.module}.{alias.name}"
                imported.add(name if name in modules else node.module)
    return imported & set(modules)


def test_the_method_imports_nothing_but_itself():
    modules = _modules()
    for name, path in modules.items():
        if name.startswith("b2diffurl.method"):
            outside = {m for m in _imports(path, modules) if not m.startswith("b2diffurl.method")}
            assert not outside, f"{name} imports {outside}"


def test_models_import_neither_stages_nor_analysis():
    """The model loaders sit under the stages and the analysis, never on top of them."""
    modules = _modules()
    for name, path in modules.items():
        if name.startswith("b2diffurl.models"):
            above = {m for m in _imports(path, modules) if m.startswith(("b2diffurl.stage", "b2diffurl.analysis"))}
            assert not above, f"{name} imports {above}"


def test_only_commands_import_the_command_line_layer():
    modules = _modules()
    importers = {name for name, path in modules.items() if "b2diffurl.cli" in _imports(path, modules)}
    assert importers <= COMMANDS, importers - COMMANDS


def test_module_level_imports_form_no_cycle():
    modules = _modules()
    graph = {name: _imports(path, modules, top_level_only=True) - {name} for name, path in modules.items()}
    state = {}

    def visit(name: str, trail: list[str]) -> None:
        if state.get(name) == "done":
            return
        assert state.get(name) != "open", " -> ".join(trail + [name])
        state[name] = "open"
        for imported in graph[name]:
            visit(imported, trail + [name])
        state[name] = "done"

    for name in graph:
        visit(name, [])


def test_every_command_module_imports_beside_the_others():
    """Each command parses its own flags: importing all of them in one process clashes on none."""
    code = "import " + ", ".join(sorted(COMMANDS)) + "; print('ok')"
    result = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True)
    assert result.returncode == 0 and result.stdout.strip() == "ok", result.stderr[-2000:]


def test_evaluate_and_generate_are_python_functions(tiny_config, tmp_path):
    from b2diffurl.analysis.evaluate import evaluate
    from b2diffurl.analysis.generate import generate

    paths = generate(tiny_config, ["a red apple", "a blue plum"], num_images=2, out=str(tmp_path / "images"))
    assert len(paths) == 4 and all(os.path.exists(p) for p in paths)
    assert os.path.exists(tmp_path / "images" / "grid.png")

    tiny_config.eval.max_prompts = 2
    report = evaluate(tiny_config, num_images=2, out=str(tmp_path / "eval.json"))
    assert report == json.loads((tmp_path / "eval.json").read_text())
    assert list(report["results"]) == ["base"] and report["results"]["base"]["num_images"] == 4


# The package's floors, from the bottom up: a module imports from its own floor and the floors
# below it, never from a floor above. A module is on the floor of the longest name below that
# is it or a package holding it ("b2diffurl" itself: only the package's __init__).
FLOORS = [
    ("b2diffurl", "b2diffurl.errors", "b2diffurl.method"),  # the errors, and the method: pure math
    ("b2diffurl.files", "b2diffurl.paths", "b2diffurl.logs", "b2diffurl.tracking"),  # files, run folders, logs
    ("b2diffurl.world", "b2diffurl.grids"),  # the shapes world's pure parts; image grids
    ("b2diffurl.models",),  # models, prompts, rewards, their metrics
    ("b2diffurl.stage", "b2diffurl.cli"),  # one stage, and the command-line layer the scripts run
    ("b2diffurl.analysis",),  # evaluation, generation, reports, comparisons
    ("b2diffurl.lab",),  # commands on the shapes world: pretraining, ceiling, conditioning
]


def _floor(name: str) -> int | None:
    """The index in FLOORS of module `name`'s floor, or None where no floor holds it."""
    held = [(len(prefix), index) for index, floor in enumerate(FLOORS) for prefix in floor
            if name == prefix or (prefix != "b2diffurl" and name.startswith(prefix + "."))]
    return max(held)[1] if held else None


def _is_main_block(node: ast.stmt) -> bool:
    return isinstance(node, ast.If) and ast.unparse(node.test).replace("'", '"') == '__name__ == "__main__"'


def _name_pattern(node: ast.expr) -> str | None:
    """A regular expression for the module name an import_module call is given: a string, or an
    f-string whose replacement fields stand for any dotted name; None for anything else."""
    if isinstance(node, ast.Constant) and isinstance(node.value, str):
        return re.escape(node.value)
    if isinstance(node, ast.JoinedStr):
        return "".join(re.escape(part.value) if isinstance(part, ast.Constant) else r"[\w.]+" for part in node.values)
    return None


def _every_import(name: str, path: str, modules: dict[str, str], main_block: bool = True) -> set[str]:
    """Every package module that module `name` imports, anywhere in it: at module level, in
    functions and classes, relative imports, and importlib.import_module of a string or f-string
    (every module its pattern matches). `from b2diffurl.x import y` counts x.y where that is a
    module, else x. With `main_block=False`, leaves out the `if __name__ == "__main__":` block,
    which runs only when the module is the program, so that it closes no import cycle."""
    tree = ast.parse(open(path).read(), path)
    if not main_block:
        tree.body = [node for node in tree.body if not _is_main_block(node)]
    package = name if path.endswith("__init__.py") else name.rpartition(".")[0]
    found = set()

    def add(dotted: str) -> None:  # the module, else the nearest package holding it
        while dotted and dotted not in modules:
            dotted = dotted.rpartition(".")[0]
        if dotted:
            found.add(dotted)

    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for alias in node.names:
                if alias.name.split(".")[0] == "b2diffurl":
                    add(alias.name)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                parts = package.split(".")[:len(package.split(".")) - node.level + 1]
                base = ".".join(parts + ([node.module] if node.module else []))
            if base.split(".")[0] == "b2diffurl":
                for alias in node.names:
                    add(f"{base}.{alias.name}" if f"{base}.{alias.name}" in modules else base)
        elif isinstance(node, ast.Call) and node.args and (
                getattr(node.func, "attr", None) == "import_module" or getattr(node.func, "id", None) == "import_module"):
            pattern = _name_pattern(node.args[0])
            if pattern and pattern.startswith("b2diffurl"):
                found |= {module for module in modules if re.fullmatch(pattern, module)}
    return found - {name}


def test_every_module_is_on_a_floor():
    unplaced = sorted(name for name in _modules() if _floor(name) is None)
    assert not unplaced, f"add these modules to a floor of FLOORS: {unplaced}"


def test_no_module_imports_from_a_floor_above_its_own():
    """At module level and inside functions alike."""
    modules = _modules()
    upward = [f"{name} (floor {_floor(name)}) imports {imported} (floor {_floor(imported)})"
              for name, path in sorted(modules.items()) for imported in sorted(_every_import(name, path, modules))
              if _floor(name) is not None and _floor(imported) is not None and _floor(imported) > _floor(name)]
    assert not upward, "\n".join(upward)


def test_imports_form_no_cycle_even_inside_functions():
    modules = _modules()
    graph = {name: _every_import(name, path, modules, main_block=False) for name, path in modules.items()}

    def reach(start: str) -> set[str]:
        seen, todo = set(), [start]
        while todo:
            for imported in graph[todo.pop()] - seen:
                seen.add(imported)
                todo.append(imported)
        return seen

    reachable = {name: reach(name) for name in graph}
    cycles = []
    for name in sorted(graph):
        if name in reachable[name] and not any(name in cycle for cycle in cycles):
            cycles.append(sorted(other for other in reachable[name] if name in reachable[other]))
    assert not cycles, "import cycles among: " + "; ".join(", ".join(cycle) for cycle in cycles)
