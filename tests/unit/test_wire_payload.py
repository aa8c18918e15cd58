"""Queue JSON stays readable by workers from before an optional feature (rolling deploys)."""

from __future__ import annotations

from typing import Any

import pytest
from pydantic import ConfigDict, ValidationError, create_model

from core.jobs import wire_payload
from core.schemas import JobPayload
from tests.support.engine import payload


def _older_worker_payload() -> type:
    """A JobPayload as a worker that knows only the required fields would define it."""
    fields: dict[str, Any] = {
        name: (field.annotation, ...) for name, field in JobPayload.model_fields.items() if field.is_required()
    }
    return create_model("OlderJobPayload", __config__=ConfigDict(extra="forbid"), **fields)


def test_a_plain_job_carries_no_optional_feature_fields_and_round_trips() -> None:
    plain = payload()
    wire = wire_payload(plain)
    assert not {"loras", "exact", "preview", "image_b64", "mask_b64", "strength"} & set(wire)
    assert set(wire) >= {name for name, field in JobPayload.model_fields.items() if field.is_required()}
    assert JobPayload.model_validate(wire) == plain


def test_an_older_worker_accepts_plain_jobs_but_not_jobs_that_use_a_newer_feature() -> None:
    older = _older_worker_payload()
    older.model_validate(wire_payload(payload()))
    with_feature = wire_payload(payload(exact=True))
    assert with_feature["exact"] is True
    with pytest.raises(ValidationError):
        older.model_validate(with_feature)
