"""Observability through a real run: an API process and a worker process on a private Redis,
read the way operators read them: the ``/metrics`` text of each process, their JSON log lines,
and a real Prometheus scraping both.

One scenario runs once per module (:func:`run`), in an order that needs no timing luck:

1. API only (no worker yet): a job is submitted and canceled while it is certainly queued, a
   second one waits in the queue, requests are refused by authentication;
2. a worker starts (with metrics on its own port) and runs the queued job, then a successful
   one (n=2), a failing one (an img2img upload whose PNG data is cut short) and one whose
   upload fails (its tenant folder on local disk is a file).

The tests then check what each metric says about it.
"""

from __future__ import annotations

import base64
import io
import json
import os
import secrets
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import pytest
from PIL import Image

from devstack.net import free_port
from tests.support.keys import bearer, env_key
from tests.support.processes import ServiceProcess, start_api, start_worker, wait_until
from tests.support.prometheus import DASHBOARD, RULES, grafana_expr, start_prometheus
from tests.support.scrape import Scrape

pytestmark = pytest.mark.timeout(600)

MAX_BATCH = 4
STEPS = {"queued": 4, "success": 5, "upload": 3}


@dataclass
class Run:
    """What the scenario did and what it saw."""

    api_url: str
    worker_url: str
    api: ServiceProcess
    worker: ServiceProcess
    job_ids: dict[str, str] = field(default_factory=dict)
    jobs: dict[str, dict] = field(default_factory=dict)
    headers: dict[str, httpx.Headers] = field(default_factory=dict)
    before_worker: Scrape | None = None
    api_after: Scrape | None = None
    worker_after: Scrape | None = None


def _truncated_png() -> str:
    buf = io.BytesIO()
    Image.effect_noise((64, 64), 50).convert("RGB").save(buf, format="PNG")
    return base64.b64encode(buf.getvalue()[:200]).decode()


def _ready(url: str) -> bool:
    try:
        return httpx.get(f"{url}/healthz", timeout=1).status_code == 200
    except httpx.HTTPError:
        return False


