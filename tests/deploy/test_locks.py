"""The locks: requirements-dev.lock pins every package the tests and the local stack run
(scripts/bootstrap.sh installs with it as constraints), requirements.lock pins, with hashes, the
runtime subset the image installs, at the same versions. A lock that no longer satisfies
pyproject.toml, or a venv that drifted from it, fails here: run scripts/lock, then
scripts/bootstrap.sh."""

from __future__ import annotations

import re
import tomllib
from importlib import metadata
from pathlib import Path

from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

ROOT = Path(__file__).resolve().parents[2]
PIN = re.compile(r"^([A-Za-z0-9._-]+)==([^\s;\\]+)", re.M)


def pins(lock: str) -> dict[str, str]:
    text = (ROOT / lock).read_text()
    found = {canonicalize_name(name): version for name, version in PIN.findall(text)}
    entries = [line for line in text.splitlines() if line and not line.startswith(("#", " "))]
    assert len(found) == len(entries), f"{lock}: every entry is pinned with =="
    return found


def project_requirements() -> list[Requirement]:
    """Every requirement of `.[dev]`: the runtime dependencies and the stack and dev extras."""
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    extras = project["optional-dependencies"]
    specs = [*project["dependencies"], *extras["stack"], *extras["dev"]]
    return [Requirement(s) for s in specs if canonicalize_name(Requirement(s).name) != "kinfer"]


def test_the_dev_lock_satisfies_every_requirement_of_the_project() -> None:
    locked = pins("requirements-dev.lock")
    for req in project_requirements():
        name = canonicalize_name(req.name)
        assert name in locked, f"requirements-dev.lock lacks {req.name}: run scripts/lock"
        assert req.specifier.contains(locked[name], prereleases=True), (
            f"requirements-dev.lock pins {req.name}=={locked[name]}, outside {req.specifier}: run scripts/lock"
        )


def test_the_image_runs_the_versions_the_tests_run() -> None:
    dev, image = pins("requirements-dev.lock"), pins("requirements.lock")
    differ = {n: (v, dev.get(n)) for n, v in image.items() if dev.get(n) != v}
    assert not differ, f"requirements.lock and requirements-dev.lock disagree ({differ}): run scripts/lock"


def test_the_venv_holds_exactly_the_dev_lock() -> None:
    """What the tests import is what the lock says: a new upstream release changes nothing."""
    drift = {}
    for name, version in pins("requirements-dev.lock").items():
        try:
            installed = metadata.version(name)
        except metadata.PackageNotFoundError:
            installed = None
        if installed != version:
            drift[name] = f"locked {version}, installed {installed}"
    assert not drift, f"the venv differs from requirements-dev.lock: {drift}; run scripts/bootstrap.sh"


def test_bootstrap_installs_through_the_dev_lock() -> None:
    script = (ROOT / "scripts" / "bootstrap.sh").read_text()
    assert re.search(r'LOCK="\$\{ROOT\}/requirements-dev\.lock"', script)
    assert 'export PIP_CONSTRAINT="${LOCK}"' in script, "the project's build and its dependencies are constrained"
    installs = re.findall(r'^"\$\{VENV\}/bin/pip" install .*$', script, re.M)
    assert installs and script.index("export PIP_CONSTRAINT") < script.index(installs[0])
