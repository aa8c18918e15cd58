"""The asyncio client: the same calls as :class:`sfumato.Client`, awaited.

``async with AsyncClient(url, key) as client: result = await client.generate("...")``. Retries,
idempotency keys, timeouts and errors behave exactly as in the sync client.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Awaitable, Callable
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
from sfumato.client import _apply
from sfumato.errors import APIConnectionError, JobFailedError, WaitTimeoutError
from sfumato.types import GeneratedImage, GenerationResult, Job, JobEvent, Model, Progress

ProgressCallback = Callable[[Job, Progress | None], Awaitable[None] | None]


class AsyncClient:
    """An asyncio Sfumato API client. Use ``async with``, or await :meth:`aclose`."""

    def __init__(
        self,
        base_url: str | None = None,
        api_key: str | None = None,
        *,
        timeout: float = 30.0,
        max_retries: int = 3,
        http_client: httpx.AsyncClient | None = None,
    ) -> None:
        self.config = ClientConfig.resolve(base_url, api_key, timeout, max_retries)
        self._http = http_client or httpx.AsyncClient(timeout=timeout)

    async def __aenter__(self) -> AsyncClient:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        await self._http.aclose()

    async def _request(self, method: str, path: str, **kwargs: Any) -> httpx.Response:
        url = self.config.base_url + path
        headers = {**self.config.headers(), **kwargs.pop("headers", {})}
        for attempt in range(self.config.max_retries + 1):
            last = attempt == self.config.max_retries
            try:
                response = await self._http.request(method, url, headers=headers, **kwargs)
            except httpx.TransportError as exc:
                if last:
                    raise APIConnectionError(f"{method} {url} failed: {type(exc).__name__}: {exc}") from exc
                await asyncio.sleep(backoff_s(attempt))
                continue
            delay = None if last else retry_delay_s(response.status_code, attempt, response.headers)
            if delay is not None:
                await asyncio.sleep(delay)
                continue
            if response.status_code >= 400:
                raise api_error(response.status_code, response.headers, response.content)
            return response
        raise AssertionError("unreachable")

    async def submit(self, prompt: str, *, idempotency_key: str | None = None, **fields: Any) -> Job:
        headers = {"Idempotency-Key": idempotency_key or new_idempotency_key()}
        response = await self._request("POST", "/v1/images", json=submit_body(prompt, fields), headers=headers)
        return Job.model_validate(response.json())

    async def get(self, job_id: str) -> Job:
        return Job.model_validate((await self._request("GET", f"/v1/images/{job_id}")).json())

    async def cancel(self, job_id: str) -> Job:
        return Job.model_validate((await self._request("DELETE", f"/v1/images/{job_id}")).json())

    async def models(self) -> list[Model]:
        return [Model.model_validate(m) for m in (await self._request("GET", "/v1/models")).json()["data"]]

    async def webhook_secret(self, *, rotate: bool = False) -> str:
        return str((await self._request("POST" if rotate else "GET", "/v1/webhooks/secret")).json()["secret"])

    async def stream(self, job_id: str, *, timeout: float | None = None) -> AsyncIterator[JobEvent]:
        url = f"{self.config.base_url}/v1/images/{job_id}/events"
        read = httpx.Timeout(self.config.timeout_s, read=timeout or max(60.0, self.config.timeout_s))
        try:
            async with self._http.stream("GET", url, headers=self.config.headers(), timeout=read) as response:
                if response.status_code >= 400:
                    await response.aread()
                    raise api_error(response.status_code, response.headers, response.content)
                parser = SSEParser()
                async for line in response.aiter_lines():
                    event = parser.feed(line)
                    if event is not None:
                        yield event
                        if event.final:
                            return
        except httpx.TransportError as exc:
            raise APIConnectionError(f"event stream of {job_id} broke: {type(exc).__name__}") from exc

    async def wait(
        self, job_id: str, *, timeout: float | None = None, on_progress: ProgressCallback | None = None
    ) -> Job:
        deadline = None if timeout is None else time.monotonic() + timeout
        job = await self.get(job_id)
        while not job.done:
            if deadline is not None and time.monotonic() > deadline:
                raise WaitTimeoutError(f"job {job_id} did not end within {timeout} s", job_id)
            try:
                events = self.stream(job_id)
                try:
                    async for event in events:
                        job = await _apply_async(job, event, on_progress)
                        if job.done or (deadline is not None and time.monotonic() > deadline):
                            break
                finally:
                    await events.aclose()  # type: ignore[attr-defined]
            except APIConnectionError:
                await asyncio.sleep(0.5)
            if not job.done:
                job = await self.get(job_id)
        return job

    async def download(self, url: str) -> bytes:
        for attempt in range(self.config.max_retries + 1):
            try:
                response = await self._http.get(url, timeout=self.config.timeout_s)
            except httpx.TransportError as exc:
                if attempt == self.config.max_retries:
                    raise APIConnectionError(f"download failed: {type(exc).__name__}") from exc
                await asyncio.sleep(backoff_s(attempt))
                continue
            if response.status_code >= 400:
                raise api_error(response.status_code, response.headers, response.content)
            return response.content
        raise AssertionError("unreachable")

    async def generate(
        self,
        prompt: str,
        *,
        timeout: float | None = 600.0,
        on_progress: ProgressCallback | None = None,
        output_dir: str | Path | None = None,
        **fields: Any,
    ) -> GenerationResult:
        """As :meth:`sfumato.Client.generate`; the images download concurrently."""
        job = await self.submit(prompt, **fields)
        if on_progress is not None:
            await _call(on_progress, job, None)
        job = await self.wait(job.id, timeout=timeout, on_progress=on_progress)
        if job.status != "succeeded":
            raise JobFailedError(job)
        infos = sorted(job.images, key=lambda i: i.index)
        blobs = await asyncio.gather(*(self.download(i.url) for i in infos))
        images = [
            GeneratedImage(i.index, i.seed, i.width, i.height, i.format, data, i.url)
            for i, data in zip(infos, blobs, strict=True)
        ]
        result = GenerationResult(job, images)
        if output_dir is not None:
            result.save(output_dir)
        return result


async def _call(callback: ProgressCallback, job: Job, progress: Progress | None) -> None:
    outcome = callback(job, progress)
    if outcome is not None:
        await outcome


async def _apply_async(job: Job, event: JobEvent, on_progress: ProgressCallback | None) -> Job:
    seen: list[tuple[Job, Progress | None]] = []
    job = _apply(job, event, lambda j, p: seen.append((j, p)))
    if on_progress is not None:
        for j, p in seen:
            await _call(on_progress, j, p)
    return job