@pytest.fixture(scope="module")
def run(redis_server, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Run]:
    tmp = tmp_path_factory.mktemp("observability")
    images = tmp / "images"
    images.mkdir()
    images.joinpath("broken").write_text("a file where the tenant's folder should be: uploads fail")
    worker_port = free_port()
    env = {
        "SFUMATO_REDIS_URL": redis_server.url,
        "SFUMATO_DATA_DIR": str(tmp / "data"),
        "SFUMATO_QUEUE_PREFIX": f"e2e-obs-{secrets.token_hex(4)}",
        "SFUMATO_TORCH_THREADS": "2",
        "SFUMATO_URL_SIGNING_KEY": "e2e-signing-key",
        "SFUMATO_STORAGE": "local",
        "SFUMATO_LOCAL_STORAGE_DIR": str(images),
        "SFUMATO_STORAGE_RETRY_BUDGET_S": "0",  # a failed upload fails its job at once
        "SFUMATO_RATE_LIMIT_RPS": "0",
        "SFUMATO_MAX_BATCH": str(MAX_BATCH),
        "SFUMATO_WORKER_METRICS_PORT": str(worker_port),
        "HF_HUB_OFFLINE": "1",
    }
    port = free_port()
    api = start_api(env, port, tmp / "logs")
    api_url = f"http://127.0.0.1:{port}"
    auth = bearer(env_key(env, tenant="default"))
    broken_auth = bearer(env_key(env, tenant="broken"))
    worker = None
    try:
        with httpx.Client(base_url=api_url, timeout=150, headers=auth) as client:
            # --- 1. API only ----------------------------------------------------------------
            body = {"prompt": "never runs", "steps": 2}
            submitted = client.post("/v1/images", json=body, headers={"X-Request-ID": "obs-cancel"})
            assert submitted.status_code == 202, submitted.text
            canceled = client.delete(submitted.headers["location"])
            assert canceled.status_code == 200 and canceled.json()["status"] == "canceled", canceled.text
            queued = client.post("/v1/images", json={"prompt": "waits", "steps": STEPS["queued"], "seed": 1})
            assert queued.status_code == 202
            assert httpx.get(f"{api_url}/v1/images/whatever", timeout=5).status_code == 401  # no key
            assert httpx.get(f"{api_url}/no/such/path", timeout=5).status_code == 401
            wait_until(
                lambda: Scrape.of(api_url).value("sfumato_queue_oldest_job_age_seconds") > 0.05,
                30,
                "the queued job to age",
                api,
            )
            before = Scrape.of(api_url)

            # --- 2. a worker ----------------------------------------------------------------
            worker = start_worker(env, tmp / "logs")
            worker_url = f"http://127.0.0.1:{worker_port}"
            wait_until(lambda: _ready(worker_url), 240, "the worker to be ready", worker, api, interval_s=0.25)
            state = Run(api_url, worker_url, api, worker, before_worker=before)
            state.job_ids = {"canceled": submitted.json()["id"], "queued": queued.json()["id"]}
            wait_until(
                lambda: client.get(queued.headers["location"]).json()["status"] == "succeeded",
                120,
                "the queued job to run",
                worker,
            )
            requests = {
                "success": ({}, {"prompt": "a fox", "steps": STEPS["success"], "n": 2, "seed": 3}),
                "failure": ({}, {"prompt": "x", "image": _truncated_png(), "strength": 0.5, "steps": 4}),
                "upload": (broken_auth, {"prompt": "lost", "steps": STEPS["upload"], "seed": 5}),
            }
            for name, (extra_headers, request) in requests.items():
                headers = {"X-Request-ID": f"obs-{name}", **extra_headers}
                resp = client.post("/v1/images?wait=120", json=request, headers=headers)
                assert resp.status_code == 200, (name, resp.text, worker.log_tail())
                state.jobs[name] = resp.json()
                state.job_ids[name] = resp.json()["id"]
                state.headers[name] = resp.headers
            state.headers["no-id"] = client.get("/v1/models").headers
            wait_until(
                lambda: Scrape.of(worker_url).value("sfumato_worker_state", state="idle") == 1,
                30,
                "the worker to be idle",
                worker,
            )
            state.worker_after = Scrape.of(worker_url)
            state.api_after = Scrape.of(api_url)
            yield state
    finally:
        if worker is not None:
            worker.stop()
        api.stop()


# --- the run went as planned ---------------------------------------------------------------


def test_the_scenario_ended_as_planned(run: Run) -> None:
    assert run.jobs["success"]["status"] == "succeeded"
    assert (run.jobs["failure"]["status"], run.jobs["failure"]["error"]["code"]) == ("failed", "generation_failed")
    assert (run.jobs["upload"]["status"], run.jobs["upload"]["error"]["code"]) == ("failed", "storage_unavailable")


# --- API: HTTP --------------------------------------------------------------------------------


def test_http_requests_are_counted_by_route_template_and_status(run: Run) -> None:
    api = run.api_after
    assert api is not None
    assert api.value("sfumato_http_requests_total", method="POST", route="/v1/images", status="202") == 2
    assert api.value("sfumato_http_requests_total", method="POST", route="/v1/images", status="200") == 3
    assert api.value("sfumato_http_requests_total", method="DELETE", route="/v1/images/{job_id}", status="200") == 1
    # Refused by authentication before routing: still the route's template, never the raw path.
    assert api.value("sfumato_http_requests_total", method="GET", route="/v1/images/{job_id}", status="401") == 1
    assert api.value("sfumato_http_requests_total", method="GET", route="unmatched", status="401") == 1
    assert api.value("sfumato_http_request_duration_seconds_count", method="POST", route="/v1/images") == 5
    assert api.value("sfumato_http_requests_in_flight") == 1  # the scrape itself
    assert "/no/such/path" not in api.text and "whatever" not in api.text


def test_no_series_carries_a_job_or_request_id(run: Run) -> None:
    for scrape in (run.api_after, run.worker_after):
        assert scrape is not None
        for job_id in run.job_ids.values():
            assert job_id not in scrape.text
        for name in ("cancel", "success", "failure", "upload"):
            assert f"obs-{name}" not in scrape.text
        assert all(len(value) <= 64 for value in scrape.label_values("route"))


