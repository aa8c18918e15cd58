"""Tenant isolation through the whole service (uvicorn + worker + Redis + SeaweedFS or disk).

Tenant B cannot read, list, cancel or fetch the images of tenant A's jobs, including by
rewriting one of its own signed URLs to point at A's storage key, or by fetching A's object
from the store without a signature. URLs are minted only after the ownership check and
expire after SFUMATO_URL_EXPIRY_S (15 minutes by default).
"""

from __future__ import annotations

import secrets
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import parse_qs, urlsplit

import httpx
import pytest

from devstack.net import free_port
from tests.support.env import s3_env, service_env
from tests.support.keys import bearer, env_key
from tests.support.processes import ServiceProcess, start_api, start_worker, wait_for_workers

pytestmark = pytest.mark.timeout(600)


@dataclass
class TwoTenants:
    base_url: str
    alice: httpx.Client
    bob: httpx.Client
    worker: ServiceProcess

    def generate(self, client: httpx.Client, prompt: str) -> dict:
        resp = client.post("/v1/images?wait=120", json={"prompt": prompt, "steps": 2, "seed": 3})
        assert resp.status_code == 200, (resp.text, self.worker.log_tail())
        job = resp.json()
        assert job["status"] == "succeeded", job
        return job


def _stack(env: dict[str, str], log_dir: Path) -> Iterator[TwoTenants]:
    port = free_port()
    worker = start_worker(env, log_dir)
    api = start_api(env, port, log_dir)
    base_url = f"http://127.0.0.1:{port}"
    alice, bob = bearer(env_key(env, tenant="alice")), bearer(env_key(env, tenant="bob"))
    try:
        wait_for_workers(base_url, 1, 240, worker, api, headers=alice)
        with (
            httpx.Client(base_url=base_url, timeout=150, headers=alice) as a,
            httpx.Client(base_url=base_url, timeout=150, headers=bob) as b,
        ):
            yield TwoTenants(base_url, a, b, worker)
    finally:
        worker.stop()
        api.stop()


def _env(redis_server, tmp: Path) -> dict[str, str]:
    return service_env(redis_server.url, tmp, "sec", SFUMATO_TORCH_THREADS="1")


@pytest.fixture(scope="module")
def s3_tenants(redis_server, seaweed, tmp_path_factory) -> Iterator[TwoTenants]:
    tmp = tmp_path_factory.mktemp("sec-s3")
    env = {**_env(redis_server, tmp), **s3_env(seaweed, f"sec-{secrets.token_hex(4)}")}
    yield from _stack(env, tmp / "logs")


@pytest.fixture(scope="module")
def local_tenants(redis_server, tmp_path_factory) -> Iterator[TwoTenants]:
    tmp = tmp_path_factory.mktemp("sec-local")
    yield from _stack({**_env(redis_server, tmp), "SFUMATO_STORAGE": "local"}, tmp / "logs")


def _api_refuses_bob(stack: TwoTenants, job: dict) -> None:
    for resp in (stack.bob.get(f"/v1/images/{job['id']}"), stack.bob.delete(f"/v1/images/{job['id']}")):
        assert resp.status_code == 404 and resp.json()["error"]["code"] == "not_found"
        assert "url" not in resp.text  # nothing minted for a caller who failed the check
    assert job["id"] not in {j["id"] for j in stack.bob.get("/v1/images").json()["data"]}
    assert job["id"] in {j["id"] for j in stack.alice.get("/v1/images").json()["data"]}


def _with_path(url: str, path: str) -> str:
    parts = urlsplit(url)
    return parts._replace(path=path).geturl()


def test_s3_tenant_b_cannot_reach_tenant_a_images(s3_tenants: TwoTenants, seaweed) -> None:
    a_job = s3_tenants.generate(s3_tenants.alice, "alice's private fox")
    b_job = s3_tenants.generate(s3_tenants.bob, "bob's own fox")
    _api_refuses_bob(s3_tenants, a_job)
    a_url, b_url = a_job["images"][0]["url"], b_job["images"][0]["url"]
    a_path, b_path = urlsplit(a_url).path, urlsplit(b_url).path
    assert a_path.endswith(f"/alice/{a_job['id']}/0.png") and b_path.endswith(f"/bob/{b_job['id']}/0.png")
    query = parse_qs(urlsplit(a_url).query)
    assert query["X-Amz-Expires"] == ["900"]  # 15 minutes by default
    assert httpx.get(a_url, timeout=10).status_code == 200  # the owner's URL works
    # Bob's valid presigned URL, pointed at Alice's key: the signature covers the path.
    forged = httpx.get(_with_path(b_url, a_path), timeout=10)
    assert forged.status_code == 403 and b"SignatureDoesNotMatch" in forged.content
    # No signature at all: SeaweedFS with credentials refuses anonymous reads.
    anonymous = httpx.get(_with_path(seaweed.endpoint_url, a_path), timeout=10)
    assert anonymous.status_code == 403 and b"AccessDenied" in anonymous.content


def test_local_tenant_b_cannot_reach_tenant_a_images(local_tenants: TwoTenants) -> None:
    minted_from = int(time.time())  # alice's URL is minted after this moment
    a_job = local_tenants.generate(local_tenants.alice, "alice's private fox")
    b_job = local_tenants.generate(local_tenants.bob, "bob's own fox")
    _api_refuses_bob(local_tenants, a_job)
    a_url, b_url = a_job["images"][0]["url"], b_job["images"][0]["url"]
    a_path = urlsplit(a_url).path
    assert a_path == f"/v1/files/alice/{a_job['id']}/0.png"
    expires = int(parse_qs(urlsplit(a_url).query)["expires"][0])
    assert minted_from + 900 <= expires <= int(time.time()) + 900  # the default 15-minute expiry
    assert httpx.get(a_url, timeout=10).status_code == 200
    forged = httpx.get(_with_path(b_url, a_path), headers=local_tenants.bob.headers, timeout=10)
    assert forged.status_code == 403 and forged.json()["error"]["code"] == "invalid_signature"
    unsigned = httpx.get(local_tenants.base_url + a_path, headers=local_tenants.bob.headers, timeout=10)
    assert unsigned.status_code in (403, 422) and b"PNG" not in unsigned.content
    traversal = httpx.get(
        local_tenants.base_url + "/v1/files/bob/../alice/" + a_job["id"] + "/0.png",
        params=parse_qs(urlsplit(b_url).query),
        timeout=10,
    )
    assert traversal.status_code in (403, 404) and b"PNG" not in traversal.content
