"""What the SDK returns: jobs as the API shows them, events, and generated images with bytes.

Response models accept fields they do not know (``extra="allow"``), so an SDK keeps working
against a newer server.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict

FINAL_STATES = frozenset({"succeeded", "failed", "canceled"})


class _Model(BaseModel):
    model_config = ConfigDict(extra="allow")


class ImageInfo(_Model):
    index: int
    url: str
    seed: int
    width: int
    height: int
    format: str


class JobError(_Model):
    code: str
    message: str
    param: str | None = None


class Progress(_Model):
    step: int
    total: int
    eta_s: float | None = None
    elapsed_s: float | None = None
    updated_at: float | None = None
    preview: str | None = None  # a PNG data URL when the job asked for previews

    @property
    def fraction(self) -> float:
        return min(1.0, self.step / self.total) if self.total else 0.0


class WebhookStatus(_Model):
    url: str
    events: list[str]
    state: str
    attempts: int = 0
    last_status: int | None = None
    last_error: str | None = None
    last_attempt_at: float | None = None
    delivered_at: float | None = None


class Job(_Model):
    """A job as ``GET /v1/images/{id}`` shows it."""

    id: str
    status: str
    model: str
    mode: str
    n: int
    created_at: float
    started_at: float | None = None
    finished_at: float | None = None
    images: list[ImageInfo] = []
    timings: dict[str, Any] | None = None
    batch: dict[str, Any] | None = None
    error: JobError | None = None
    #: interactive, standard or batch: which jobs workers take first (None: a server before priorities).
    priority: str | None = None
    #: While queued: jobs workers take before it (those ahead in its class, and all of higher classes).
    queue_position: int | None = None
    #: While queued: why it cannot start yet ("no_worker": no live worker serves its model).
    waiting_for: str | None = None
    progress: Progress | None = None
    webhook: WebhookStatus | None = None
    #: What the job was asked to draw (defaults filled, seed resolved), shaped as a request body:
    #: ``client.generate(**job.params)`` draws the same images (None: a server before params).
    params: dict[str, Any] | None = None

    @property
    def done(self) -> bool:
        return self.status in FINAL_STATES


class Model(_Model):
    """One served model (``GET /v1/models``) with its defaults and live worker count."""

    id: str
    family: str | None = None
    default_width: int | None = None
    default_height: int | None = None
    default_steps: int | None = None
    #: The model's smallest side when below the service's minimum (None: the service's).
    min_size: int | None = None
    max_size: int | None = None
    workers: int = 0
    #: Jobs waiting per priority class, e.g. {"interactive": 0, "standard": 2, "batch": 40}.
    queued: dict[str, int] = {}
    loras: list[str] = []
    embeddings: list[str] = []
    #: ``[{"name", "preprocess"}]``: the ControlNets a request may name for this model.
    controlnets: list[dict[str, Any]] = []
    #: Whether ``refiner: {"switch_at": ...}`` is available (SDXL models with a refiner).
    refiner: bool = False


@dataclass(frozen=True)
class JobEvent:
    """One Server-Sent Event of ``GET /v1/images/{id}/events``.

    ``event`` is ``queued``, ``position``, ``running``, ``progress`` or a final state
    (``succeeded``, ``failed``, ``canceled``: then :attr:`job` is the whole job).
    """

    event: str
    data: dict[str, Any]
    id: str | None = None

    @property
    def final(self) -> bool:
        return self.event in FINAL_STATES

    @property
    def job(self) -> Job | None:
        return Job.model_validate(self.data) if self.final else None

    @property
    def progress(self) -> Progress | None:
        return Progress.model_validate(self.data) if self.event == "progress" else None

    @property
    def queue_position(self) -> int | None:
        value = self.data.get("queue_position")
        return int(value) if value is not None else None


@dataclass(frozen=True)
class GeneratedImage:
    """One image's bytes and what made it."""

    index: int
    seed: int
    width: int
    height: int
    format: str
    data: bytes
    url: str = ""

    def to_pil(self) -> Any:
        """A ``PIL.Image`` (needs Pillow: ``pip install pillow``)."""
        try:
            from PIL import Image
        except ImportError as exc:  # Pillow is optional for the SDK
            raise ImportError("to_pil() needs Pillow: pip install pillow") from exc
        import io

        image = Image.open(io.BytesIO(self.data))
        image.load()
        return image

    def save(self, path: str | Path) -> Path:
        """Write the bytes to ``path`` (a directory: a file named after the seed and index in it)."""
        target = Path(path)
        if target.is_dir():
            target = target / f"{self.index}-{self.seed}.{self.format}"
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_bytes(self.data)
        return target


@dataclass(frozen=True)
class GenerationResult:
    """What ``generate`` returns: the finished job and its images, in index order."""

    job: Job
    images: list[GeneratedImage] = field(default_factory=list)

    @property
    def seeds(self) -> list[int]:
        return [image.seed for image in self.images]

    def save(self, directory: str | Path) -> list[Path]:
        """Write every image to ``directory`` as ``<job id>-<index>-<seed>.<format>``."""
        folder = Path(directory)
        folder.mkdir(parents=True, exist_ok=True)
        return [img.save(folder / f"{self.job.id}-{img.index}-{img.seed}.{img.format}") for img in self.images]
