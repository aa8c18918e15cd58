"""The worker loop on RQ: take a job, gather its batch, run it on the resident engine, and
complete every job on its own.

Built on RQ's ``SimpleWorker`` (never forks: CUDA contexts and resident weights do not
survive a fork) by overriding the one hook RQ offers for it, ``execute_job``. RQ keeps doing
what it does well: blocking dequeue of the leader, worker registration and heartbeats,
registries, maintenance. We add the choice of the next leader's priority class
(``worker/runtime/priority.py``), partner claiming (``worker/runtime/batcher.py``), one engine call
per batch, and completion of each job with RQ's own success/failure handling and our error
code in its meta. Encoding and upload run in a bounded background stage, so the next batch
denoises while PNGs are written. A batch of bulk jobs yields to a queued interactive job at a
denoising step (:class:`PreemptionWatcher`): its jobs go back to the head of their queues.
"""

from __future__ import annotations

import logging
import secrets
import signal
import sys
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass
from functools import partial
from typing import Any

from rq import Queue, SimpleWorker
from rq.executions import Execution
from rq.job import Job
from rq.job import JobStatus as RQStatus
from rq.registry import CanceledJobRegistry
from rq.serializers import JSONSerializer
from rq.timeouts import JobTimeoutException
from rq.utils import now as rq_now
from rq.worker import WorkerStatus

from core.batch_key import BatchKey
from core.config import Settings
from core.errors import ErrorDict, GenerationFailed
from core.jobs import META_ERROR, cancel_key, payload_of
from core.presence import announce, withdraw
from core.priority import WAKE_CAP, PriorityClass, at_or_above, priority_of_queue, wake_key
from core.schemas import BatchInfo, JobPayload
from core.storage import ObjectStore
from worker.pipelines.engine import Engine
from worker.runtime.batcher import BatchPolicy, PartnerClaimer, WaitAdvisor, gather_partners
from worker.runtime.execute import Generated, JobOutcome, generate_batch, store_outputs
from worker.runtime.metrics import batch_preempted, job_ended
from worker.runtime.preemption_budget import charge, may_preempt
from worker.runtime.priority import PrioritySchedule, ScheduledQueue, waiting_classes
from worker.runtime.progress import ProgressPublisher
from worker.runtime.redis_outage import clean_registries_except_started, complete_through_outage
from worker.runtime.upload_stage import BackgroundStage

log = logging.getLogger("sfumato.worker")

#: How long the command-channel thread blocks on one read: bounds how long a worker's exit waits.
PUBSUB_POLL_S = 1.0
#: The class whose queued jobs preempt a running batch of lower-class jobs.
PREEMPTING_CLASS: PriorityClass = "interactive"


class JobFailed(Exception):
    """Carries a job's error into RQ's failure path (its message is what RQ logs)."""

    def __init__(self, error: ErrorDict) -> None:
        super().__init__(f"{error['code']}: {error['message']}")
        self.error = error


@dataclass
class ActiveJob:
    """A job this worker has started: RQ's records plus its validated payload."""

    job: Job
    queue: Queue
    execution: Execution
    payload: JobPayload
    started_at: float


