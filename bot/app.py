"""The web app: ``POST /webhook``, ``GET /healthz``, report and artifact pages.

``create_app()`` is the factory for ``python -m bot``, ``gunicorn_app()`` for gunicorn's
``aiohttp.GunicornWebWorker`` (App Engine). Webhooks are verified, de-duplicated by
delivery id and answered at once; their work runs in background tasks, and a delivery
counts as handled only once that work has been accepted (a failed one can be
redelivered). The state lives in SQLite in the data dir, or in a private bucket shared by
every instance (``SCARLET_BOT_STATE``).
"""

from __future__ import annotations

import asyncio
import logging
import mimetypes
from pathlib import Path

import aiohttp
from aiohttp import web
from gidgethub import BadRequest, ValidationFailure, sansio

from bot import drift, logs
from bot.github.auth import InstallationClients
from bot.pages.serve import add_routes
from bot.routers import router
from bot.service import SERVICE, RegressionService
from bot.settings import Settings, SettingsError
from bot.state import reconcile
from bot.state.jobs import DeliveryLog, JobStore, SQLiteDeliveryLog, SQLiteJobStore
from runner.store import KeyNotFound, ObjectInfo, StoreError, open_store

log = logging.getLogger(__name__)

# gunicorn's exit code for a worker that failed to boot: its master stops, not respawns.
WORKER_BOOT_ERROR = 3
MAX_BODY = 25 * 1024 * 1024  # GitHub caps webhook payloads at 25 MB
HANDLED = {
    "pull_request",
    "issue_comment",
    "check_run",
    "check_suite",
    "push",
    "installation",
    "installation_repositories",
}
# Where each handled event's payload must have data, as (key, key, ...) paths.
REQUIRED = {
    "pull_request": [("action",), ("pull_request", "number"), ("pull_request", "head", "sha")],
    "issue_comment": [("action",), ("issue", "number"), ("comment", "id"), ("comment", "user")],
    "check_run": [("action",), ("check_run", "head_sha"), ("check_run", "pull_requests")],
    "check_suite": [("action",), ("check_suite", "head_sha"), ("check_suite", "pull_requests")],
    "push": [("ref",), ("before",), ("after",)],
    "installation": [("action",)],
    "installation_repositories": [("action",), ("repositories_removed",)],
}
COMMON = [("repository", "full_name"), ("repository", "clone_url"), ("installation", "id")]
# Events about the installation itself: no repository, and no token to ask for (a deleted
# or suspended installation has none).
OF_INSTALLATION = {"installation", "installation_repositories"}

SETTINGS = web.AppKey("settings", Settings)
CLIENTS = web.AppKey("clients", InstallationClients)
DELIVERIES = web.AppKey("deliveries", DeliveryLog)
TASKS = web.AppKey("tasks", set)


def malformed(event: sansio.Event) -> str | None:
    """Why a signed payload of a handled event cannot be processed, if it cannot."""
    if not isinstance(event.data, dict):
        return "the payload is not a JSON object"
    common = [("installation", "id")] if event.event in OF_INSTALLATION else COMMON
    for path in [*REQUIRED[event.event], *common]:
        value = event.data
        for key in path:
            if not isinstance(value, dict) or key not in value:
                return f"the {event.event} payload lacks {'.'.join(path)}"
            value = value[key]
    return None


async def webhook(request: web.Request) -> web.Response:
    """Verify, de-duplicate and accept a delivery; process it off the request path."""
    app = request.app
    body = await request.read()
    try:
        event = sansio.Event.from_http(request.headers, body, secret=app[SETTINGS].webhook_secret)
    except ValidationFailure:
        return web.Response(status=401, text="invalid signature")
    except BadRequest as error:
        return web.Response(status=int(error.status_code), text=str(error) or "bad request")
    except (ValueError, KeyError, TypeError) as error:
        return web.Response(status=400, text=f"malformed delivery: {type(error).__name__}")
    if event.event not in HANDLED:
        return web.Response(status=202, text="ignored")
    reason = malformed(event)
    if reason:
        return web.Response(status=400, text=reason)
    try:
        taken = await app[DELIVERIES].begin(event.delivery_id)
    except Exception:
        log.exception("delivery %s: the delivery log failed", event.delivery_id)
        return web.Response(status=503, text="the bot's state is unavailable; redeliver later")
    if not taken:
        return web.Response(status=200, text="duplicate delivery")
    with logs.context(**about(event)):
        task = asyncio.create_task(process(app, event))
    app[TASKS].add(task)
    task.add_done_callback(app[TASKS].discard)
    return web.Response(status=202, text="accepted")


