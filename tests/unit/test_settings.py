"""core.config: SFUMATO_* parsing, 'auto' storage, model ids, and the cached factory."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Literal

import pytest
from pydantic import SecretStr, ValidationError

from core.config import Settings, get_settings
from tests.support.env import settings_env


def test_env_prefix_parsing(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("SFUMATO_REDIS_URL", "redis://10.0.0.5:6380/2")
    monkeypatch.setenv("SFUMATO_MAX_STEPS", "50")
    monkeypatch.setenv("SFUMATO_MAX_GUIDANCE", "12.5")
    monkeypatch.setenv("SFUMATO_S3_PATH_STYLE", "false")
    monkeypatch.setenv("SFUMATO_DATA_DIR", str(tmp_path))
    monkeypatch.setenv("SFUMATO_S3_SECRET_ACCESS_KEY", "hunter2")
    monkeypatch.setenv("SFUMATO_DEVICE", "cpu")
    monkeypatch.setenv("MAX_STEPS", "7")  # unprefixed: ignored
    settings = Settings()
    assert settings.redis_url == "redis://10.0.0.5:6380/2"
    assert settings.max_steps == 50
    assert settings.max_guidance == 12.5
    assert settings.s3_path_style is False
    assert settings.data_dir == tmp_path
    assert settings.device == "cpu"
    assert settings.s3_secret_access_key is not None
    assert settings.s3_secret_access_key.get_secret_value() == "hunter2"
    assert "hunter2" not in repr(settings)


def test_env_names_are_case_insensitive(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("sfumato_max_n", "3")
    assert Settings().max_n == 3


def test_invalid_env_value_is_refused(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SFUMATO_MAX_STEPS", "0")
    with pytest.raises(ValidationError, match="max_steps"):
        Settings()
    monkeypatch.setenv("SFUMATO_MAX_STEPS", "10")
    monkeypatch.setenv("SFUMATO_STORAGE", "ftp")
    with pytest.raises(ValidationError, match="storage"):
        Settings()


def test_init_arguments_win_over_env(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SFUMATO_MAX_N", "3")
    assert Settings(max_n=5).max_n == 5


def test_session_environment_is_isolated(session_data_dir: Path) -> None:
    # The root conftest strips the developer's SFUMATO_* and points the data dir at tmp.
    assert {k for k in os.environ if k.upper().startswith("SFUMATO_")} == {"SFUMATO_DATA_DIR"}
    assert Settings().data_dir == session_data_dir
    assert os.environ["HF_HUB_OFFLINE"] == "1"


@pytest.mark.parametrize(
    ("storage", "bucket", "backend"),
    [
        ("auto", None, "local"),
        ("auto", "images", "s3"),
        ("local", "images", "local"),
        ("s3", None, "s3"),
        ("s3", "images", "s3"),
    ],
)
def test_storage_auto_resolution(storage: Literal["auto", "local", "s3"], bucket: str | None, backend: str) -> None:
    assert Settings(storage=storage, s3_bucket=bucket).storage_backend == backend


def test_local_storage_dir_defaults_under_data_dir(tmp_path: Path) -> None:
    assert Settings(data_dir=tmp_path).resolved_local_storage_dir == tmp_path / "images"
    other = tmp_path / "elsewhere"
    assert Settings(data_dir=tmp_path, local_storage_dir=other).resolved_local_storage_dir == other


@pytest.mark.parametrize(
    ("model", "model_id", "expected"),
    [
        ("tiny", None, "tiny"),
        ("/models/My-SD15", None, "my-sd15"),
        ("/models/My-SD15/", None, "my-sd15"),
        ("runwayml/stable-diffusion-v1-5", None, "stable-diffusion-v1-5"),
        ("/models/My-SD15", "house-style", "house-style"),
        ("tiny", "tiny-test", "tiny-test"),
    ],
)
def test_model_id_derivation(model: str, model_id: str | None, expected: str) -> None:
    assert Settings(model=model, model_id=model_id).resolved_model_id == expected


def test_get_settings_is_cached_until_cleared(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SFUMATO_MAX_N", "2")
    first = get_settings()
    assert first.max_n == 2
    monkeypatch.setenv("SFUMATO_MAX_N", "6")
    assert get_settings() is first  # built once: later env changes are not seen
    assert get_settings().max_n == 2
    get_settings.cache_clear()
    fresh = get_settings()
    assert fresh is not first and fresh.max_n == 6


def test_settings_env_round_trip(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    original = Settings(
        data_dir=tmp_path,
        redis_url="redis://127.0.0.1:1234/3",
        s3_bucket="images",
        s3_secret_access_key=SecretStr("s3cret"),
        s3_path_style=False,
        max_guidance=12.5,
        model="/models/sd15",
        model_id="house",
    )
    env = settings_env(original, base={"PATH": "/usr/bin", "SFUMATO_STALE_KNOB": "1"})
    assert env["PATH"] == "/usr/bin" and "SFUMATO_STALE_KNOB" not in env
    assert env["SFUMATO_S3_SECRET_ACCESS_KEY"] == "s3cret"
    for name, value in env.items():
        if name.startswith("SFUMATO_"):
            monkeypatch.setenv(name, value)
    assert Settings() == original
