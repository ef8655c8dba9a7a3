"""The app installs without its test extra: everything it imports comes from its own dependencies.

The tests run with the test extra installed, whose packages (playwright, schemathesis...) pull in
others; an import the app needs that only they provide would pass every test here and break
`pip install -e .` on a fresh machine.
"""

from __future__ import annotations

import json
import subprocess
import sys
from importlib import metadata

from packaging.markers import default_environment
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

# Imported only when first used (SQLAlchemy's async engine imports greenlet in the migrations).
LAZY_IMPORTS = ["greenlet", "sqlalchemy.ext.asyncio"]
# Imported by a dependency only when present (a try/except import), needed by none.
OPPORTUNISTIC = {"rich": "scikit-learn", "sniffio": "anyio"}

_IMPORTED = f"""
import importlib, json, sys
import fraudapp.main, fraudapp.cli, fraudapp.bench, fraudapp.ml.training, fraudapp.embedded
for name in {LAZY_IMPORTS!r}:
    importlib.import_module(name)
print(json.dumps(sorted({{m.split(".")[0] for m in sys.modules}})))
"""


def runtime_closure(project: str = "fraudapp") -> set[str]:
    """Distributions reachable from `project`'s requirements, without any extra of its own."""
    seen: set[str] = set()
    pending: list[tuple[str, frozenset[str]]] = [(project, frozenset())]
    while pending:
        name, extras = pending.pop()
        key = f"{canonicalize_name(name)}{sorted(extras)}"
        if key in seen:
            continue
        seen.add(key)
        try:
            requirements = metadata.requires(name) or []
        except metadata.PackageNotFoundError:
            continue  # an optional dependency not installed here
        for text in requirements:
            requirement = Requirement(text)
            environments = [default_environment() | {"extra": e} for e in extras or {""}]
            if requirement.marker and not any(
                requirement.marker.evaluate(env) for env in environments
            ):
                continue
            pending.append((requirement.name, frozenset(requirement.extras)))
    return {key.split("[")[0] for key in seen}


def test_every_module_the_app_imports_is_a_declared_dependency() -> None:
    output = subprocess.run(
        [sys.executable, "-c", _IMPORTED], check=True, capture_output=True, text=True
    ).stdout
    modules = json.loads(output.strip().splitlines()[-1])
    providers = metadata.packages_distributions()
    closure = runtime_closure()
    missing = {
        module: providers[module]
        for module in modules
        if module in providers
        and module != "fraudapp"
        and module not in OPPORTUNISTIC
        and not any(canonicalize_name(d) in closure for d in providers[module])
    }
    assert missing == {}, "imported at runtime but only installed by the test extra"


def test_the_closure_follows_extras() -> None:
    closure = runtime_closure()
    assert "greenlet" in closure  # through sqlalchemy[asyncio]
    assert "pytest" not in closure  # the test extra is not part of the app