# --- API: jobs and the queue --------------------------------------------------------------


def test_submitted_and_canceled_jobs_are_counted_by_the_api(run: Run) -> None:
    before, after = run.before_worker, run.api_after
    assert before is not None and after is not None
    assert before.value("sfumato_jobs_submitted_total", model="tiny", mode="txt2img") == 2
    assert after.value("sfumato_jobs_submitted_total", model="tiny", mode="txt2img") == 4
    assert after.value("sfumato_jobs_submitted_total", model="tiny", mode="img2img") == 1
    assert after.value("sfumato_jobs_finished_total", model="tiny", state="canceled", code="none") == 1


def test_the_queue_is_seen_from_redis_at_scrape_time(run: Run) -> None:
    before, after = run.before_worker, run.api_after
    assert before is not None and after is not None
    assert before.value("sfumato_redis_up") == 1
    assert before.value("sfumato_queue_depth", model="tiny") == 1  # the canceled job left the queue
    assert before.value("sfumato_queue_oldest_job_age_seconds", model="tiny") > 0.05
    assert before.value("sfumato_workers_live", model="tiny") == 0
    assert after.value("sfumato_queue_depth", model="tiny") == 0
    assert after.value("sfumato_queue_oldest_job_age_seconds", model="tiny") == 0
    assert after.value("sfumato_jobs_running", model="tiny") == 0
    assert after.value("sfumato_workers_live", model="tiny") == 1


# --- worker -----------------------------------------------------------------------------------


def test_finished_jobs_are_counted_by_state_and_error_code(run: Run) -> None:
    w = run.worker_after
    assert w is not None
    assert w.value("sfumato_jobs_finished_total", model="tiny", state="succeeded", code="none") == 2
    assert w.value("sfumato_jobs_finished_total", model="tiny", state="failed", code="generation_failed") == 1
    assert w.value("sfumato_jobs_finished_total", model="tiny", state="failed", code="storage_unavailable") == 1
    assert w.value("sfumato_jobs_finished_total", state="canceled") == 0  # the API counted that one
    assert w.value("sfumato_job_latency_seconds_count", model="tiny", state="succeeded") == 2
    assert w.value("sfumato_job_latency_seconds_count", model="tiny", state="failed") == 2


def test_time_in_queue_includes_waiting_for_a_worker(run: Run) -> None:
    w = run.worker_after
    assert w is not None
    assert w.value("sfumato_job_queue_wait_seconds_count", model="tiny") == 4
    # The first job waited while the worker started (seconds); the others were taken at once.
    assert w.value("sfumato_job_queue_wait_seconds_bucket", model="tiny", le="0.25") <= 3
    assert w.value("sfumato_job_queue_wait_seconds_sum", model="tiny") > 0.25


def test_generation_work_is_counted(run: Run) -> None:
    w = run.worker_after
    assert w is not None
    # queued (1 image), success (2), upload (1, generated then lost); the failing img2img job
    # never reached the model.
    assert w.value("sfumato_images_generated_total", model="tiny", mode="txt2img") == 4
    assert w.value("sfumato_images_generated_total", mode="img2img") == 0
    expected = 64 * 64 / 1e6 * (STEPS["queued"] + 2 * STEPS["success"] + STEPS["upload"])
    assert w.value("sfumato_megapixel_steps_total", model="tiny", mode="txt2img") == pytest.approx(expected)
    assert w.value("sfumato_job_inference_seconds_count", model="tiny", mode="txt2img") == 3
    assert w.value("sfumato_job_inference_seconds_sum", model="tiny", mode="txt2img") > 0
    # One interval per step after the first, per pipeline call.
    steps_timed = sum(steps - 1 for steps in STEPS.values())
    assert w.value("sfumato_denoise_step_seconds_count", model="tiny", scheduler="ddim") == steps_timed


