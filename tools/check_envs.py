"""Check that the conda envs (envs/*.yaml) resolve, without conda: pip's resolver on PyPI.

Each env takes Python and pip from conda-forge and every other package from PyPI
(its `pip:` list). This runs `pip install --dry-run --report` on each env's pip list
for the env's Python version on this platform (what `conda env create` asks pip for,
but wheels only, which pip needs for another Python version: stricter than conda's pip,
which may build an sdist), and prints the versions chosen for the packages the env lists,
beside the versions installed here (the tested ones). pip reads the wheels' metadata
(PEP 658, or HTTP range requests where the index lacks it) and downloads no wheels.
Exit status 1 if an env does not resolve.

This machine's pip configuration (config files; PIP_* variables naming indexes,
find-links or constraints) is ignored unless --use-pip-config is given, so the result
is what a fresh machine gets from PyPI.

    python tools/check_envs.py [--index-url URL] [--use-pip-config] [ENV ...]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from importlib import metadata
from pathlib import Path

import yaml
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

REPO = Path(__file__).resolve().parents[1]
PYPI = "https://pypi.org/simple"
# pip settings from the environment that are kept with the machine's pip config ignored.
KEPT_PIP_VARIABLES = {
    "PIP_CERT",
    "PIP_CLIENT_CERT",
    "PIP_PROXY",
    "PIP_DEFAULT_TIMEOUT",
    "PIP_RETRIES",
    "PIP_TRUSTED_HOST",
}


def read_env(path: Path) -> tuple[str, list[str]]:
    """The env's Python version (from `python=X.Y`) and its pip requirements."""
    dependencies = yaml.safe_load(path.read_text())["dependencies"]
    pythons = [
        dep.split("=", 1)[1]
        for dep in dependencies
        if isinstance(dep, str) and dep.startswith("python=")
    ]
    if len(pythons) != 1:
        raise SystemExit(f"{path}: expected one python=X.Y pin, found {pythons}")
    pip = [entry for dep in dependencies if isinstance(dep, dict) for entry in dep.get("pip", [])]
    return pythons[0], pip


def pip_environment(use_pip_config: bool) -> dict[str, str]:
    if use_pip_config:
        return dict(os.environ)
    env = {
        key: value
        for key, value in os.environ.items()
        if not key.startswith("PIP_") or key in KEPT_PIP_VARIABLES
    }
    env["PIP_CONFIG_FILE"] = os.devnull
    return env


def resolve(
    python: str, requirements: list[str], index_url: str | None, env: dict[str, str]
) -> tuple[dict[str, str] | None, str]:
    """{canonical name: version} of everything pip would install, or None and pip's error."""
    with tempfile.TemporaryDirectory() as tmp:
        report = Path(tmp) / "report.json"
        command = [
            sys.executable,
            "-m",
            "pip",
            "install",
            "--dry-run",
            "--quiet",
            "--ignore-installed",
            "--disable-pip-version-check",
            "--no-input",
            "--report",
            str(report),
            "--python-version",
            python,
            "--only-binary=:all:",
            # Where the index serves no PEP 658 metadata (some mirrors), read each
            # wheel's metadata with HTTP range requests instead of downloading it
            # (torch and its CUDA wheels are GBs). pip prefers PEP 658 when served.
            "--use-feature=fast-deps",
        ]
        if index_url:
            command += ["--index-url", index_url]
        result = subprocess.run([*command, *requirements], env=env, capture_output=True, text=True)
        if result.returncode != 0:
            return None, (result.stderr or result.stdout).strip()
        installs = json.loads(report.read_text())["install"]
    return {
        canonicalize_name(item["metadata"]["name"]): item["metadata"]["version"]
        for item in installs
    }, ""


def tested_version(name: str) -> str:
    try:
        return metadata.version(name)
    except metadata.PackageNotFoundError:
        return "not installed"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("envs", nargs="*", help="env names (default: all of envs/*.yaml)")
    parser.add_argument("--index-url", default=PYPI, help=f"package index (default {PYPI})")
    parser.add_argument(
        "--use-pip-config",
        action="store_true",
        help="keep this machine's pip configuration (indexes, constraints)",
    )
    args = parser.parse_args()
    paths = (
        [REPO / "envs" / f"{name}.yaml" for name in args.envs]
        if args.envs
        else sorted((REPO / "envs").glob("*.yaml"))
    )
    index_url = None if args.use_pip_config and args.index_url == PYPI else args.index_url
    env = pip_environment(args.use_pip_config)
    print(
        f"pip's resolver, wheels only, platform of this machine, index "
        f"{index_url or 'from pip config'}"
    )
    failed = []
    start = time.monotonic()
    for path in paths:
        python, requirements = read_env(path)
        began = time.monotonic()
        resolved, error = resolve(python, requirements, index_url, env)
        took = time.monotonic() - began
        if resolved is None:
            failed.append(path.stem)
            print(f"\n{path.stem}: DOES NOT RESOLVE for Python {python} ({took:.1f} s)")
            print("  " + error.replace("\n", "\n  "))
            continue
        print(
            f"\n{path.stem}: resolves for Python {python}, {len(resolved)} packages ({took:.1f} s)"
        )
        for entry in requirements:
            name = Requirement(entry).name
            chosen = resolved.get(canonicalize_name(name), "MISSING")
            print(f"  {entry:26} {chosen:16} (tested here: {tested_version(name)})")
    summary = f"{len(paths) - len(failed)} of {len(paths)} envs resolve"
    failures = f"; failed: {', '.join(failed)}" if failed else ""
    print(f"\n{summary} ({time.monotonic() - start:.0f} s){failures}")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
