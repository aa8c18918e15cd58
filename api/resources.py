"""What a request handler may use: settings, the job store, the object store, API keys, quotas.

Built once per app in the lifespan and reached through ``Annotated`` dependencies, so the web
process holds no global state and tests can build an app per Settings.
"""

from __future__ import annotations

from dataclasses import dataclass

from api.event_stream import JobEvents
from api.waiting import CompletionWaiter
from core.apikeys import KeyStore
from core.config import Settings
from core.idempotency import IdempotencyKeys
from core.jobs import JobStore, connect
from core.quotas import Quotas
from core.storage import LocalStore, S3Store, build_store
from core.webhooks import WebhookStore


@dataclass
class ApiServices:
    settings: Settings
    jobs: JobStore
    store: LocalStore | S3Store
    keys: KeyStore
    quotas: Quotas
    waiter: CompletionWaiter
    idempotency: IdempotencyKeys
    webhooks: WebhookStore
    events: JobEvents

    @classmethod
    def build(cls, settings: Settings) -> ApiServices:
        connection = connect(settings)
        jobs = JobStore(connection, settings)
        return cls(
            settings=settings,
            jobs=jobs,
            store=build_store(settings),
            keys=KeyStore(connection, settings),
            quotas=Quotas(connection, settings, jobs),
            waiter=CompletionWaiter(settings),
            idempotency=IdempotencyKeys(connection, settings),
            webhooks=WebhookStore(connection, settings),
            events=JobEvents(settings),
        )

    def close(self) -> None:
        self.jobs.connection.close()
