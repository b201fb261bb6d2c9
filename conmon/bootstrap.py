"""Run podvisor-conmon from its files, on an interpreter started ``-I -S``.

``python -I -S <this file> ARG...`` is ``podvisor-conmon ARG...`` without
the site module: no site-packages on sys.path, no .pth hooks run, so the
process holds only the stdlib modules conmon imports (conmon is stdlib
only). The runtime pool starts the monitor zygote this way (zygote.py):
every page it holds is shared by the monitors it forks.

Without site, ``podvisor.conmon`` cannot be found on sys.path (an editable
install maps it from a folder of another name), so this file registers its
own directory as that package, then runs cli.main. No relative import may
appear here: this file runs as ``__main__``, outside the package.
"""

from __future__ import annotations

import importlib
import importlib.util
import os
import sys
import types

ROOT = "podvisor"
PACKAGE = f"{ROOT}.conmon"


def main() -> int:
    here = os.path.dirname(os.path.abspath(__file__))
    spec = importlib.util.spec_from_file_location(
        PACKAGE, os.path.join(here, "__init__.py"), submodule_search_locations=[here])
    if spec is None or spec.loader is None:
        print(f"podvisor-conmon: cannot load {here} as {PACKAGE}", file=sys.stderr)
        return 1
    # podvisor itself is a namespace without files; some imports of the
    # package's own modules (``from . import x``) look it up.
    root = types.ModuleType(ROOT)
    root.__path__ = []
    sys.modules[ROOT] = root
    package = importlib.util.module_from_spec(spec)
    sys.modules[PACKAGE] = package
    spec.loader.exec_module(package)
    root.conmon = package  # type: ignore[attr-defined]
    cli = importlib.import_module(f"{PACKAGE}.cli")
    status: int = cli.main(sys.argv[1:])
    return status


if __name__ == "__main__":
    sys.exit(main())
