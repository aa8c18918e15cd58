"""Fixtures for integration tests that drive the engine in-process."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.support.engine import engine_settings
from worker.pipelines.engine import Engine


@pytest.fixture(scope="session")
def data_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("sfumato-data")


@pytest.fixture(scope="session")
def engine(data_dir: Path) -> Engine:
    """The tiny model on CPU, float32, loaded once per test session."""
    eng = Engine.load(engine_settings(data_dir))
    eng.warmup()
    return eng
