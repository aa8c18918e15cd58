"""core.settings: Settings is composed of one group per concern without losing anything.

The split must be invisible to the code that reads settings: every field is a flat attribute,
keyword and ``SFUMATO_*`` variable of ``Settings``, each group parses the environment by itself
the same way, and no field is declared twice.
"""

from __future__ import annotations

from pathlib import Path

import pytest
from pydantic import ValidationError

from core.config import Settings
from core.settings import GROUPS, SettingsGroup


def test_settings_is_exactly_the_union_of_its_groups() -> None:
    names = [name for group in GROUPS for name in group.model_fields]
    assert len(names) == len(set(names)), "a field is declared in two groups"
    assert set(names) == set(Settings.model_fields)
    assert set(GROUPS) == set(Settings.__bases__)


def test_no_group_field_shadows_another_groups_property() -> None:
    properties = {n for g in GROUPS for n, v in vars(g).items() if isinstance(v, property)}
    assert not properties & set(Settings.model_fields)


@pytest.mark.parametrize("group", GROUPS, ids=lambda g: g.__name__)
def test_each_group_alone_agrees_with_settings(group: type[SettingsGroup], monkeypatch: pytest.MonkeyPatch) -> None:
    name = next(iter(group.model_fields))
    monkeypatch.setenv(f"sfumato_{name}", str(getattr(Settings(), name)))  # prefixed, any case
    alone = group()
    composed = Settings()
    for field_name in group.model_fields:
        if field_name != "data_dir":  # set by the test session's environment, same in both
            assert getattr(alone, field_name) == getattr(composed, field_name)


def test_env_and_validation_reach_fields_of_every_group(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("SFUMATO_S3_BUCKET", "images")  # storage
    monkeypatch.setenv("SFUMATO_MAX_LORAS", "2")  # models
    monkeypatch.setenv("SFUMATO_MAX_BATCH", "4")  # batching
    monkeypatch.setenv("SFUMATO_MAX_N", "3")  # request limits
    monkeypatch.setenv("SFUMATO_AUTH_ENABLED", "false")  # security
    monkeypatch.setenv("SFUMATO_WEBHOOK_MAX_ATTEMPTS", "2")  # delivery
    monkeypatch.setenv("SFUMATO_LOG_FORMAT", "text")  # observability
    monkeypatch.setenv("SFUMATO_API_PORT", "9001")  # API server
    monkeypatch.setenv("SFUMATO_JOB_ATTEMPTS", "5")  # runtime
    s = Settings()
    got = (s.s3_bucket, s.max_loras, s.max_batch, s.max_n, s.auth_enabled, s.webhook_max_attempts)
    assert got == ("images", 2, 4, 3, False, 2)
    assert (s.log_format, s.api_port, s.job_attempts, s.storage_backend) == ("text", 9001, 5, "s3")
    monkeypatch.setenv("SFUMATO_MAX_BATCH", "65")
    with pytest.raises(ValidationError, match="max_batch"):
        Settings()


def test_cross_group_properties(tmp_path: Path) -> None:
    s = Settings(data_dir=tmp_path, max_controlnets=0, max_upload_bytes=3 * 1024)
    assert s.resolved_lora_dir == tmp_path / "loras"
    assert s.resolved_max_body_bytes == 2 * (4096 + 4) + 64 * 1024
    assert Settings(max_body_bytes=4096).resolved_max_body_bytes == 4096
    assert Settings(models_file=tmp_path / "m.toml").resolved_queue_without_workers is False
    assert Settings(cors_allow_origins=" a , b,").cors_origins == ["a", "b"]
