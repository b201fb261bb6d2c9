"""Host side of the VM runs: what goes into the share, built from the checkout.

    stage.py requirements              the VM venv's requirements, one a line
    stage.py podvisor TAR VENV         podvisor as installed into VENV
    stage.py tree TAR                  tests/ and pyproject.toml (for pytest)

The VM has no network and software emulation makes every process start
there cost seconds, so nothing is built or installed inside it: the venv
is made on the host with the same interpreter the VM has (Debian's
python3.11) at the very path it gets inside, and podvisor goes into it as
a tarball of what ``pip install`` would lay out (the packages of
pyproject.toml, the generated CRI stubs, the console scripts), byte-compiled
here.
"""

from __future__ import annotations

import importlib.metadata
import io
import os
import re
import subprocess
import sys
import tarfile
import tempfile
import tomllib
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent.parent
# Test extras the VM does not need: linters, type stubs, the stub generator.
HOST_ONLY = ("mypy", "ruff", "types-", "grpcio-tools")


def _pyproject() -> dict[str, object]:
    with open(REPO / "pyproject.toml", "rb") as f:
        return tomllib.load(f)


def requirements() -> list[str]:
    """pyproject.toml's, plus a floor on grpcio: the CRI stubs staged into
    the VM were generated on the host and refuse to import under a grpcio
    older than the grpcio-tools that made them. Being in the list, the floor
    is in the VM venv's cache key too, so a newer generator gets a new venv."""
    project = _pyproject()["project"]
    assert isinstance(project, dict)
    test = [r for r in project["optional-dependencies"]["test"]
            if not r.startswith(HOST_ONLY)]
    return [*project["dependencies"], *test, f"grpcio>={_stubs_grpc_version()}"]


def _stubs_grpc_version() -> str:
    """The grpcio the generated stubs ask for; setup.py's build_py keeps
    stubs that are newer than api.proto, else this venv's grpcio-tools
    makes them."""
    stubs = REPO / "proto" / "api_pb2_grpc.py"
    source = REPO / "proto" / "api.proto"
    if stubs.exists() and stubs.stat().st_mtime >= source.stat().st_mtime:
        found = re.search(r"^GRPC_GENERATED_VERSION = '([^']+)'$", stubs.read_text(), re.M)
        if found:
            return found.group(1)
    return importlib.metadata.version("grpcio-tools")


def _site_packages(venv: Path) -> str:
    found = sorted((venv / "lib").glob("python3*/site-packages"))
    if len(found) != 1:
        raise SystemExit(f"stage.py: no single site-packages in {venv}: {found}")
    return str(found[0].relative_to(venv))


def podvisor(out: Path, venv: Path) -> None:
    """setuptools' build_py (it generates the stubs and copies exactly the
    packages pyproject.toml lists) and dist_info, byte-compiled by the VM's
    interpreter, plus one script per ``[project.scripts]`` entry."""
    site = _site_packages(venv)
    with tempfile.TemporaryDirectory(prefix="pv-stage-") as tmp:
        build = Path(tmp) / "build"
        build.mkdir()
        # dist_info: the metadata importlib.metadata reads (Version's answer).
        for command in (["build_py", "--build-lib", str(build)],
                        ["dist_info", "--output-dir", str(build)]):
            done = subprocess.run([sys.executable, "setup.py", "-q", *command], cwd=REPO,
                                  capture_output=True, text=True, check=False)
            if done.returncode != 0:
                raise SystemExit(f"stage.py: setup.py {command[0]} failed:\n"
                                 f"{done.stdout}{done.stderr}")
        subprocess.run([str(venv / "bin" / "python"), "-m", "compileall", "-q", str(build)],
                       check=True)
        scripts = _pyproject()["project"]
        assert isinstance(scripts, dict)
        with tarfile.open(out, "w") as tar:
            tar.add(build, arcname=site)
            for name, target in scripts["scripts"].items():
                module, func = target.split(":")
                text = (f"#!{venv}/bin/python\nimport sys\nfrom {module} import {func}\n"
                        f"sys.exit({func}())\n").encode()
                info = tarfile.TarInfo(f"bin/{name}")
                info.size, info.mode = len(text), 0o755
                tar.addfile(info, io.BytesIO(text))


def tree(out: Path) -> None:
    def skip_caches(info: tarfile.TarInfo) -> tarfile.TarInfo | None:
        parts = Path(info.name).parts
        return None if "__pycache__" in parts or ".pytest_cache" in parts else info

    with tarfile.open(out, "w") as tar:
        tar.add(REPO / "pyproject.toml", arcname="pyproject.toml")
        tar.add(REPO / "tests", arcname="tests", filter=skip_caches)


def main(argv: list[str]) -> None:
    if argv[:1] == ["requirements"] and len(argv) == 1:
        print("\n".join(requirements()))
    elif argv[:1] == ["podvisor"] and len(argv) == 3:
        podvisor(Path(argv[1]), Path(argv[2]))
    elif argv[:1] == ["tree"] and len(argv) == 2:
        tree(Path(argv[1]))
    else:
        raise SystemExit(__doc__)


if __name__ == "__main__":
    os.umask(0o022)
    main(sys.argv[1:])
