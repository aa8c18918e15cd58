"""Pydantic models at the edges: the HTTP request, the queue payload, the stored result, the
HTTP response.

A raw :class:`ImageRequest` (what a client sent) is a different type from a
:class:`JobPayload` (validated, defaults filled, seed resolved): only a payload is ever
enqueued, and the worker trusts nothing else.
"""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

from core.priority import DEFAULT_PRIORITY, PriorityClass
from core.text import Name, Text

MAX_SEED = 2**32 - 1

OutputFormat = Literal["png", "jpeg", "webp"]
Mode = Literal["txt2img", "img2img", "inpaint"]
JobStatus = Literal["queued", "running", "succeeded", "failed", "canceled"]
#: The endings a webhook can be asked for (``webhook_events``).
WebhookEvent = Literal["succeeded", "failed", "canceled"]


class LoraWeight(BaseModel):
    """One LoRA of a request: a name from ``GET /v1/models`` and how strongly to apply it.

    The scale multiplies the LoRA's weight delta (diffusers' ``set_adapters`` weight, A1111's
    ``<lora:name:scale>``): 0 is the base model, 1 the LoRA as trained, negative values push
    the other way (slider LoRAs). Its bounds are settings (``SFUMATO_LORA_MIN_SCALE`` ..
    ``SFUMATO_LORA_MAX_SCALE``).
    """

    model_config = ConfigDict(extra="forbid", frozen=True)

    name: Name = Field(..., min_length=1, max_length=100, description="LoRA name from GET /v1/models.")
    scale: float = Field(1.0, allow_inf_nan=False, description="Strength: 0 = off, 1 = as trained.")


#: How a control image becomes a control map: "none" (it already is one) or "canny" (edges,
#: computed on the worker).
ControlNetPreprocess = Literal["none", "canny"]


class ControlNetUnit(BaseModel):
    """One ControlNet of a request: a name from ``GET /v1/models``, its control image and how
    strongly and when it steers.

    ``scale`` multiplies the ControlNet's residuals (0 = off); it acts on the denoising steps
    in the fraction ``start``..``end`` of the schedule (0..1 = all of them). ``preprocess``
    defaults to the ControlNet's own default from the model registry.
    """

    model_config = ConfigDict(extra="forbid", frozen=True)

    name: Name = Field(..., min_length=1, max_length=100, description="ControlNet name from GET /v1/models.")
    image: str = Field(..., min_length=1, description="Base64 control image (PNG/JPEG/WebP), checked like uploads.")
    scale: float = Field(1.0, allow_inf_nan=False, description="Conditioning strength: 0 = off, 1 = as trained.")
    start: float = Field(0.0, allow_inf_nan=False, description="Fraction of the steps at which it starts acting.")
    end: float = Field(1.0, allow_inf_nan=False, description="Fraction of the steps at which it stops acting.")
    preprocess: ControlNetPreprocess | None = Field(
        None, description="'none' (image is a control map) or 'canny' (edges); default: the ControlNet's own."
    )


