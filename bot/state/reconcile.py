"""The reconciler: at start and every ``reconcile_interval`` seconds, every job that has
not been reported is driven to its end from its system of record, so no check run stays
queued or in progress after the bot process that held it is gone.

- running, leased to a process that died: back to the queue, or concluded "error" after
  three attempts (``Dispatcher.resume``); a Cloud Run execution is its own record, looked
  at by the Cloud Run dispatcher;
- queued: got run (its check run made first when the process died before making it),
  once it is older than ``GRACE`` seconds (younger ones are being accepted right now);
- finished but not reported (the process died between the conclusion and the check
  run's): reported once its reporter's lease has run out (``on_finished``).

Every step is a conditional update of the shared store, so instances reconciling at
once do each thing once.
"""

from __future__ import annotations

import asyncio
import logging
import time

from bot.service import RegressionService

log = logging.getLogger(__name__)

GRACE = 60.0  # seconds a queued job is left to the instance accepting it


async def reconcile(service: RegressionService) -> None:
    """One pass over the store's unreported jobs."""
    await service.dispatcher.resume()
    for job in await service.jobs.unfinished():
        if job.state == "queued" and job.updated < time.time() - GRACE:
            try:
                await service.resume(job)
            except Exception:
                log.exception("reconciling: job %s could not be resumed", job.id)
    for job in await service.jobs.unreported():
        claimed = await service.jobs.claim_report(job.id)
        if claimed is None:
            continue  # its reporter is alive, or another instance took it
        try:
            await service.on_finished(claimed)
        except Exception:
            log.exception("reconciling: job %s could not be reported", job.id)


async def run_forever(service: RegressionService, interval: float) -> None:
    """``reconcile`` every ``interval`` seconds, logging what fails, until cancelled."""
    while True:
        try:
            await reconcile(service)
        except Exception:
            log.exception("reconciling failed")
        await asyncio.sleep(interval)
