"""The architecture, checked: the layers contract (import-linter, pyproject.toml), module and
function lengths, and a README layout section that lists every module of the package."""
import ast
import os
import re

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PKG = os.path.join(ROOT, "fcnn")
MAX_MODULE_LINES, MAX_FUNCTION_LINES = 450, 80


def _modules():
    for dirpath, _, files in os.walk(PKG):
        for f in sorted(files):
            if f.endswith(".py"):
                yield os.path.relpath(os.path.join(dirpath, f), ROOT)


def test_every_import_points_down_the_layers():
    """import-linter with pyproject.toml's contracts; a new upward import fails here and in CI."""
    cli = pytest.importorskip("importlinter.cli")
    cwd = os.getcwd()
    os.chdir(ROOT)
    try:
        status = cli.lint_imports(config_filename=os.path.join(ROOT, "pyproject.toml"), no_cache=True)
    finally:
        os.chdir(cwd)
    assert status == 0, "lint-imports found an import that breaks the layers (run `lint-imports` to see it)"


def test_modules_and_functions_stay_readable():
    too_long = []
    for rel in _modules():
        text = open(os.path.join(ROOT, rel), encoding="utf-8").read()
        lines = text.count("\n") + (not text.endswith("\n"))
        if lines > MAX_MODULE_LINES:
            too_long.append(f"{rel}: {lines} lines > {MAX_MODULE_LINES}")
        for node in ast.walk(ast.parse(text)):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                n = node.end_lineno - node.lineno + 1
                if n > MAX_FUNCTION_LINES:
                    too_long.append(f"{rel}:{node.lineno} {node.name}: {n} lines > {MAX_FUNCTION_LINES}")
    assert not too_long, "\n".join(too_long)


def test_readme_layout_lists_every_module_and_tests_mirror_them():
    readme = open(os.path.join(ROOT, "README.md"), encoding="utf-8").read()
    section = readme.split("## Layout", 1)[1].split("\n## ", 1)[0]
    listed = set(re.findall(r"^(fcnn/\S+\.py)", section, flags=re.M))
    modules = {rel.replace(os.sep, "/") for rel in _modules() if not rel.endswith("__init__.py")}
    modules |= {"fcnn/__init__.py"}
    assert listed == modules, f"README lists {sorted(listed - modules)} that do not exist, misses {sorted(modules - listed)}"
    tests = set(os.listdir(os.path.join(ROOT, "tests")))
    public = {os.path.basename(m) for m in modules if not os.path.basename(m).startswith("_")}
    missing = sorted(m for m in public if f"test_{m}" not in tests)
    assert not missing, f"modules without a tests/test_<module>.py: {missing}"