def test_batches_are_measured(run: Run) -> None:
    w = run.worker_after
    assert w is not None
    batches = w.value("sfumato_batch_images_count", model="tiny")
    images = w.value("sfumato_batch_images_sum", model="tiny")
    assert batches == 4 and images == 5  # each job ran alone; the failing job's image counts as claimed
    assert w.value("sfumato_batch_jobs_sum", model="tiny") == 4
    assert w.value("sfumato_batch_fill_ratio_sum", model="tiny") == pytest.approx(images / MAX_BATCH)
    assert w.value("sfumato_batch_fill_ratio_bucket", model="tiny", le="0.5") == batches


def test_uploads_and_their_failures_are_measured(run: Run) -> None:
    w = run.worker_after
    assert w is not None
    assert w.value("sfumato_storage_upload_seconds_count", backend="local") == 4  # 3 stored + 1 failed
    assert w.value("sfumato_storage_upload_errors_total", backend="local", code="io_error") == 1


def test_prompt_cache_model_load_and_worker_state(run: Run) -> None:
    w = run.worker_after
    assert w is not None
    assert w.value("sfumato_prompt_cache_misses_total", model="tiny") >= 3
    assert w.value("sfumato_prompt_cache_hits_total", model="tiny") >= 1  # the empty negative prompt
    assert w.value("sfumato_model_load_seconds", model="tiny") > 0
    assert w.value("sfumato_model_warmup_seconds", model="tiny") > 0
    assert w.value("sfumato_worker_ready", model="tiny") == 1
    assert w.value("sfumato_worker_state", model="tiny", state="idle") == 1
    assert w.value("sfumato_worker_state", model="tiny", state="busy") == 0
    assert w.has("sfumato_worker_info", model="tiny", device="cpu")
    assert not w.has("sfumato_gpu_memory_allocated_bytes")  # CPU: no GPU series at all


# --- logs -------------------------------------------------------------------------------------


def _log_lines(process: ServiceProcess) -> list[dict]:
    entries = []
    for line in process.log_path.read_text(errors="replace").splitlines():
        if line.startswith("{"):
            entries.append(json.loads(line))
    return entries


def test_request_ids_go_from_the_http_edge_into_the_worker_logs(run: Run) -> None:
    assert run.headers["success"]["x-request-id"] == "obs-success"
    generated = run.headers["no-id"]["x-request-id"]
    assert len(generated) == 16 and int(generated, 16) >= 0
    api_lines, worker_lines = _log_lines(run.api), _log_lines(run.worker)
    for name in ("success", "failure", "upload"):
        job_id = run.job_ids[name]
        submitted = [e for e in api_lines if e.get("event") == "job_submitted" and e.get("job_id") == job_id]
        ended = [e for e in worker_lines if e.get("event") == "job_ended" and e.get("job_id") == job_id]
        assert len(submitted) == 1 and submitted[0]["request_id"] == f"obs-{name}", submitted
        assert len(ended) == 1 and ended[0]["request_id"] == f"obs-{name}", ended
        assert ended[0]["state"] == run.jobs[name]["status"]
    access = [e for e in api_lines if e.get("event") == "http_request" and e.get("request_id") == "obs-success"]
    assert access and access[0]["route"] == "/v1/images" and access[0]["status"] == 200
    assert all(e["component"] == "worker" for e in worker_lines)
    batch = [e for e in worker_lines if e.get("event") == "batch_generated" and run.job_ids["success"] in e["job_ids"]]
    assert batch and batch[0]["images"] == 2


def test_every_log_line_is_one_json_object(run: Run) -> None:
    # Only what libraries print while Python imports them, before logging is configured, and the
    # tiny model builder's one-time progress bar (tqdm writes to the terminal) are not JSON.
    for process in (run.api, run.worker):
        lines = [line for line in process.log_path.read_text(errors="replace").splitlines() if line.strip()]
        first_json = next(i for i, line in enumerate(lines) if line.startswith("{"))
        assert first_json <= 5, lines[:first_json]
        for line in lines[first_json:]:
            if "it/s]" in line:  # a progress bar
                continue
            entry = json.loads(line)  # raises on anything that is not one JSON object per line
            assert {"ts", "level", "logger", "msg"} <= entry.keys()


