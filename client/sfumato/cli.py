"""``sfumato``: the command line of the SDK.

    sfumato generate "a lighthouse at dusk" -n 4 --seed 1 --steps 30 -o out/
    sfumato status ID          sfumato cancel ID          sfumato models

The API and key come from ``--url`` / ``--api-key`` or ``SFUMATO_URL`` / ``SFUMATO_API_KEY``.
Progress goes to stderr (one bar per job), results to stdout (saved paths, or JSON with
``--json``), so the output pipes cleanly. Exit status: 0 done, 1 the API or the job failed,
2 bad usage.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any, TextIO

from sfumato.client import Client
from sfumato.errors import APIError, JobFailedError, SfumatoError
from sfumato.types import Job, Progress

BAR_WIDTH = 30


class ProgressBar:
    """A plain-text bar on stderr for one job: state, queue position, steps, ETA."""

    def __init__(self, label: str, stream: TextIO) -> None:
        self.label = label
        self.stream = stream
        self.tty = stream.isatty()
        self._last = ""

    def update(self, job: Job, progress: Progress | None) -> None:
        line = self.render(job, progress or job.progress)
        if line == self._last:
            return
        self._last = line
        if self.tty:
            self.stream.write("\r\033[K" + line)
        else:
            self.stream.write(line + "\n")
        self.stream.flush()

    def render(self, job: Job, progress: Progress | None) -> str:
        if job.status == "queued":
            where = "" if job.queue_position is None else f" (position {job.queue_position})"
            return f"{self.label} queued{where}"
        if job.status == "running" and progress is not None and progress.total:
            filled = int(BAR_WIDTH * progress.fraction)
            eta = "" if progress.eta_s is None else f" eta {progress.eta_s:.1f}s"
            bar = "#" * filled + "-" * (BAR_WIDTH - filled)
            return f"{self.label} [{bar}] {progress.step}/{progress.total}{eta}"
        return f"{self.label} {job.status}"

    def finish(self, job: Job) -> None:
        self.update(job, None)
        if self.tty:
            self.stream.write("\n")
            self.stream.flush()


def _fields(args: argparse.Namespace) -> dict[str, Any]:
    width, height = args.width, args.height
    if args.size:
        try:
            width, height = (int(v) for v in args.size.lower().split("x"))
        except ValueError:
            raise SystemExit(f"sfumato: --size must look like 512x512, not {args.size!r}") from None
    return {
        "n": args.n,
        "seed": args.seed,
        "steps": args.steps,
        "width": width,
        "height": height,
        "negative_prompt": args.negative_prompt,
        "model": args.model,
        "guidance_scale": args.guidance,
        "scheduler": args.scheduler,
        "output_format": args.format,
        "preview": True if args.preview else None,
    }


def cmd_generate(client: Client, args: argparse.Namespace, out: TextIO, err: TextIO) -> int:
    """Submit every prompt first (they run side by side), then follow each with its own bar."""
    jobs = [client.submit(prompt, **_fields(args)) for prompt in args.prompts]
    failed = 0
    summaries = []
    for job in jobs:
        bar = ProgressBar(job.id[:12], err)
        bar.update(job, None)
        if args.no_progress:
            final = client.wait(job.id, timeout=args.wait_timeout)
        else:
            final = client.wait(job.id, timeout=args.wait_timeout, on_progress=bar.update)
        bar.finish(final)
        if final.status != "succeeded":
            failed += 1
            err.write(f"sfumato: {JobFailedError(final)}\n")
            summaries.append({"id": final.id, "status": final.status, "error": _dump(final.error)})
            continue
        paths = []
        for image in sorted(final.images, key=lambda i: i.index):
            target = Path(args.output) / f"{final.id}-{image.index}-{image.seed}.{image.format}"
            target.parent.mkdir(parents=True, exist_ok=True)
            target.write_bytes(client.download(image.url))
            paths.append(str(target))
            if not args.json:
                out.write(f"{target}\n")
        seeds = [i.seed for i in final.images]
        summaries.append({"id": final.id, "status": final.status, "files": paths, "seeds": seeds})
    if args.json:
        out.write(json.dumps(summaries, indent=2) + "\n")
    return 1 if failed else 0


def _dump(value: Any) -> Any:
    return value.model_dump(mode="json") if hasattr(value, "model_dump") else value


def cmd_status(client: Client, args: argparse.Namespace, out: TextIO, err: TextIO) -> int:
    job = client.get(args.id)
    if args.json:
        out.write(job.model_dump_json(indent=2) + "\n")
        return 0
    out.write(f"{job.id} {job.status}\n")
    if job.queue_position is not None:
        out.write(f"  queue position: {job.queue_position}\n")
    if job.progress is not None and job.status == "running":
        out.write(f"  step {job.progress.step}/{job.progress.total}\n")
    for image in job.images:
        out.write(f"  image {image.index} seed {image.seed}: {image.url}\n")
    if job.error is not None:
        out.write(f"  error {job.error.code}: {job.error.message}\n")
    return 0


def cmd_cancel(client: Client, args: argparse.Namespace, out: TextIO, err: TextIO) -> int:
    job = client.cancel(args.id)
    out.write(f"{job.id} {job.status}{'' if job.done else ' (cancel requested)'}\n")
    return 0


def cmd_models(client: Client, args: argparse.Namespace, out: TextIO, err: TextIO) -> int:
    models = client.models()
    if args.json:
        out.write(json.dumps([m.model_dump(mode="json") for m in models], indent=2) + "\n")
        return 0
    for model in models:
        size = f"{model.default_width}x{model.default_height}"
        out.write(f"{model.id}\t{model.family}\t{size}\t{model.default_steps} steps\t{model.workers} worker(s)\n")
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="sfumato", description="Generate images with a Sfumato server.")
    parser.add_argument("--url", help="API base URL (default: $SFUMATO_URL, else http://127.0.0.1:8000)")
    parser.add_argument("--api-key", help="API key (default: $SFUMATO_API_KEY)")
    parser.add_argument("--timeout", type=float, default=30.0, help="seconds per HTTP request (default 30)")
    parser.add_argument("--json", action="store_true", help="machine-readable output on stdout")
    sub = parser.add_subparsers(dest="command", required=True)

    gen = sub.add_parser("generate", help="generate images and save them")
    gen.add_argument("prompts", nargs="+", metavar="PROMPT", help="one job per prompt")
    gen.add_argument("-n", type=int, default=None, help="images per prompt")
    gen.add_argument("--seed", type=int)
    gen.add_argument("--steps", type=int)
    gen.add_argument("--width", type=int)
    gen.add_argument("--height", type=int)
    gen.add_argument("--size", help="WIDTHxHEIGHT, e.g. 512x512")
    gen.add_argument("--negative-prompt")
    gen.add_argument("--model")
    gen.add_argument("--guidance", type=float)
    gen.add_argument("--scheduler")
    gen.add_argument("--format", choices=["png", "jpeg", "webp"])
    gen.add_argument("--preview", action="store_true", help="ask the worker for previews")
    gen.add_argument("-o", "--output", default=".", help="directory for the images (default: .)")
    gen.add_argument("--wait-timeout", type=float, default=None, help="give up waiting after this many seconds")
    gen.add_argument("--no-progress", action="store_true", help="no progress bar")
    gen.set_defaults(handler=cmd_generate)

    status = sub.add_parser("status", help="show a job")
    status.add_argument("id")
    status.set_defaults(handler=cmd_status)
    cancel = sub.add_parser("cancel", help="cancel a job")
    cancel.add_argument("id")
    cancel.set_defaults(handler=cmd_cancel)
    models = sub.add_parser("models", help="list served models")
    models.set_defaults(handler=cmd_models)
    for command in (gen, status, cancel, models):  # --json after the command works too
        command.add_argument("--json", action="store_true", default=argparse.SUPPRESS, help=argparse.SUPPRESS)
    return parser


def main(argv: Sequence[str] | None = None, out: TextIO | None = None, err: TextIO | None = None) -> int:
    out, err = out or sys.stdout, err or sys.stderr
    args = build_parser().parse_args(argv)
    try:
        with Client(args.url, args.api_key, timeout=args.timeout) as client:
            return int(args.handler(client, args, out, err))
    except APIError as exc:
        err.write(f"sfumato: {exc.code}: {exc.message}\n")
        return 1
    except SfumatoError as exc:
        err.write(f"sfumato: {exc}\n")
        return 1


if __name__ == "__main__":
    sys.exit(main())
