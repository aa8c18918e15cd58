"""``make run``: the whole service on one machine, in the foreground, with embedded defaults.

Starts a private Redis (unless ``SFUMATO_REDIS_URL`` is set), one worker with the configured
model (the built-in tiny one by default) and the API, waits until a worker is serving, and
prints how to send a first request. Ctrl-C (or SIGTERM) stops everything it started.
Images go to local disk unless ``SFUMATO_S3_*`` is set.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

from core.config import get_settings
from core.redis_server import RedisServer, start_redis


def _wait_for_worker(base_url: str, procs: list[subprocess.Popen[bytes]], timeout_s: float) -> None:
    """Poll /v1/models until a worker serves, failing fast if a child process exits."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        for proc in procs:
            if proc.poll() is not None:
                raise SystemExit(f"{proc.args!r} exited with code {proc.returncode} during start-up")
        try:
            with urllib.request.urlopen(f"{base_url}/v1/models", timeout=2) as resp:
                models = json.load(resp)["data"]
            if models and all(m["workers"] > 0 for m in models):
                return
        except (urllib.error.URLError, OSError, KeyError, ValueError):
            pass
        time.sleep(0.25)
    raise SystemExit(f"the service did not become ready within {timeout_s:.0f} s")


def _banner(base_url: str) -> str:
    return f"""
Sfumato is running at {base_url}  (docs: {base_url}/docs)

  curl -s -X POST '{base_url}/v1/images?wait=30' -H 'content-type: application/json' \\
       -d '{{"prompt": "a red fox in the snow", "seed": 7}}'

  then open the "url" of images[0] in a browser, or GET {base_url}/v1/images/<id>.
Dev mode: no authentication. Press Ctrl-C to stop.
"""


def _stop(procs: list[subprocess.Popen[bytes]], redis: RedisServer | None) -> None:
    for proc in procs:
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
    for proc in procs:
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            proc.kill()
    if redis is not None:
        redis.stop()


def main() -> None:
    settings = get_settings()
    env = dict(os.environ)
    env.setdefault("SFUMATO_DATA_DIR", str(settings.data_dir))
    redis: RedisServer | None = None
    if "SFUMATO_REDIS_URL" not in os.environ:
        redis = start_redis(Path(settings.data_dir) / "redis", appendonly=True)
        env["SFUMATO_REDIS_URL"] = redis.url
        print(f"started a private Redis at {redis.url} (data in {settings.data_dir / 'redis'})", flush=True)
    base_url = f"http://{settings.api_host}:{settings.api_port}"
    procs = [
        subprocess.Popen([sys.executable, "-m", "worker"], env=env),
        subprocess.Popen([sys.executable, "-m", "api"], env=env),
    ]

    def _on_signal(signum: int, _frame: object) -> None:
        raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, _on_signal)
    try:
        _wait_for_worker(base_url, procs, timeout_s=300)
        print(_banner(base_url), flush=True)
        while all(p.poll() is None for p in procs):
            time.sleep(0.5)
        print("a service process exited; stopping the stack", file=sys.stderr)
        raise SystemExit(1)
    except KeyboardInterrupt:
        print("\nstopping...", flush=True)
    finally:
        _stop(procs, redis)


if __name__ == "__main__":
    main()