class ControlNetJob(BaseModel):
    """A validated ControlNet unit on the queue: the preprocessing resolved, numbers rounded."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    name: str
    image_b64: str
    scale: float
    start: float
    end: float
    preprocess: ControlNetPreprocess


class RefinerSettings(BaseModel):
    """SDXL refiner of a request (ensemble of experts): the base model denoises the first
    ``switch_at`` fraction of the schedule, the model's refiner the rest, on the base's latents.

    Only for SDXL models whose registry entry names a refiner (``GET /v1/models``: refiner).
    """

    model_config = ConfigDict(extra="forbid", frozen=True)

    switch_at: float = Field(
        0.8, gt=0.0, lt=1.0, allow_inf_nan=False, description="Fraction of the steps the base model runs (0..1)."
    )


class ImageRequest(BaseModel):
    """Body of ``POST /v1/images``. Unset fields take the model's defaults.

    Static bounds live here; limits an operator can change (sizes, steps, n, prompt length,
    upload size) are checked against Settings by ``core.validation``.
    """

    model_config = ConfigDict(extra="forbid", str_strip_whitespace=False)

    prompt: Text = Field(..., min_length=1, description="What to draw.")
    negative_prompt: Text = Field("", description="What to steer away from (classifier-free guidance).")
    model: Name | None = Field(None, description="Model id from GET /v1/models (default: the first).")
    width: int | None = Field(None, description="Multiple of 8, within the model's limits.")
    height: int | None = Field(None, description="Multiple of 8, within the model's limits.")
    steps: int | None = Field(None, ge=1, description="Denoising steps.")
    guidance_scale: float | None = Field(None, description="Classifier-free guidance scale.")
    scheduler: Name | None = Field(None, description="Sampler, e.g. 'euler_a' or 'DPM++ 2M Karras'.")
    seed: int | None = Field(None, ge=0, le=MAX_SEED, description="Image i uses seed + i; random if absent.")
    n: int = Field(1, ge=1, description="Number of images.")
    clip_skip: int = Field(0, ge=0, description="Final CLIP layers to skip (0 = none; A1111 'Clip skip 2' = 1).")
    output_format: OutputFormat = Field("png", description="png (with a 'parameters' text chunk), jpeg, webp.")
    image: str | None = Field(None, description="Base64 init image (PNG/JPEG/WebP) for img2img/inpainting.")
    mask: str | None = Field(None, description="Base64 mask for inpainting: white is repainted.")
    strength: float | None = Field(None, gt=0.0, le=1.0, description="img2img/inpaint noise strength.")
    timeout_s: float | None = Field(
        None,
        gt=0,
        description="Start deadline: a job not started within this many seconds fails with deadline_exceeded.",
    )
    exact: bool = Field(
        False,
        description="Never co-batch this request, so its pixels are bit-identical on every run "
        "(co-batched images may differ by float rounding, see README).",
    )
    preview: bool = Field(False, description="Publish low-cost previews with the progress (see /events).")
    loras: list[LoraWeight] = Field(
        default_factory=list, max_length=64, description="LoRAs to apply, each with its scale (see GET /v1/models)."
    )
    controlnet: list[ControlNetUnit] = Field(
        default_factory=list,
        max_length=16,
        description="ControlNets to condition on, each with its control image (see GET /v1/models).",
    )
    refiner: RefinerSettings | None = Field(
        None, description="SDXL only: hand the last steps to the model's refiner, e.g. {'switch_at': 0.8}."
    )
    webhook_url: Name | None = Field(
        None, max_length=2048, description="Public http(s) URL POSTed a signed event when the job ends."
    )
    webhook_events: list[WebhookEvent] | None = Field(
        None, min_length=1, max_length=3, description="Which endings to deliver (default: all three)."
    )
    priority: PriorityClass | None = Field(
        None,
        description="interactive, standard or batch: which jobs workers take first. At most the API key's "
        "priority (a higher one is a 422); default: the key's priority.",
    )


class JobPayload(BaseModel):
    """The validated, fully resolved job that goes on the queue as JSON."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    job_id: str
    tenant: str
    model: str
    mode: Mode
    #: What the text encoder reads: the request's prompt without its ``<lora:>`` tags.
    prompt: str
    negative_prompt: str
    width: int
    height: int
    steps: int
    guidance_scale: float
    scheduler: str
    seed: int
    n: int
    clip_skip: int
    output_format: OutputFormat
    strength: float | None = None
    exact: bool = False
    preview: bool = False
    deadline_at: float | None = None
    image_b64: str | None = None
    mask_b64: str | None = None
    created_at: float
    #: Normalised by core.validation: sorted by name, scales rounded, scale-0 entries dropped.
    loras: tuple[LoraWeight, ...] = ()
    #: Normalised by core.controlnets: in request order (it pairs names with images), scale-0
    #: entries dropped.
    controlnet: tuple[ControlNetJob, ...] = ()
    #: Normalised by core.validation: switch_at rounded (None: no refiner).
    refiner: RefinerSettings | None = None
    #: The prompt as the client wrote it when it differs from ``prompt`` (it had ``<lora:>``
    #: tags, core/lora_tags.py): the image's infotext shows this. None (left out of the queue
    #: JSON, so older workers take the job) when the prompt had no tag.
    prompt_as_written: str | None = None
    #: The class whose queue the job is on (core/priority.py). Left out of the queue JSON when
    #: ``standard`` (core.jobs.wire_payload), so workers from before priorities take the job.
    priority: PriorityClass = DEFAULT_PRIORITY

    @property
    def seeds(self) -> list[int]:
        """One seed per image: ``seed + i`` wrapped into the 32-bit range."""
        return [(self.seed + i) % (MAX_SEED + 1) for i in range(self.n)]


class StoredImage(BaseModel):
    """One generated image as the worker records it: a storage key, never bytes."""

    key: str
    index: int
    seed: int
    width: int
    height: int
    format: OutputFormat


class Timings(BaseModel):
    """Seconds spent in each stage of a job."""

    queue_wait_s: float | None = None
    inference_s: float | None = None
    upload_s: float | None = None
    total_s: float | None = None


class BatchInfo(BaseModel):
    """The pipeline call a job ran in: shows batching at work (no other job's data)."""

    id: str
    jobs: int
    images: int


class JobResult(BaseModel):
    """What a worker stores as a job's return value (JSON)."""

    images: list[StoredImage]
    timings: Timings
    batch: BatchInfo | None = None


class ErrorBody(BaseModel):
    code: str
    message: str
    param: str | None = None


class ImageOut(BaseModel):
    """One image in a response: a short-lived URL plus what made it."""

    index: int
    url: str
    seed: int
    width: int
    height: int
    format: OutputFormat


class ProgressView(BaseModel):
    """The latest denoising progress a worker published for a job."""

    step: int
    total: int
    eta_s: float | None = Field(None, description="Estimated seconds until denoising ends.")
    elapsed_s: float
    updated_at: float
    preview: str | None = Field(None, description="A small PNG data URL (latent approximation), if asked for.")


