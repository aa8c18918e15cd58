"""No pickle anywhere: not in the source, not in what the queue stores in Redis."""

from __future__ import annotations

import json
import re
import time
import zlib
from pathlib import Path

import redis
from rq.job import Job

from core.jobs import JobStore, connect, new_job_id
from core.schemas import JobPayload
from tests.conftest import SettingsFactory

ROOT = Path(__file__).resolve().parents[2]
PICKLE_USE = re.compile(r"^\s*(import|from)\s+(pickle|cPickle|_pickle|dill|cloudpickle|joblib|shelve)\b", re.M)


def test_no_module_of_the_service_imports_a_pickle_library() -> None:
    packages = ("core", "api", "worker", "client", "devstack", "training")
    assert all((ROOT / package).is_dir() for package in packages)
    offenders = [
        str(path.relative_to(ROOT))
        for package in packages
        for path in (ROOT / package).rglob("*.py")
        if PICKLE_USE.search(path.read_text())
    ]
    assert offenders == []


def test_a_queued_job_is_json_in_redis(make_settings: SettingsFactory, clean_redis: redis.Redis) -> None:
    settings = make_settings()
    payload = JobPayload(
        job_id=new_job_id(), tenant="acme", model="tiny", mode="txt2img", prompt="p", negative_prompt="",
        width=64, height=64, steps=2, guidance_scale=7.5, scheduler="ddim", seed=1, n=1, clip_skip=0,
        output_format="png", created_at=time.time(),
    )  # fmt: skip
    JobStore(connect(settings), settings).enqueue(payload)
    raw = clean_redis.hget(Job.key_for(payload.job_id), "data")
    assert raw is not None
    data = json.loads(zlib.decompress(raw))  # RQ compresses; the serializer underneath is JSON
    assert payload.job_id in json.dumps(data) and b"\x80" not in raw[:1]  # no pickle protocol header
