"""Build hook: generate the CRI stubs from proto/api.proto.

The generated modules import each other as ``podvisor.proto.api_pb2``, so
protoc is run on a temporary tree laid out as ``podvisor/proto/api.proto``
and its output copied next to the source. They are build artefacts, listed
in .gitignore, and regenerated whenever api.proto is newer.
"""

from __future__ import annotations

import shutil
import tempfile
from pathlib import Path

from setuptools import setup
from setuptools.command.build_py import build_py

HERE = Path(__file__).resolve().parent
PROTO_DIR = HERE / "proto"
GENERATED = ("api_pb2.py", "api_pb2.pyi", "api_pb2_grpc.py")


def generate_stubs() -> None:
    source = PROTO_DIR / "api.proto"
    outputs = [PROTO_DIR / name for name in GENERATED]
    if all(o.exists() and o.stat().st_mtime >= source.stat().st_mtime for o in outputs):
        return
    from grpc_tools import protoc

    with tempfile.TemporaryDirectory() as tmp:
        tree = Path(tmp) / "podvisor" / "proto"
        tree.mkdir(parents=True)
        shutil.copy(source, tree / "api.proto")
        rc = protoc.main(
            [
                "protoc",
                f"-I{tmp}",
                f"--python_out={tmp}",
                f"--pyi_out={tmp}",
                f"--grpc_python_out={tmp}",
                str(tree / "api.proto"),
            ]
        )
        if rc != 0:
            raise RuntimeError(f"protoc failed on {source} (exit {rc})")
        for name in GENERATED:
            shutil.copy(tree / name, PROTO_DIR / name)


class BuildPyWithStubs(build_py):
    def run(self) -> None:
        generate_stubs()
        super().run()


setup(cmdclass={"build_py": BuildPyWithStubs})