def about(event: sansio.Event) -> dict[str, object]:
    """What a delivery's log lines are about: its id, event, repository and PR."""
    data = event.data
    return {
        "delivery": event.delivery_id,
        "event": event.event,
        "repository": (data.get("repository") or {}).get("full_name"),
        "pr": (data.get("pull_request") or data.get("issue") or {}).get("number"),
    }


async def process(app: web.Application, event: sansio.Event) -> None:
    """Dispatch one event to the routers with a client of its installation; then record
    the delivery done, or release it for a redelivery when its work failed."""
    deliveries = app[DELIVERIES]
    try:
        gh = None
        if event.event not in OF_INSTALLATION:
            gh = await app[CLIENTS].client(event.data["installation"]["id"])
        await router.dispatch(event, gh, app[SERVICE])
    except Exception:
        log.exception("processing %s delivery %s failed", event.event, event.delivery_id)
        finish = deliveries.release
    else:
        finish = deliveries.done
    try:
        await finish(event.delivery_id)
    except Exception:
        log.exception("delivery %s: the delivery log failed", event.delivery_id)


def _start_drift(app: web.Application) -> web.Response:
    """A drift run for every installed repository, at most one per repository and day;
    the work runs after the answer."""

    async def run() -> None:
        try:
            await drift.schedule(app[CLIENTS], app[SERVICE], drift.today())
        except Exception:
            log.exception("scheduling drift runs failed")

    task = asyncio.create_task(run())
    app[TASKS].add(task)
    task.add_done_callback(app[TASKS].discard)
    return web.Response(status=202, text="accepted")


async def schedule_drift(request: web.Request) -> web.Response:
    """A scheduler's daily call with the scheduler token (401 without it)."""
    if not drift.authorised(request.app[SETTINGS].scheduler_secret, request):
        return web.Response(status=401, text="the scheduler token is missing or wrong")
    return _start_drift(request.app)


async def cron_drift(request: web.Request) -> web.Response:
    """App Engine cron's daily call (``cron.yaml``); 403 from anyone else."""
    if not drift.from_cron(request.app[SETTINGS].app_engine, request):
        return web.Response(status=403, text="only App Engine's cron service may call this")
    return _start_drift(request.app)


async def healthz(request: web.Request) -> web.Response:
    """Liveness, and App Engine's ``/_ah/start`` for a manually scaled instance."""
    return web.json_response({"ok": True})


async def artifact(request: web.Request) -> web.Response:
    """A file of the store (reports, results, images), with its cache policy: 404 when
    absent, 503 when the store cannot be reached."""
    store = request.app[SERVICE].store
    key = request.match_info["key"]

    def read() -> tuple[ObjectInfo, bytes]:
        return store.stat(key), store.get(key)

    try:
        info, data = await asyncio.to_thread(read)
    except (KeyNotFound, ValueError):
        raise web.HTTPNotFound() from None
    except StoreError as error:
        log.warning("serving %s: %s", key, error)
        raise web.HTTPServiceUnavailable(text="the artifact store is unavailable") from None
    content_type = info.content_type or mimetypes.guess_type(key)[0] or "application/octet-stream"
    headers = {"Cache-Control": info.cache_control} if info.cache_control else {}
    return web.Response(body=data, content_type=content_type.split(";")[0], headers=headers)


def create_app(settings: Settings | None = None) -> web.Application:
    """The bot's aiohttp application (settings from the environment by default)."""
    logs.configure()
    settings = settings or Settings.from_env()
    app = web.Application(client_max_size=MAX_BODY)
    app[SETTINGS] = settings
    app[TASKS] = set()
    app.router.add_post("/webhook", webhook)
    app.router.add_post("/schedule/drift", schedule_drift)
    app.router.add_get("/schedule/drift", cron_drift)
    app.router.add_get("/healthz", healthz)
    app.router.add_get("/_ah/start", healthz)
    app.router.add_get("/artifacts/{key:.+}", artifact)
    add_routes(app)
    app.cleanup_ctx.append(_lifecycle)
    return app