class WebhookView(BaseModel):
    """Where a job's webhook goes and how its delivery went (never the signing secret)."""

    url: str
    events: list[WebhookEvent]
    state: Literal["waiting", "pending", "retrying", "delivered", "failed", "skipped"]
    attempts: int = 0
    last_status: int | None = Field(None, description="HTTP status of the last attempt (None: no answer).")
    last_error: str | None = None
    last_attempt_at: float | None = None
    delivered_at: float | None = None


class JobParams(BaseModel):
    """What a job was asked to draw, as a ``POST /v1/images`` body would ask for it again.

    Defaults are filled in and the seed resolved, so posting these fields back (to the same
    server, same model) draws the same images; a client's "use these settings" reads them.
    ``prompt`` is as written, ``<lora:>`` tags included; ``loras`` holds only the LoRAs of the
    ``loras`` field (those of the tags are in the prompt), so resending both asks for each once.
    Never here: the input images and masks (large, and the client has them; the view's ``mode``
    says whether there were any), webhook URLs.
    """

    prompt: str = Field(..., description="The prompt as written, <lora:> tags included.")
    negative_prompt: str
    model: str
    width: int
    height: int
    steps: int
    guidance_scale: float
    scheduler: str = Field(..., description="Canonical sampler name (a key of GET /v1/models' schedulers).")
    seed: int = Field(..., description="The resolved seed (image i used seed + i), also when it was random.")
    n: int
    clip_skip: int
    loras: list[LoraWeight] = Field(
        default_factory=list, description="LoRAs of the request's loras field (tags are in prompt)."
    )
    strength: float | None = Field(None, description="img2img/inpaint noise strength; None for txt2img.")
    output_format: OutputFormat = "png"
    refiner: RefinerSettings | None = None


class JobView(BaseModel):
    """Body of ``GET /v1/images/{id}`` (and of POST responses)."""

    id: str
    status: JobStatus
    model: str
    mode: Mode
    n: int
    created_at: float
    started_at: float | None = None
    finished_at: float | None = None
    images: list[ImageOut] = Field(default_factory=list)
    timings: Timings | None = None
    batch: BatchInfo | None = None
    error: ErrorBody | None = None
    priority: PriorityClass = Field(DEFAULT_PRIORITY, description="The job's priority class.")
    queue_position: int | None = Field(
        None,
        description="While queued: jobs of its model that workers take before it (0 = next): those ahead of it "
        "in its own class's queue plus every job queued in a higher class (approximate, see the scaling docs).",
    )
    waiting_for: Literal["no_worker"] | None = Field(
        None,
        description="While queued: why it cannot start yet; 'no_worker' = no live worker serves its model "
        "(it runs once one starts).",
    )
    progress: ProgressView | None = None
    webhook: WebhookView | None = None
    params: JobParams | None = Field(
        None, description="What the job was asked to draw, resolved: resubmittable as a POST /v1/images body."
    )


class ErrorResponse(BaseModel):
    error: ErrorBody


# --- security: tenant job listing and API-key administration ------------------------------


class JobList(BaseModel):
    """Body of ``GET /v1/images``: the caller's tenant's recent jobs, newest first."""

    data: list[JobView]


class KeyLimitsModel(BaseModel):
    """Per-key overrides of the deployment's limits; unset fields use the SFUMATO_* defaults."""

    model_config = ConfigDict(extra="forbid")

    rate_limit_rps: float | None = Field(default=None, ge=0, le=1e6, description="Requests per second; 0 = no limit.")
    rate_limit_burst: int | None = Field(default=None, ge=1, le=1_000_000, description="Requests at once.")
    images_per_minute: int | None = Field(
        default=None, ge=0, le=1_000_000, description="Images per minute; 0 = no limit."
    )
    max_concurrent_jobs: int | None = Field(default=None, ge=0, le=1_000_000, description="Queued + running jobs.")


class KeyCreate(BaseModel):
    """Body of ``POST /v1/admin/keys``."""

    model_config = ConfigDict(extra="forbid")

    tenant: str = Field(..., min_length=1, max_length=64, description="Whose jobs and images the key reaches.")
    name: Name = Field(..., min_length=1, max_length=100, description="What the key is for (shown in listings).")
    scopes: list[Literal["images:read", "images:write", "admin"]] = Field(
        default=["images:read", "images:write"], min_length=1, max_length=3, description="What the key may do."
    )
    limits: KeyLimitsModel = KeyLimitsModel()
    priority: PriorityClass = Field(
        DEFAULT_PRIORITY,
        description="The key's jobs' priority class: its default, and the highest a request may ask for.",
    )


class KeyView(BaseModel):
    """An API key as the admin API shows it: never the secret or its hash."""

    id: str
    tenant: str
    name: str
    scopes: list[str]
    created_at: float
    revoked: bool
    revoked_at: float | None = None
    limits: dict[str, float | int] = Field(default_factory=dict)
    priority: PriorityClass = DEFAULT_PRIORITY


class KeyCreated(KeyView):
    """``POST /v1/admin/keys``: the key itself appears here once and is never shown again."""

    key: str


class KeyListView(BaseModel):
    data: list[KeyView]
