"""Server console scripts that say which extra is missing instead of printing a traceback.

``sfumato-server`` installs the shared contract; each role's dependencies come with its extra
(``[api]``, ``[worker]``). A script installed without its extra would die on an ImportError
deep in its imports, so each entry point calls :func:`require_extra` before importing them.
Standard library only: this must run when nothing else is installed.
"""

from __future__ import annotations

import importlib.util
import sys
from collections.abc import Iterable

#: The distribution whose extras the message names.
DISTRIBUTION = "sfumato-server"


def missing_modules(modules: Iterable[str]) -> list[str]:
    """The top-level ``modules`` that cannot be imported here."""
    return [module for module in modules if importlib.util.find_spec(module) is None]


def require_extra(script: str, extra: str, modules: Iterable[str]) -> None:
    """Exit 2 with one line naming ``extra`` when any of ``modules`` is not installed."""
    missing = missing_modules(modules)
    if missing:
        install = f"pip install '{DISTRIBUTION}[{extra}]'"
        sys.stderr.write(f"{script} needs the [{extra}] extra: {install} (missing: {', '.join(missing)})\n")
        raise SystemExit(2)
