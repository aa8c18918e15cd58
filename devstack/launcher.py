"""``make run``: the whole service on one machine, in the foreground, with embedded defaults.

Starts a private Redis (unless ``SFUMATO_REDIS_URL`` is set), one worker with the configured
model (the built-in tiny one by default) and the API, waits until a worker is serving, and
prints how to send a first request. Ctrl-C (or SIGTERM) stops everything it started.
Images go to local disk unless ``SFUMATO_S3_*`` is set.

Authentication is OFF in this dev stack unless ``SFUMATO_AUTH_ENABLED`` is set (the API says so
loudly, and so does the banner); with it on, create a key with ``sfumato-admin keys create``.
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

import redis.exceptions as redis_errors

from core.config import Settings, get_settings
from core.jobs import connect
from core.models import worker_model
from core.presence import live_workers
from core.prompt_guide import SHAPES_PROMPT_GUIDE
from devstack.redis_server import RedisServer, start_redis


def _ready(base_url: str, settings: Settings) -> bool:
    """The API answers /healthz and the worker's model (SFUMATO_WORKER_MODEL, else the first
    registry model) has a live worker (read from Redis directly, so this works whether or not
    the API wants a key). Other registry models stay without a worker in the dev stack."""
    try:
        with urllib.request.urlopen(f"{base_url}/healthz", timeout=2) as resp:
            json.load(resp)
        connection = connect(settings)
        try:
            return live_workers(connection, settings, worker_model(settings).id) > 0
        finally:
            connection.close()
    except (urllib.error.URLError, OSError, ValueError, redis_errors.RedisError):
        return False


def _wait_for_worker(base_url: str, settings: Settings, procs: list[subprocess.Popen[bytes]], timeout_s: float) -> None:
    """Poll until a worker serves, failing fast if a child process exits."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        for proc in procs:
            if proc.poll() is not None:
                raise SystemExit(f"{proc.args!r} exited with code {proc.returncode} during start-up")
        if _ready(base_url, settings):
            return
        time.sleep(0.25)
    raise SystemExit(f"the service did not become ready within {timeout_s:.0f} s")


DEV_AUTH_WARNING = """
!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!
!!! make run: AUTHENTICATION IS OFF (dev mode). Anyone who can reach the API can use it.     !!!
!!! For anything but a development machine set SFUMATO_AUTH_ENABLED=true and create a key    !!!
!!! with: sfumato-admin keys create --tenant <tenant> --name <name>                          !!!
!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!
"""


#: What the built-in shapes model knows: 8 colours, 4 shapes, 5 positions, 2 sizes (see
#: training/shapes/scenes.py).
SHAPES_PROMPT = "a small yellow star at the top left on a blue background"


def _vocabulary() -> str:
    """The shapes model's words, for the banner: a first request that uses others draws nonsense."""
    guide = SHAPES_PROMPT_GUIDE
    return (
        f"  The shapes model knows only these words (GET {{base}}/v1/models shows them as prompt_guide):\n"
        f"    colours: {', '.join(guide.colours)}\n"
        f"    shapes: {', '.join(guide.shapes)};  sizes: {', '.join(guide.sizes)}\n"
        f"    positions: at the {', at the '.join(p for p in guide.positions if p != 'center')}, in the center\n"
        f"    e.g. \"{guide.examples[0]}\" (say 'large', not 'big')\n"
    )


def _banner(base_url: str, auth_enabled: bool, prompt: str, vocabulary: str = "") -> str:
    if auth_enabled:
        auth = "Authentication is ON: add -H 'Authorization: Bearer <key>' (sfumato-admin keys create ...)."
    else:
        auth = "!!! DEV MODE: AUTHENTICATION IS OFF. Anyone who can reach this port can use it. !!!"
    return f"""
Sfumato is running at {base_url}  (docs: {base_url}/docs)

  curl -s -X POST '{base_url}/v1/images?wait=30' -H 'content-type: application/json' \\
       -d '{{"prompt": "{prompt}", "seed": 7}}'

  then open the "url" of images[0] in a browser, or GET {base_url}/v1/images/<id>.
{vocabulary.replace("{base}", base_url)}{auth}
Press Ctrl-C to stop.
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
    if "SFUMATO_AUTH_ENABLED" not in os.environ:
        # Dev mode: no API keys unless the developer asked for them explicitly.
        env["SFUMATO_AUTH_ENABLED"] = "false"
        settings = settings.model_copy(update={"auth_enabled": False})
        print(DEV_AUTH_WARNING, file=sys.stderr, flush=True)
    if "SFUMATO_MODEL" not in os.environ and settings.models_file is None:
        # The built-in shapes model draws what it is asked (simple shapes, 32 px), so a first
        # request shows prompts at work; the random "tiny" model stays for the tests.
        env["SFUMATO_MODEL"] = "shapes"
        settings = settings.model_copy(update={"model": "shapes"})
    env.setdefault("SFUMATO_DATA_DIR", str(settings.data_dir))
    env.setdefault("SFUMATO_LOG_FORMAT", "text")  # people read these logs; production ships JSON
    redis: RedisServer | None = None
    if "SFUMATO_REDIS_URL" not in os.environ:
        redis = start_redis(Path(settings.data_dir) / "redis", appendonly=True)
        env["SFUMATO_REDIS_URL"] = redis.url
        settings = settings.model_copy(update={"redis_url": redis.url})
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
        _wait_for_worker(base_url, settings, procs, timeout_s=300)
        shapes = settings.model == "shapes" and settings.models_file is None
        prompt = SHAPES_PROMPT if shapes else "a red fox in the snow"
        vocabulary = _vocabulary() if shapes else ""
        print(_banner(base_url, settings.auth_enabled, prompt, vocabulary), flush=True)
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
