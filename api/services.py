"""What a request handler may use: settings, the job store, the object store.

Built once per app in the lifespan and reached through ``Annotated`` dependencies, so the web
process holds no global state and tests can build an app per Settings.
"""

from __future__ import annotations

from dataclasses import dataclass

from core.config import Settings
from core.jobs import JobStore, connect
from core.storage import LocalStore, S3Store, build_store


@dataclass
class ApiServices:
    settings: Settings
    jobs: JobStore
    store: LocalStore | S3Store

    @classmethod
    def build(cls, settings: Settings) -> ApiServices:
        return cls(settings=settings, jobs=JobStore(connect(settings), settings), store=build_store(settings))

    def close(self) -> None:
        self.jobs.connection.close()
