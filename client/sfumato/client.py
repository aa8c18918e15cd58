"""The synchronous client: ``Client(base_url, api_key).generate("a lighthouse at dusk")``.

Every call retries 429 and 503 answers (waiting what ``Retry-After`` says, else backing off
exponentially), 500, 502 and 504 answers (backing off; their Retry-After is not honoured) and
connection failures up to ``max_retries`` times. Submits always carry an
``Idempotency-Key``, so a retry after a lost answer returns the job the first attempt created.
Image downloads never carry the API key (S3 URLs are presigned; local ones are signed).
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx

from sfumato._common import (
    ClientConfig,
    SSEParser,
    api_error,
    backoff_s,
    new_idempotency_key,
    retry_delay_s,
    submit_body,
)
from sfumato.errors import APIConnectionError, JobFailedError, WaitTimeoutError
from sfumato.types import GeneratedImage, GenerationResult, Job, JobEvent, Model, Progress

ProgressCallback = Callable[[Job, Progress | None], None]


class Client:
    """A Sfumato API client. Use as a context manager, or call :meth:`close`."""

    def __init__(
        self,
        base_url: str | None = None,
        api_key: str | None = None,
        *,
        timeout: float = 30.0,
        max_retries: int = 3,
        http_client: httpx.Client | None = None,
    ) -> None:
        self.config = ClientConfig.resolve(base_url, api_key, timeout, max_retries)
        self._http = http_client or httpx.Client(timeout=timeout)
        self._sleep = time.sleep

    def __enter__(self) -> Client:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        self._http.close()

    # --- plumbing ----------------------------------------------------------------------------
    def _request(self, method: str, path: str, **kwargs: Any) -> httpx.Response:
        url = self.config.base_url + path
        headers = {**self.config.headers(), **kwargs.pop("headers", {})}
        for attempt in range(self.config.max_retries + 1):
            last = attempt == self.config.max_retries
            try:
                response = self._http.request(method, url, headers=headers, **kwargs)
            except httpx.TransportError as exc:
                if last:
                    raise APIConnectionError(f"{method} {url} failed: {type(exc).__name__}: {exc}") from exc
                self._sleep(backoff_s(attempt))
                continue
            delay = None if last else retry_delay_s(response.status_code, attempt, response.headers)
            if delay is not None:
                self._sleep(delay)
                continue
            if response.status_code >= 400:
                raise api_error(response.status_code, response.headers, response.content)
            return response
        raise AssertionError("unreachable")

    # --- the API -----------------------------------------------------------------------------
    def submit(self, prompt: str, *, idempotency_key: str | None = None, **fields: Any) -> Job:
        """Enqueue a job (``POST /v1/images``); fields as in the API (``n``, ``seed``, ``steps``,
        ``width``, ``height``, ``negative_prompt``, ``preview``, ``webhook_url`` ...)."""
        headers = {"Idempotency-Key": idempotency_key or new_idempotency_key()}
        response = self._request("POST", "/v1/images", json=submit_body(prompt, fields), headers=headers)
        return Job.model_validate(response.json())

    def get(self, job_id: str) -> Job:
        return Job.model_validate(self._request("GET", f"/v1/images/{job_id}").json())

    def cancel(self, job_id: str) -> Job:
        """Cancel: a queued job never runs; a running one stops at its next step (poll for it)."""
        return Job.model_validate(self._request("DELETE", f"/v1/images/{job_id}").json())

    def models(self) -> list[Model]:
        return [Model.model_validate(m) for m in self._request("GET", "/v1/models").json()["data"]]

    def webhook_secret(self, *, rotate: bool = False) -> str:
        """The tenant's webhook signing secret (for :func:`sfumato.webhooks.verify`)."""
        return str(self._request("POST" if rotate else "GET", "/v1/webhooks/secret").json()["secret"])

    def stream(self, job_id: str, *, timeout: float | None = None) -> Iterator[JobEvent]:
        """The job's events (``queued``, ``position``, ``running``, ``progress``, final state)
        until it ends. Leaving the loop early closes the connection."""
        url = f"{self.config.base_url}/v1/images/{job_id}/events"
        read = httpx.Timeout(self.config.timeout_s, read=timeout or max(60.0, self.config.timeout_s))
        try:
            with self._http.stream("GET", url, headers=self.config.headers(), timeout=read) as response:
                if response.status_code >= 400:
                    response.read()
                    raise api_error(response.status_code, response.headers, response.content)
                parser = SSEParser()
                for line in response.iter_lines():
                    event = parser.feed(line)
                    if event is not None:
                        yield event
                        if event.final:
                            return
        except httpx.TransportError as exc:
            raise APIConnectionError(f"event stream of {job_id} broke: {type(exc).__name__}") from exc

    def wait(self, job_id: str, *, timeout: float | None = None, on_progress: ProgressCallback | None = None) -> Job:
        """Block until the job ends (following its event stream; reconnecting if it breaks)."""
        deadline = None if timeout is None else time.monotonic() + timeout
        job = self.get(job_id)
        while not job.done:
            if deadline is not None and time.monotonic() > deadline:
                raise WaitTimeoutError(f"job {job_id} did not end within {timeout} s", job_id)
            try:
                for event in self.stream(job_id):
                    job = _apply(job, event, on_progress)
                    if job.done or (deadline is not None and time.monotonic() > deadline):
                        break
            except APIConnectionError:
                self._sleep(0.5)
            if not job.done:
                job = self.get(job_id)
        return job

    def download(self, url: str) -> bytes:
        """An image's bytes. Never sends the API key: the URL's signature is the credential."""
        for attempt in range(self.config.max_retries + 1):
            try:
                response = self._http.get(url, timeout=self.config.timeout_s)
            except httpx.TransportError as exc:
                if attempt == self.config.max_retries:
                    raise APIConnectionError(f"download failed: {type(exc).__name__}") from exc
                self._sleep(backoff_s(attempt))
                continue
            if response.status_code >= 400:
                raise api_error(response.status_code, response.headers, response.content)
            return response.content
        raise AssertionError("unreachable")

    def generate(
        self,
        prompt: str,
        *,
        timeout: float | None = 600.0,
        on_progress: ProgressCallback | None = None,
        output_dir: str | Path | None = None,
        **fields: Any,
    ) -> GenerationResult:
        """Submit, wait (``on_progress(job, progress)`` on every update), download the images.

        Raises :class:`~sfumato.errors.JobFailedError` if the job fails or is canceled and
        :class:`~sfumato.errors.WaitTimeoutError` after ``timeout`` seconds (the job goes on).
        ``output_dir``: also save the images there.
        """
        job = self.submit(prompt, **fields)
        if on_progress is not None:
            on_progress(job, None)
        job = self.wait(job.id, timeout=timeout, on_progress=on_progress)
        if job.status != "succeeded":
            raise JobFailedError(job)
        images = [
            GeneratedImage(i.index, i.seed, i.width, i.height, i.format, self.download(i.url), i.url)
            for i in sorted(job.images, key=lambda i: i.index)
        ]
        result = GenerationResult(job, images)
        if output_dir is not None:
            result.save(output_dir)
        return result


def _apply(job: Job, event: JobEvent, on_progress: ProgressCallback | None) -> Job:
    """The job as ``event`` leaves it; tells ``on_progress`` about every change."""
    if event.final:
        job = event.job or job
        progress = job.progress
    else:
        update: dict[str, Any] = {}
        if event.event in ("queued", "running"):
            update["status"] = event.event
        if "queue_position" in event.data:
            update["queue_position"] = event.data["queue_position"]
        progress = event.progress
        if progress is not None:
            update.update(status="running", progress=progress, queue_position=None)
        job = job.model_copy(update=update)
    if on_progress is not None:
        on_progress(job, progress)
    return job
