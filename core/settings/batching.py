"""Batching settings: how a worker groups compatible jobs into one pipeline call."""

from __future__ import annotations

from typing import ClassVar

from pydantic import Field

from core.settings.base import SettingsGroup


class BatchingSettings(SettingsGroup):
    """How a worker fills a batch: its size, how long it waits for partners with the same
    batch key, how far down the queue it looks, and what it overlaps with the next batch
    (prompt encodings it keeps, images it encodes and uploads in the background).

    Read by the worker only.
    """

    section: ClassVar[str] = "Batching"

    max_batch: int = Field(
        default=8, ge=1, le=64, description="Most images in one pipeline call (a request with n=4 fills 4 slots)."
    )
    max_wait_ms: int = Field(
        default=25, ge=0, le=10_000, description="Longest a batch waits for partners once its oldest job is taken."
    )
    adaptive_wait: bool = Field(
        default=True,
        description="Skip the partner wait while recent waits found no partner (one request at a time), probing "
        "now and then (every 16th batch). Queued partners are always claimed; `SFUMATO_MAX_WAIT_MS` still bounds "
        "every wait.",
    )
    batch_scan_depth: int = Field(
        default=64, ge=1, le=10_000, description="How far down the queue a worker looks for batch partners."
    )
    priority_share: int = Field(
        default=10,
        ge=0,
        le=1000,
        description="While a lower priority class has jobs waiting, it gets at least one batch leader in every "
        "this many, however busy the higher classes are (0 or 1: strict priority, a lower class may starve).",
    )
    prompt_cache_size: int = Field(
        default=512, ge=0, description="Text-encoder outputs a worker keeps (LRU entries); 0 = no cache."
    )
    batch_isolation: bool = Field(
        default=True,
        description="When a batch fails for a reason that may be one job's input (not memory, Redis, storage or "
        "the model), re-run its jobs in halves so only a job that fails alone fails; the others get the images "
        "they would have had alone. Counted in `sfumato_batch_isolations_total`. Off: the whole batch fails.",
    )
    preempt: bool = Field(
        default=True,
        description="While a batch of only standard/batch-class jobs runs and an interactive job is queued for "
        "the model, stop the batch at its next denoising step (checked at most every 100 ms) and put its jobs "
        "back at the head of their queues, without using a retry; the interactive job runs next. A job may be "
        "preempted again while the work it has lost stays under SFUMATO_PREEMPT_MAX_LOST_WORK, so bulk work "
        "always finishes. Counted in `sfumato_batch_preemptions_total`.",
    )
    preempt_max_lost_work: float = Field(
        default=1.0,
        ge=0.0,
        le=10.0,
        allow_inf_nan=False,
        description="The work a bulk job may lose to preemptions, in runs of its own (each stop costs the steps "
        "it had run, and at least a quarter of a run): 1.0 bounds a bulk job at about twice its run time plus "
        "the interactive jobs served first; 0 turns preemption off.",
    )
    upload_stage_depth: int = Field(
        default=2, ge=0, le=16, description="Finished batches encoded/uploaded in the background (0: inline)."
    )