class SfumatoWorker(SimpleWorker):
    """An RQ worker whose jobs run, in batches, on one resident :class:`Engine`."""

    def __init__(
        self, queues: Sequence[Queue | str], *, engine: Engine, store: ObjectStore, settings: Settings, **kwargs: Any
    ) -> None:
        kwargs.setdefault("serializer", JSONSerializer)
        kwargs.setdefault("queue_class", ScheduledQueue)
        # By name: RQ builds them as its queue_class (ours dequeues in the schedule's order).
        super().__init__([q.name if isinstance(q, Queue) else q for q in queues], **kwargs)
        #: The model's queue of each priority class this worker reads (core/priority.py).
        self.class_queues: dict[PriorityClass, Queue] = {priority_of_queue(q.name): q for q in self.queues}
        self.schedule = PrioritySchedule(settings.priority_share, list(self.class_queues))
        self.engine = engine
        self.store = store
        self.settings = settings
        self.policy = BatchPolicy(
            max_images=settings.max_batch,
            max_wait_s=settings.max_wait_ms / 1000,
            scan_depth=settings.batch_scan_depth,
        )
        self.wait_advisor = WaitAdvisor(enabled=settings.adaptive_wait)
        self.completion_stage = BackgroundStage(settings.upload_stage_depth)
        self._claimers: dict[str, PartnerClaimer] = {}
        self.draining = False
        #: Whether interactive jobs were already queued when the current leader was taken.
        self._leader_passed_over_interactive = False

    def get_heartbeat_ttl(self, job: Job, working_time: float = 0.0) -> int:
        # Short: the liveness thread extends it while the job runs (see worker/runtime/liveness.py).
        return self.settings.execution_ttl_s

    def clean_registries(self) -> None:
        # RQ's maintenance minus its abandoned-job sweep: worker/runtime/liveness.py does that,
        # with a grace period after a Redis outage (RQ's would run at once, at our start).
        clean_registries_except_started(self)
        self.last_cleaned_at = rq_now()  # type: ignore[assignment]  # RQ annotates it None only

    # --- signals -------------------------------------------------------------------------
    def request_stop(self, signum: int, frame: Any) -> None:
        """SIGTERM/SIGINT: stop taking jobs, finish and complete the batch in hand, exit 0.

        Unlike plain RQ, a second signal does not turn this into a cold shutdown that kills the
        batch: Kubernetes may signal more than once, and only SIGKILL should cost work (which
        the liveness reaper then re-queues).
        """
        if self.draining:
            log.warning("signal %s while draining: still finishing the batch in hand", signum)
            return
        self.draining = True
        log.info("signal %s: draining (no new jobs; finishing the batch in hand)", signum)
        self._shutdown_requested_date = rq_now()
        signal.signal(signal.SIGINT, self.request_stop)
        signal.signal(signal.SIGTERM, self.request_stop)
        self._shutdown()

    # --- choosing the leader's class ------------------------------------------------------
    def dequeue_job_and_maintain_ttl(self, timeout: int | None, max_idle_time: int | None = None) -> Any:
        """RQ's dequeue, with the queues in the priority schedule's order for this leader."""
        self._ordered_queues = [self.class_queues[c] for c in self.schedule.order()]
        return super().dequeue_job_and_maintain_ttl(timeout, max_idle_time)

    def reorder_queues(self, reference_queue: Queue) -> None:
        """RQ's hook after each dequeue: tell the schedule which class was served and which waited."""
        waiting = waiting_classes(self.connection, self.class_queues) if len(self.class_queues) > 1 else set()
        self.schedule.taken(priority_of_queue(reference_queue.name), waiting)
        self._leader_passed_over_interactive = PREEMPTING_CLASS in waiting

    # --- the RQ hook ---------------------------------------------------------------------
    def execute_job(self, job: Job, queue: Queue) -> None:
        try:
            leader = self._start(job, queue)
            if leader is None:
                return
            batch = [leader, *self._claim_partners(leader)]
            watcher = CancelWatcher(self.connection, self.settings, [a.job.id for a in batch])
            try:
                generated = self._generate(batch, watcher, self._preemption_watcher(batch))
            except Preempted as stop:
                self._complete_newly_canceled(batch, watcher, force_check=True)
                self._requeue_preempted([a for a in batch if a.job.id not in watcher.canceled], stop)
                return
            self._complete_newly_canceled(batch, watcher, force_check=True)
            survivors = [(a, g) for a, g in zip(batch, generated, strict=True) if a.job.id not in watcher.canceled]
            if survivors:
                info = BatchInfo(id=secrets.token_hex(8), jobs=len(batch), images=sum(a.payload.n for a in batch))
                jobs, results = [a for a, _ in survivors], [g for _, g in survivors]
                self.completion_stage.submit(lambda: self._store_and_complete(jobs, results, info))
        finally:
            self.set_state(WorkerStatus.IDLE)

    def subscribe(self) -> None:
        """RQ's command-channel subscription, read with a 1 s poll instead of RQ's 60 s.

        RQ's ``unsubscribe()`` calls ``PubSubWorkerThread.stop()``, which (redis-py 8) waits for
        the read in progress: with RQ's 60 s read, every worker exit (a SIGTERM drain, a burst
        run) waited up to a minute after its last job. Measured: an empty burst run took 60.0 s,
        1.0 s with this."""
        self.log.info("Worker %s: subscribing to channel %s", self.name, self.pubsub_channel_name)
        self.pubsub = self.connection.pubsub()
        self.pubsub.subscribe(**{self.pubsub_channel_name: self.handle_payload})
        thread: Any = self.pubsub.run_in_thread(
            sleep_time=PUBSUB_POLL_S, daemon=True, exception_handler=self._pubsub_exception_handler
        )
        self.pubsub_thread = thread  # RQ annotates the attribute as None

    def teardown(self) -> None:
        # Warm shutdown: jobs whose images are still being written are completed first.
        self.completion_stage.close()
        super().teardown()

    # --- starting jobs -------------------------------------------------------------------
    def _start(self, job: Job, queue: Queue) -> ActiveJob | None:
        """Register ``job`` as running; None if it must not run (canceled, broken payload)."""
        execution = self.prepare_execution(job)
        if job.get_status(refresh=True) == RQStatus.CANCELED:
            with self.connection.pipeline() as pipe:
                self.cleanup_execution(job, pipeline=pipe, execution=execution)
                pipe.execute()
            log.info("job %s was canceled before it started", job.id)
            return None
        self.prepare_job_execution(job, remove_from_intermediate_queue=True)
        job.started_at = rq_now()
        return self._admit(job, queue, execution)

    def _start_many(self, jobs: list[Job], queue: Queue) -> list[ActiveJob]:
        """Register claimed partner jobs as running in ONE Redis round trip.

        What RQ's ``prepare_execution`` + ``prepare_job_execution`` do per job, sharing one
        pipeline: at 8 partners that was 24 round trips and ~8% of a busy worker's main thread.
        A claimed job cannot have been canceled while queued (cancel LREMs it from the queue
        first, and the claim moved it off the queue atomically); a later cancel arrives
        through the cancel key, which the CancelWatcher reads.
        """
        executions = []
        with self.connection.pipeline() as pipe:
            for job in jobs:
                ttl = self.get_heartbeat_ttl(job)
                execution = Execution.create(job, ttl, pipeline=pipe, worker_name=self.name)
                self.executions[execution.id] = execution
                executions.append(execution)
                job.heartbeat(rq_now(), ttl, pipeline=pipe)
                job.prepare_for_execution(self.name, pipeline=pipe)
                pipe.persist(job.key)
                pipe.lrem(queue.intermediate_queue_key, 1, job.id)
            self.set_state(WorkerStatus.BUSY, pipeline=pipe)
            self.heartbeat(self.get_heartbeat_ttl(jobs[0]), pipeline=pipe)
            pipe.execute()
        started = [self._admit(job, queue, execution) for job, execution in zip(jobs, executions, strict=True)]
        return [active for active in started if active is not None]

    def _admit(self, job: Job, queue: Queue, execution: Execution) -> ActiveJob | None:
        """A started job's payload and deadline checks: failed here, it never reaches the model."""
        try:
            payload = payload_of(job)
        except Exception:
            # The validation details name internal types: they go to the log, not to the client.
            log.exception("job %s has an invalid payload", job.id, extra={"job_id": job.id})
            message = "the queued job could not be read by this worker (an API and worker version mismatch?)"
            error = GenerationFailed(message).to_dict()
            self._fail(job, queue, execution, error)
            return None
        if payload.deadline_at is not None and time.time() > payload.deadline_at:
            late = time.time() - payload.created_at
            message = f"the job had not started {late:.1f} s after submission, past its timeout_s; it never ran"
            self._fail(job, queue, execution, ErrorDict(code="deadline_exceeded", message=message, param="timeout_s"))
            return None
        return ActiveJob(job, queue, execution, payload, started_at=time.time())

    def _claimer(self, leader_queue: Queue) -> PartnerClaimer:
        """Scans the class queues at or above the leader's class, highest first: a bulk job may
        ride in a more urgent leader's batch only if the leader is bulk too."""
        priority = priority_of_queue(leader_queue.name)
        if priority not in self._claimers:
            queues = [self.class_queues[c] for c in at_or_above(priority) if c in self.class_queues]
            self._claimers[priority] = PartnerClaimer(self.connection, queues or [leader_queue], self.policy.scan_depth)
        return self._claimers[priority]

    def _claim_partners(self, leader: ActiveJob) -> list[ActiveJob]:
        """Claim queued jobs with the leader's batch key and start them."""
        digest = BatchKey.of(leader.payload).digest()
        claimer = self._claimer(leader.queue)
        origin: dict[str, Queue] = {}

        def claim(capacity: int) -> list[tuple[str, int]]:
            claimed = claimer.claim_from(digest, capacity)
            origin.update((job_id, queue) for job_id, _images, queue in claimed)
            return [(job_id, images) for job_id, images, _queue in claimed]

        ids = gather_partners(leader.payload.n, leader.payload.exact, claim, self.policy, advisor=self.wait_advisor)
        if not ids:
            return []
        fetched = Job.fetch_many(ids, connection=self.connection, serializer=self.serializer)
        by_queue: dict[str, tuple[Queue, list[Job]]] = {}
        for job_id, job in zip(ids, fetched, strict=True):
            queue = origin[job_id]
            if job is None:  # expired while queued
                self.connection.lrem(queue.intermediate_queue_key, 1, job_id)
            else:
                by_queue.setdefault(queue.name, (queue, []))[1].append(job)
        return [active for queue, jobs in by_queue.values() for active in self._start_many(jobs, queue)]

    # --- running -------------------------------------------------------------------------
    def _generate(
        self, batch: list[ActiveJob], watcher: CancelWatcher, preemption: PreemptionWatcher | None = None
    ) -> list[Generated]:
        timeout = min(a.job.timeout or self.settings.job_timeout_s for a in batch)
        payloads = [a.payload for a in batch]
        log.info("running batch of %d job(s), %d image(s)", len(batch), sum(p.n for p in payloads))
        progress = ProgressPublisher(self.connection, self.settings, payloads)  # worker/runtime/progress.py

        def on_step(done: int, total: int) -> None:
            # Canceled jobs end now; their images are dropped. Only if every job in the batch
            # is canceled does the denoising itself stop.
            if self._complete_newly_canceled(batch, watcher) and watcher.all_canceled():
                raise BatchCanceled()
            if preemption is not None and preemption.due():
                raise Preempted(done, total)
            progress.step(done, total)

        try:
            with self.death_penalty_class(timeout, JobTimeoutException, job_id=batch[0].job.id):
                return generate_batch(self.engine, payloads, on_step, isolate=self.settings.batch_isolation)
        except JobTimeoutException:
            error = ErrorDict(code="timeout", message=f"the batch ran longer than {timeout} s", param=None)
            return [Generated(p, None, error, float(timeout)) for p in payloads]

    def _store_and_complete(self, batch: list[ActiveJob], generated: list[Generated], info: BatchInfo) -> None:
        for active, gen in zip(batch, generated, strict=True):
            try:
                outcome = store_outputs(
                    self.store, gen, self.engine.spec.id, active.started_at, info, self.settings.storage_retry_budget_s
                )
            except Exception:  # never leave a started job behind
                log.exception("completing job %s failed", active.job.id, extra={"job_id": active.job.id})
                failed = GenerationFailed("the images could not be encoded or stored").to_dict()
                outcome = JobOutcome(active.payload, error=failed)
            try:
                budget = self.settings.job_timeout_s  # a Redis outage: wait for Redis, keep the lease
                complete_through_outage(partial(self._complete, active, outcome), budget, active.job.id)
            except Exception as exc:
                # Redis is still unreachable, so the job cannot be completed from here. Stop vouching
                # for it: without our heartbeats its lease runs out and the reaper re-queues it;
                # the re-run writes the same keys, so the client still sees one result.
                self.executions.pop(active.execution.id, None)
                log.error("could not complete job %s (%s); it will be re-queued", active.job.id, exc)

    # --- preemption ----------------------------------------------------------------------
    def _preemption_watcher(self, batch: list[ActiveJob]) -> PreemptionWatcher | None:
        """A watcher for ``batch`` if a queued interactive job may stop it: preemption is on
        (SFUMATO_PREEMPT), this worker reads the interactive queue, every job is of a lower
        class, and each has lost less than SFUMATO_PREEMPT_MAX_LOST_WORK to earlier preemptions
        (the bound that keeps bulk work from livelocking; worker/runtime/preemption_budget.py).

        Nor when interactive jobs were already waiting as its leader was taken: then the
        schedule chose this batch on purpose, as a lower class's guaranteed turn
        (SFUMATO_PRIORITY_SHARE), and stopping it would take that turn away.
        """
        interactive = self.class_queues.get(PREEMPTING_CLASS)
        if not self.settings.preempt or interactive is None or self._leader_passed_over_interactive:
            return None
        if any(priority_of_queue(a.queue.name) == PREEMPTING_CLASS for a in batch):
            return None
        if not may_preempt((a.job.meta for a in batch), self.settings.preempt_max_lost_work):
            return None
        return PreemptionWatcher(self.connection, interactive.key)

    def _requeue_preempted(self, batch: list[ActiveJob], stop: Preempted) -> None:
        """Put a preempted batch's jobs back at the head of their own class queues, in one
        transaction: each leaves the started registry and its execution as a finished job
        would, and is queued again as RQ's retry queues it, but without using an attempt and
        without a failure record. Its meta is charged the work thrown away (preemption_budget).
        The interactive job is then the next leader (the schedule puts the highest class first).
        """
        if not batch:
            return
        with self.connection.pipeline() as pipe:
            # LPUSH one at a time: the last pushed is the head, so push the batch back to front.
            for active in reversed(batch):
                job = active.job
                charge(job.meta, stop.done_steps, stop.total_steps)
                self.cleanup_execution(job, pipeline=pipe, execution=active.execution)
                job.started_at = None
                job.worker_name = None
                active.queue._enqueue_job(job, pipeline=pipe, at_front=True)
            for key in {active.queue.key for active in batch}:  # wake idle workers, as an enqueue does
                wake = wake_key(key)
                pipe.rpush(wake, "1")
                pipe.ltrim(wake, -WAKE_CAP, -1)
                pipe.expire(wake, 600)
            pipe.execute()
        batch_preempted(self.engine.spec.id)
        ids = [active.job.id for active in batch]
        log.info(
            "batch of %d job(s) preempted by a queued interactive job; re-queued at the head of their queues",
            len(batch),
            extra={"event": "batch_preempted", "job_ids": ids},
        )

    # --- completion ----------------------------------------------------------------------
    def _complete(self, active: ActiveJob, outcome: JobOutcome) -> None:
        if outcome.result is not None:
            self._finalize_success(active.job, active.queue, active.execution, outcome.result.model_dump(mode="json"))
            job_ended(active.job, self.engine.spec.id, "succeeded")
        else:
            assert outcome.error is not None
            self._fail(active.job, active.queue, active.execution, outcome.error)

    def _complete_newly_canceled(
        self, batch: list[ActiveJob], watcher: CancelWatcher, force_check: bool = False
    ) -> bool:
        """Complete jobs whose cancel request just arrived; True if there were any."""
        newly = watcher.poll(force=force_check)
        for active in batch:
            if active.job.id in newly:
                self._complete_canceled(active)
        return bool(newly)

    def _complete_canceled(self, active: ActiveJob) -> None:
        """End a running job as canceled (the client asked; see JobStore.cancel)."""
        job = active.job
        with self.connection.pipeline() as pipe:
            job.set_status(RQStatus.CANCELED, pipeline=pipe)
            job.ended_at = rq_now()
            CanceledJobRegistry(job.origin, self.connection, serializer=self.serializer).add(job, pipeline=pipe)
            self.cleanup_execution(job, pipeline=pipe, execution=active.execution)
            pipe.delete(cancel_key(self.settings, job.id))
            pipe.execute()
        job_ended(job, self.engine.spec.id, "canceled")
        log.info("job %s canceled while running", job.id)

    def _fail(self, job: Job, queue: Queue, execution: Execution, error: ErrorDict) -> None:
        """Fail ``job`` for good with our error: a failure we caught is not worth a retry
        (retries are for workers that died, which never get here)."""
        job.retries_left = 0
        job.meta[META_ERROR] = dict(error)
        job.save_meta()
        try:
            raise JobFailed(error)
        except JobFailed:
            self._finalize_failure(job, queue, execution, sys.exc_info())
        job_ended(job, self.engine.spec.id, "failed", error)


