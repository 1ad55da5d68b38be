"""The static rules (pyproject.toml) run in the fast lane, scripts/check: ruff, ruff format, the import
contracts and mypy --strict. Here: that lane is wired in front of the tests, and the contracts are live
(a module importing upwards is reported), checked on a copy so that no test writes into the source tree."""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
from pathlib import Path

from tests.conftest import ROOT

BIN = Path(sys.executable).parent


def test_the_fast_lane_runs_before_the_tests_and_holds_every_static_check() -> None:
    check = (ROOT / "scripts" / "check").read_text()
    for tool in ('ruff" check', 'ruff" format --check', 'lint-imports" --no-cache', 'mypy"'):
        assert tool in check.replace("${BIN}/", ""), tool
    test = (ROOT / "scripts" / "test").read_text()
    assert re.search(r'if \[ "\$#" -eq 0 \]; then scripts/check; fi', test)
    assert test.index("scripts/check") < test.index("pytest")
    assert "scripts/test" in (ROOT / ".ci" / "run").read_text()


def test_a_module_importing_upwards_breaks_the_layering(tmp_path: Path) -> None:
    for name in ("shared", "functions"):
        shutil.copytree(ROOT / name, tmp_path / name, ignore=shutil.ignore_patterns("__pycache__", "static"))
    shutil.copy(ROOT / "pyproject.toml", tmp_path)
    (tmp_path / "shared" / "batch" / "_layering_probe.py").write_text("from shared.web import dispatch  # noqa: F401\n")
    done = subprocess.run(
        [str(BIN / "lint-imports"), "--no-cache"],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=300,
        env={"PYTHONPATH": str(tmp_path), "PATH": "/usr/bin:/bin"},
    )
    assert done.returncode != 0 and "shared.batch._layering_probe -> shared.web.dispatch" in done.stdout, done.stdout


def test_no_module_imports_itself_through_others() -> None:
    """No import cycles between the modules of shared/ and functions/ (imports for typing only aside)."""
    import grimp

    graph = grimp.build_graph("shared", "functions", exclude_type_checking_imports=True, cache_dir=None)
    cycles = []
    for module in sorted(graph.modules):
        for imported in graph.find_modules_directly_imported_by(module):
            if imported != module and graph.chain_exists(importer=imported, imported=module):
                cycles.append(graph.find_shortest_chain(importer=imported, imported=module) + (imported,))
    assert not cycles, f"import cycles: {cycles[:5]}"


# The composition root: Services is built here and handed out nowhere below it.
COMPOSITION_ROOTS = ("functions/", "shared/cli/", "shared/localstack/", "shared/services.py", "shared/web/runtime.py")


def _domain_modules() -> list[Path]:
    found = [*sorted((ROOT / "shared").rglob("*.py")), *sorted((ROOT / "functions").rglob("*.py"))]
    return [p for p in found if not str(p.relative_to(ROOT)).startswith(COMPOSITION_ROOTS)]


def test_no_domain_module_imports_the_container_not_even_for_types() -> None:
    import ast

    offenders = []
    for path in _domain_modules():
        for node in ast.walk(ast.parse(path.read_text())):
            names = []
            if isinstance(node, ast.ImportFrom):
                names = [node.module or ""] + [f"{node.module}.{a.name}" for a in node.names]
            elif isinstance(node, ast.Import):
                names = [a.name for a in node.names]
            if any(n == "shared.services" or n.startswith("shared.services.") for n in names):
                offenders.append(f"{path.relative_to(ROOT)}:{node.lineno}")
    assert offenders == [], f"domain code must receive its collaborators, not import the container: {offenders}"


def test_no_function_below_the_composition_root_takes_the_container() -> None:
    import ast

    offenders = []
    for path in _domain_modules():
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
                params = [a.arg for a in (*node.args.posonlyargs, *node.args.args, *node.args.kwonlyargs)]
                if "services" in params:
                    offenders.append(f"{path.relative_to(ROOT)}:{node.lineno} {node.name}")
    assert offenders == [], f"pass the collaborators a function uses, not the container: {offenders}"