# --- a real Prometheus ----------------------------------------------------------------------


def test_a_real_prometheus_scrapes_both_and_evaluates_the_rules(run: Run, tmp_path: Path) -> None:
    targets = {
        "sfumato-api": [run.api_url.removeprefix("http://")],
        "sfumato-worker": [run.worker_url.removeprefix("http://")],
    }
    prometheus = start_prometheus(tmp_path / "prometheus", targets, rule_files=[RULES])
    try:
        wait_until(
            lambda: prometheus.value('sum(up{job=~"sfumato-api|sfumato-worker"})') == 2,
            30,
            "both targets to be up",
            prometheus.process,
        )
        assert prometheus.value('sum(sfumato_jobs_finished_total{state="succeeded"})') == 2
        assert prometheus.value('sum(sfumato_jobs_finished_total{job="sfumato-api",state="canceled"})') == 1
        assert prometheus.value('sfumato_worker_ready{job="sfumato-worker",model="tiny"}') == 1
        assert prometheus.value('sum(sfumato_queue_depth{job="sfumato-api",model="tiny"})') == 0  # every class
        failed = prometheus.query('sum by (code) (sfumato_jobs_finished_total{state="failed"})')
        assert {r["metric"]["code"]: float(r["value"][1]) for r in failed} == {
            "generation_failed": 1,
            "storage_unavailable": 1,
        }
        # The recording rules run on the live series (evaluated every second here).
        wait_until(lambda: prometheus.value('sfumato:queue_depth:max{model="tiny"}') == 0, 30, "a recording rule")
        groups = prometheus.get("/api/v1/rules")["groups"]
        rules = [rule for group in groups for rule in group["rules"]]
        assert len(rules) == 16 and all(rule["health"] == "ok" for rule in rules), rules
        firing = {a["labels"]["alertname"] for a in prometheus.get("/api/v1/alerts")["alerts"]}
        assert not firing & {"SfumatoNoReadyWorkers", "SfumatoRedisUnreachable", "SfumatoTargetDown"}
        # Every dashboard query runs on real data without an error.
        dashboard = json.loads(DASHBOARD.read_text())
        for panel in dashboard["panels"]:
            for target in panel.get("targets", ()):
                prometheus.query(grafana_expr(target["expr"]))
    finally:
        prometheus.stop()


# --- several API processes ------------------------------------------------------------------


def test_several_api_processes_report_every_request(redis_server, tmp_path: Path) -> None:
    multiproc = tmp_path / "prometheus-multiproc"
    env = {
        "SFUMATO_REDIS_URL": redis_server.url,
        "SFUMATO_DATA_DIR": str(tmp_path / "data"),
        "SFUMATO_QUEUE_PREFIX": f"e2e-mp-{secrets.token_hex(4)}",
        "SFUMATO_API_WORKERS": "2",
        "PROMETHEUS_MULTIPROC_DIR": str(multiproc),
    }
    multiproc.mkdir()
    multiproc.joinpath("counter_999999.db").write_bytes(b"stale")  # from a previous run: removed
    port = free_port()
    api = start_api(env, port, tmp_path / "logs")
    base = f"http://127.0.0.1:{port}"
    try:
        sent = 0

        def pids_serving() -> set[str]:
            return {p.name.split("_")[1].removesuffix(".db") for p in multiproc.glob("counter_*.db")}

        # Fresh connections until both processes have answered some (the kernel picks).
        while len(pids_serving()) < 2 and sent < 400:
            for _ in range(20):
                assert httpx.get(f"{base}/readyz", timeout=5).status_code == 200
                sent += 1
        assert len(pids_serving()) >= 2, f"one process answered all {sent} requests"
        assert "999999" not in pids_serving()
        # Whichever process answers the scrape, it reports the requests of both.
        for _ in range(6):
            scrape = Scrape.of(base)
            assert scrape.value("sfumato_http_requests_total", route="/readyz", status="200") == sent
    finally:
        api.stop()
    assert os.path.isdir(multiproc)
