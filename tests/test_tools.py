"""The tools' config overrides name keys the config has: a renamed key breaks a tool here, in a
second, rather than the next time someone runs the tool (tools/bench.py once passed
`tensorboard` for months after `report_to` replaced it)."""

import ast
import glob
import os
import re

import pytest

from b2diffurl.files import REPO
from config import base

TOOLS = sorted(glob.glob(os.path.join(REPO, "tools", "*.py")) + glob.glob(os.path.join(REPO, "tools", "*.sh"))
               + glob.glob(os.path.join(REPO, "examples", "*.sbatch")))


def _config_keys() -> set[str]:
    def walk(node, prefix=""):
        for key, value in node.items():
            name = prefix + key
            yield name
            if hasattr(value, "items"):
                yield from walk(value, name + ".")
    return set(walk(base.get_config()))


def overridden_keys(source: str, python: bool = True) -> set[str]:
    """Keys a tool sets: `--config.KEY` in any string, the string keys of the dict that a
    function named `_overrides` returns (tools/bench.py's, applied with update_from_flattened_dict),
    and those of dict literals assigned to UPPER_CASE names or to `common` (bench.py's TODAY and
    FAST settings and its lab stage's shared overrides); in a shell script, the flags alone."""
    keys = set(re.findall(r"--config\.([A-Za-z_][\w.]*)", source))
    dicts = []
    for node in ast.walk(ast.parse(source) if python else ast.Module(body=[], type_ignores=[])):
        if isinstance(node, ast.FunctionDef) and node.name == "_overrides":
            dicts += [r.value for r in ast.walk(node) if isinstance(r, ast.Return) and isinstance(r.value, ast.Dict)]
        if isinstance(node, ast.Assign) and isinstance(node.value, ast.Dict) and all(
                isinstance(t, ast.Name) and (t.id.isupper() or t.id == "common") for t in node.targets):
            dicts.append(node.value)
    for d in dicts:
        keys |= {k.value for k in d.keys if isinstance(k, ast.Constant) and isinstance(k.value, str)}
    return {key for key in keys if key != "config"}  # "--config.{key}" builds a flag from a checked key


def test_the_check_reads_overrides_and_would_catch_an_unknown_key():
    source = ('def _overrides():\n    return {"tensorboard": False, "sample.num_steps": 3}\nflag = "--config.train.lr=1"\n'
              'FAST = {"compile": True}\nother = {"not_a_key": 1}')
    assert overridden_keys(source) == {"tensorboard", "sample.num_steps", "train.lr", "compile"}
    assert not {"tensorboard", "train.lr", "compile"} & _config_keys()


@pytest.mark.parametrize("path", TOOLS, ids=os.path.basename)
def test_every_config_key_a_tool_overrides_exists(path):
    with open(path) as f:
        keys = overridden_keys(f.read(), python=path.endswith(".py"))
    assert not keys - _config_keys(), f"{os.path.basename(path)} overrides unknown config keys"