class BatchCanceled(Exception):
    """Raised from the step callback when every job of the batch was canceled."""


class Preempted(BaseException):
    """Raised from the step callback to stop a batch of bulk jobs for a queued interactive job.

    A BaseException, like KeyboardInterrupt, on purpose: it is a control-flow signal, not a
    failure, so it passes through every ``except Exception`` between the step callback and the
    runner (the engine's error translation, batch isolation, ``generate_batch``'s per-job
    errors) and nothing logs, counts or bisects it as a failed batch.
    """

    def __init__(self, done_steps: int, total_steps: int) -> None:
        super().__init__(f"preempted after {done_steps} of {total_steps} steps")
        self.done_steps = done_steps
        self.total_steps = total_steps


class PreemptionWatcher:
    """Sees a queued job on the model's interactive queue, with one LLEN at most every 100 ms."""

    def __init__(self, connection: Any, queue_key: str, interval_s: float = 0.1) -> None:
        self.connection = connection
        self.queue_key = queue_key
        self.interval_s = interval_s
        self._next = 0.0

    def due(self) -> bool:
        """True when an interactive job waits (checked at most once per interval)."""
        now = time.monotonic()
        if now < self._next:
            return False
        self._next = now + self.interval_s
        try:
            return int(self.connection.llen(self.queue_key)) > 0
        except Exception as exc:  # never fail a batch because the check could not run
            log.warning("preemption check failed: %s", exc)
            return False


