"""Compiled engines for tests: loaded by the caller, then put back as they were.

Why: installing the fast path sets inductor's cache variables in the process environment and
replaces the resident modules' forwards; a test module that leaves either behind changes how
every later module's engines run."""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator

from worker.pipelines.engine import Engine

#: Set by FastPath.install (worker/pipelines/fast_path.py configure_cache).
CACHE_VARIABLES = ("TORCHINDUCTOR_CACHE_DIR", "TRITON_CACHE_DIR")


def compiled_engine(load: Callable[[], Engine]) -> Iterator[Engine]:
    """A fixture body: the engine ``load`` returns (compiled, usually warmed), then its forwards
    and the cache variables restored."""
    saved = {name: os.environ.get(name) for name in CACHE_VARIABLES}
    engine = load()
    try:
        yield engine
    finally:
        assert engine.fast_path is not None
        engine.fast_path.uninstall([engine._components["unet"], engine._components["vae"].decoder])
        for name, value in saved.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value
