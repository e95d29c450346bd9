"""The package's layout holds: the method imports only itself, the models neither the stages nor
the analysis, only command modules import the command-line layer, the imports form no cycle,
and every command's work is a Python function."""

import ast
import json
import os
import subprocess
import sys

from conftest import REPO

PACKAGE = os.path.join(REPO, "b2diffurl")
# The modules that are commands (python -m ...): the only ones besides the scripts that may import cli.
COMMANDS = {"b2diffurl.analysis.evaluate", "b2diffurl.analysis.generate", "b2diffurl.analysis.compare",
            "b2diffurl.stage.plan", "b2diffurl.world.pretrain", "b2diffurl.world.ceiling",
            "b2diffurl.world.conditioning"}


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
