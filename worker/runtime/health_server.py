"""A worker's own HTTP endpoint: ``/metrics``, ``/healthz`` (ready) and ``/livez`` (alive).

Each worker serves this on ``SFUMATO_WORKER_METRICS_HOST:SFUMATO_WORKER_METRICS_PORT`` from a
daemon thread, from before the model loads until the process exits, so a scraper and a
Kubernetes probe see the whole life of the worker:

- ``/healthz``: 200 ``{"status": "ready"}`` once the model is loaded and warmed up and an RQ
  worker is serving; 503 with the state (``starting``, ``draining``) otherwise. Use it as the
  readiness and startup probe.
- ``/livez``: 200 while the process answers at all (liveness probe: a long model load is not a
  reason to restart it).
- ``/metrics``: the Prometheus text format. Worker state, readiness, prompt-cache counters and
  GPU memory are read at scrape time (:class:`WorkerCollector`): they cost the busy loop nothing.
"""

from __future__ import annotations

import json
import logging
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from prometheus_client import CONTENT_TYPE_LATEST, REGISTRY, CollectorRegistry, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from prometheus_client.metrics_core import Metric

log = logging.getLogger("sfumato.worker")

STATES = ("starting", "idle", "busy", "draining")


class WorkerProbe:
    """What the endpoint reports about this process: set by the main thread (``attach``), read by
    the server thread. ``worker`` is the RQ worker in service (a new one after a Redis outage)."""

    def __init__(self, model_id: str) -> None:
        self.model_id = model_id
        self.worker: Any = None

    def attach(self, worker: Any) -> None:
        self.worker = worker

    def state(self) -> str:
        worker = self.worker
        if worker is None:
            return "starting"
        if getattr(worker, "draining", False) or getattr(worker, "_shutdown_requested_date", None) is not None:
            return "draining"
        return "busy" if worker.get_state() == "busy" else "idle"

    def ready(self) -> bool:
        return self.state() in ("idle", "busy")


class WorkerCollector:
    """Scrape-time metrics of one worker process."""

    def __init__(self, probe: WorkerProbe) -> None:
        self.probe = probe

    def collect(self) -> Iterator[Metric]:
        probe, model = self.probe, self.probe.model_id
        state = probe.state()
        ready = GaugeMetricFamily(
            "sfumato_worker_ready", "1 once the model is loaded and warmed up and jobs are taken.", labels=["model"]
        )
        ready.add_metric([model], 1.0 if state in ("idle", "busy") else 0.0)
        yield ready
        states = GaugeMetricFamily("sfumato_worker_state", "The worker's state (one is 1).", labels=["model", "state"])
        for name in STATES:
            states.add_metric([model, name], 1.0 if name == state else 0.0)
        yield states
        engine = getattr(probe.worker, "engine", None)
        if engine is None:
            return
        info = GaugeMetricFamily(
            "sfumato_worker_info",
            "The model and runtime this worker serves.",
            labels=["model", "device", "dtype", "attention"],
        )
        info.add_metric(
            [model, engine.device.type, str(engine.dtype).removeprefix("torch."), str(engine.attention)], 1.0
        )
        yield info
        cache = engine.prompt_cache
        for name, value, doc in (
            ("sfumato_prompt_cache_hits", cache.hits, "Prompts whose text-encoder output came from the cache."),
            ("sfumato_prompt_cache_misses", cache.misses, "Prompts the text encoder had to encode."),
        ):
            counter = CounterMetricFamily(name, doc, labels=["model"])
            counter.add_metric([model], float(value))
            yield counter
        entries = GaugeMetricFamily("sfumato_prompt_cache_entries", "Text-encoder outputs cached.", labels=["model"])
        entries.add_metric([model], float(len(cache)))
        yield entries
        if engine.device.type == "cuda":
            yield from _gpu_memory(engine.device)


def _gpu_memory(device: Any) -> Iterator[Metric]:
    """Allocated / reserved / peak / total bytes of the CUDA device (never called on CPU)."""
    import torch

    index = device.index if device.index is not None else torch.cuda.current_device()
    readings = (
        ("sfumato_gpu_memory_allocated_bytes", "Bytes held by tensors now.", torch.cuda.memory_allocated(index)),
        (
            "sfumato_gpu_memory_reserved_bytes",
            "Bytes held by PyTorch's caching allocator.",
            torch.cuda.memory_reserved(index),
        ),
        (
            "sfumato_gpu_memory_peak_bytes",
            "Most bytes held by tensors since start.",
            torch.cuda.max_memory_allocated(index),
        ),
        (
            "sfumato_gpu_memory_total_bytes",
            "Memory of the device.",
            torch.cuda.get_device_properties(index).total_memory,
        ),
    )
    for name, doc, value in readings:
        gauge = GaugeMetricFamily(name, doc, labels=["device"])
        gauge.add_metric([str(index)], float(value))
        yield gauge


class _Handler(BaseHTTPRequestHandler):
    probe: WorkerProbe  # both set on the subclass made per server
    registry: CollectorRegistry

    def do_GET(self) -> None:
        path = self.path.split("?", 1)[0]
        if path == "/metrics":
            self._send(200, generate_latest(self.registry), CONTENT_TYPE_LATEST)
        elif path == "/healthz":
            state = self.probe.state()
            body = {"status": "ready" if self.probe.ready() else "not_ready", "state": state}
            self._send(200 if self.probe.ready() else 503, json.dumps(body).encode(), "application/json")
        elif path == "/livez":
            self._send(200, b'{"status": "ok"}', "application/json")
        else:
            self._send(
                404, b'{"error": {"code": "not_found", "message": "no such path", "param": null}}', "application/json"
            )

    def _send(self, status: int, body: bytes, content_type: str) -> None:
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format: str, *args: Any) -> None:
        log.debug("worker endpoint: " + format, *args)

    def version_string(self) -> str:
        return "sfumato-worker"


class HealthServer:
    """The endpoint on its own daemon thread; ``port`` is the one bound (useful with port 0)."""

    def __init__(self, host: str, port: int, probe: WorkerProbe, registry: CollectorRegistry = REGISTRY) -> None:
        handler = type("WorkerEndpoint", (_Handler,), {"probe": probe, "registry": registry})
        self._server = ThreadingHTTPServer((host, port), handler)
        self._server.daemon_threads = True
        self.port = int(self._server.server_address[1])
        self._thread = threading.Thread(target=self._server.serve_forever, name="sfumato-metrics", daemon=True)

    def start(self) -> HealthServer:
        self._thread.start()
        return self

    def stop(self) -> None:
        self._server.shutdown()
        self._server.server_close()
