"""The worker process's deliverer of webhooks (shared/webhooks/delivery.py), started with
the worker and stopped with it, on resources of its own: its pooled connections, its HTTP
client. Every worker process runs one; they share the outbox without waiting on each
other."""

import asyncio
from contextlib import suppress
from dataclasses import dataclass
from datetime import timedelta

from sqlalchemy.ext.asyncio import AsyncEngine

from shared.config import Settings
from shared.db import create_engine
from shared.webhooks.addresses import CallbackPolicy
from shared.webhooks.delivery import CONCURRENCY, Deliverer, SigningKeys
from shared.webhooks.sending import Sender
from worker.metrics import WorkerMetrics

# A claim, and a try's key lookup and outcome, each hold one for a moment.
POOL_SIZE = 2


@dataclass
class RunningDeliverer:
    task: asyncio.Task[None]
    sender: Sender
    engine: AsyncEngine

    async def stop(self) -> None:
        self.task.cancel()
        with suppress(asyncio.CancelledError):
            await self.task
        await self.sender.close()
        await self.engine.dispose()


def start_delivering(settings: Settings, metrics: WorkerMetrics) -> RunningDeliverer:
    engine = create_engine(settings, pool_size=POOL_SIZE)
    sender = Sender(CallbackPolicy(settings.webhook_allow_private), concurrency=CONCURRENCY)
    deliverer = Deliverer(
        engine,
        sender,
        SigningKeys(engine, settings.webhook_secret),
        max_age=timedelta(seconds=settings.webhook_max_age_s),
        on_tried=metrics.webhook_tried,
    )
    task = asyncio.create_task(deliverer.run(), name="webhooks-deliverer")
    return RunningDeliverer(task, sender, engine)