def gunicorn_app() -> web.Application:
    """App Engine's entrypoint (``app.yaml``): ``create_app()``, or, when a setting or a
    required secret is missing, one log line naming it and :data:`WORKER_BOOT_ERROR`."""
    try:
        return create_app()
    except SettingsError as error:
        log.critical("the bot cannot start: %s", error)
        raise SystemExit(WORKER_BOOT_ERROR) from None


def open_state(settings: Settings) -> tuple[JobStore, DeliveryLog]:
    """The job store and delivery log: in the shared bucket when one is configured, else
    in SQLite in the data dir."""
    shared = settings.shared_state
    if shared is None:
        path = settings.data_dir / "jobs.sqlite"
        return (
            SQLiteJobStore(path, lease=settings.lease),
            SQLiteDeliveryLog(path, lease=settings.lease),
        )
    from bot.state.gcsstate import DELIVERY_DEADLINE, Bucket, GCSDeliveryLog, GCSJobStore

    on_the_webhook = Bucket(*shared, deadline=DELIVERY_DEADLINE, timeout=DELIVERY_DEADLINE)
    return (
        GCSJobStore(Bucket(*shared), lease=settings.lease),
        GCSDeliveryLog(on_the_webhook, lease=settings.lease),
    )


def _cloud_run_emulator(endpoint: str) -> dict:
    """Clients of an emulated Run Admin API (REST at ``endpoint``, no credentials), as
    ``STORAGE_EMULATOR_HOST`` is for GCS; none (Cloud Run's own) when not set."""
    if not endpoint:
        return {}
    from google.auth.credentials import AnonymousCredentials
    from google.cloud import run_v2

    options = {"api_endpoint": endpoint}
    credentials = AnonymousCredentials()
    return {
        "jobs_client": run_v2.JobsClient(
            transport="rest", client_options=options, credentials=credentials
        ),
        "executions_client": run_v2.ExecutionsClient(
            transport="rest", client_options=options, credentials=credentials
        ),
    }


def _dispatcher(settings: Settings, jobs: JobStore, service: RegressionService):
    """Cloud Run Jobs when a job is configured (production), else the embedded queue."""
    from bot.dispatch.runs import merge_arguments, runner_command

    command = runner_command(settings)
    if settings.cloud_run_job:
        from bot.dispatch.cloudrun import CloudRunDispatcher

        return CloudRunDispatcher(
            jobs,
            settings.cloud_run_job,
            lambda job, out: command(job, out)[len(settings.runner) :],
            container="runner",
            task_count=settings.cloud_run_tasks,
            merge_args=merge_arguments(settings),
            on_finished=service.on_finished,
            on_progress=service.on_progress,
            poll_interval=settings.cloud_run_poll,
            **_cloud_run_emulator(settings.cloud_run_emulator),
        )
    from bot.dispatch.local import EmbeddedDispatcher

    return EmbeddedDispatcher(
        jobs,
        command,
        Path(settings.data_dir) / "runs",
        concurrency=settings.concurrency,
        timeout=settings.run_timeout,
        on_progress=service.on_progress,
        on_finished=service.on_finished,
    )


async def _lifecycle(app: web.Application):

    settings = app[SETTINGS]
    settings.data_dir.mkdir(parents=True, exist_ok=True)
    session = aiohttp.ClientSession()
    jobs, app[DELIVERIES] = open_state(settings)
    app[CLIENTS] = InstallationClients(session, settings)
    store = open_store(
        settings.store_spec, base_url=settings.store_url, deadline=settings.store_deadline
    )
    clients = app[CLIENTS]
    service = RegressionService(settings, jobs, store, clients.client, clients.bot_login)
    service.dispatcher = _dispatcher(settings, jobs, service)
    app[SERVICE] = service
    await service.dispatcher.start()
    reconciler = asyncio.create_task(reconcile.run_forever(service, settings.reconcile_interval))
    yield
    reconciler.cancel()
    await asyncio.gather(reconciler, return_exceptions=True)
    await service.dispatcher.stop()
    for task in list(app[TASKS]):
        task.cancel()
    await session.close()
    await jobs.close()
    await app[DELIVERIES].close()
