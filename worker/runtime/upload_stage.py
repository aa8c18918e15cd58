"""A bounded background stage: encode, upload and complete a batch while the next one denoises.

One thread, a queue of at most ``depth`` batches. ``submit`` blocks when the stage is full,
so a slow object store slows the worker down instead of piling finished images up in memory.
With ``depth=0`` work runs inline (simplest to reason about; what tests of ordering use).
"""

from __future__ import annotations

import logging
import queue
import threading
from collections.abc import Callable

log = logging.getLogger("sfumato.worker")

Task = Callable[[], None]


class BackgroundStage:
    def __init__(self, depth: int, name: str = "sfumato-upload") -> None:
        self.depth = depth
        self._tasks: queue.Queue[Task | None] = queue.Queue(maxsize=max(depth, 1))
        self._thread: threading.Thread | None = None
        if depth > 0:
            self._thread = threading.Thread(target=self._run, name=name, daemon=True)
            self._thread.start()

    def _run(self) -> None:
        while True:
            task = self._tasks.get()
            try:
                if task is None:
                    return
                task()
            except Exception:  # a task completes its own jobs; never let one kill the stage
                log.exception("background completion task failed")
            finally:
                self._tasks.task_done()

    def submit(self, task: Task) -> None:
        """Run ``task`` in the background (blocking while ``depth`` tasks are pending)."""
        if self._thread is None:
            task()
            return
        self._tasks.put(task)

    def drain(self) -> None:
        """Wait until every submitted task has finished (graceful shutdown)."""
        if self._thread is not None:
            self._tasks.join()

    def close(self) -> None:
        """Finish pending work, then stop the thread."""
        if self._thread is not None and self._thread.is_alive():
            self._tasks.put(None)
            self._thread.join()