class CancelWatcher:
    """Sees cancel requests (``core.jobs.cancel_key``) for a batch's jobs, at most every 100 ms."""

    def __init__(self, connection: Any, settings: Settings, job_ids: list[str], interval_s: float = 0.1) -> None:
        self.connection = connection
        self.settings = settings
        self.job_ids = job_ids
        self.canceled: set[str] = set()
        self.interval_s = interval_s
        self._next = 0.0

    def poll(self, force: bool = False) -> set[str]:
        """Job ids whose cancel request arrived since the last poll."""
        now = time.monotonic()
        if now < self._next and not force:
            return set()
        self._next = now + self.interval_s
        pending = [job_id for job_id in self.job_ids if job_id not in self.canceled]
        if not pending:
            return set()
        try:
            flags = self.connection.mget([cancel_key(self.settings, job_id) for job_id in pending])
        except Exception as exc:  # never fail a batch because a cancel check could not run
            log.warning("cancel check failed: %s", exc)
            return set()
        new = {job_id for job_id, flag in zip(pending, flags, strict=True) if flag is not None}
        self.canceled |= new
        return new

    def all_canceled(self) -> bool:
        return len(self.canceled) == len(self.job_ids)


class PresenceHeartbeat:
    """Announces this worker's model in Redis every few seconds from a daemon thread."""

    def __init__(self, worker: SfumatoWorker, interval_s: float = 5.0) -> None:
        self.worker = worker
        self.interval_s = interval_s
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="sfumato-presence", daemon=True)

    def _beat(self) -> None:
        w = self.worker
        announce(w.connection, w.settings, w.engine.spec.id, w.name, ttl_s=self.interval_s * 3)

    def _run(self) -> None:
        while not self._stop.wait(self.interval_s):
            try:
                self._beat()
            except Exception as exc:  # Redis down: keep trying, the worker loop reconnects too.
                log.warning("presence heartbeat failed: %s", exc)

    def start(self) -> None:
        self._beat()
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(timeout=2)
        try:
            withdraw(self.worker.connection, self.worker.settings, self.worker.engine.spec.id, self.worker.name)
        except Exception as exc:
            log.warning("could not withdraw presence: %s", exc)
