"""The bot's settings, from the environment (Secret Manager feeds it in production)."""

from __future__ import annotations

import os
import sys
from dataclasses import dataclass, field
from pathlib import Path

from bot.secrets import SecretsError, load_secrets

CHECK_NAME = "scarlet regression"


def check_name(base: str, default_branch: str | None) -> str:
    """The check run's name: with the base branch when it is not the default one, so two
    PRs of one head SHA against different bases show two checks a reader can tell
    apart. ``base`` is a branch's name or its full ref (``refs/heads/<name>``)."""
    branch = base.removeprefix("refs/heads/")
    if default_branch is None or branch == default_branch:
        return CHECK_NAME
    return f"{CHECK_NAME} ({branch})"


def is_check_name(name: str) -> bool:
    """Whether a check run's name is one the bot gives."""
    return name == CHECK_NAME or (name.startswith(f"{CHECK_NAME} (") and name.endswith(")"))


# Settings without a default; the App's private key comes from either of two variables.
REQUIRED = ("GITHUB_APP_ID", "GITHUB_WEBHOOK_SECRET", "SCARLET_BOT_DATASETS")


class SettingsError(ValueError):
    """A missing or invalid setting, naming the variable (every missing one at once)."""


@dataclass(frozen=True)
class Settings:
    """Everything the bot needs to know about its installation."""

    app_id: str
    private_key: str
    webhook_secret: str
    data_dir: Path
    datasets: tuple[Path, ...]
    api_url: str = "https://api.github.com"
    public_url: str = "http://127.0.0.1:8080"
    store: str = ""
    private_store: str = ""
    store_public_url: str = ""
    store_deadline: float | None = None
    workers: int = field(default_factory=lambda: os.cpu_count() or 1)
    concurrency: int = 1
    runs_per_repository: int | None = 2
    run_timeout: float = 3 * 3600
    run_drafts: bool = False
    run_forks: bool = False
    progress_interval: float = 10.0
    runner: tuple[str, ...] = field(default_factory=lambda: (sys.executable, "-m", "runner"))
    github_backoff: float = 1.0
    cloud_run_job: str = ""
    cloud_run_tasks: int = 1
    watch_interval: float = 30.0
    cloud_run_emulator: str = ""
    scheduler_secret: str = ""
    app_engine: bool = False
    state: str = ""
    reconcile_interval: float = 60.0
    lease: float = 60.0
    state_deadline: float | None = None
    health_stale: float = 180.0
    report_attempts: int = 5
    report_backoff: float = 60.0

    @property
    def shared_state(self) -> tuple[str, str] | None:
        """The private bucket and prefix of the state shared by every instance
        (``SCARLET_BOT_STATE=gs://bucket/prefix``); None: SQLite in the data dir."""
        if not self.state:
            return None
        if not self.state.startswith("gs://"):
            raise SettingsError(f"SCARLET_BOT_STATE must be gs://bucket/prefix, not {self.state}")
        bucket, _, prefix = self.state.removeprefix("gs://").partition("/")
        return bucket, prefix

    @property
    def store_spec(self) -> str:
        """Where runs are published: the configured store, or a folder in the data dir."""
        return self.store or str(self.data_dir / "store")

    @property
    def private_store_spec(self) -> str:
        """Where the runner keeps what is its own (shared environments, stored outcomes,
        the compiler cache, shard partials, leases, failure records): the configured
        store, or a folder in the data dir that ``/artifacts/`` does not serve."""
        return self.private_store or str(self.data_dir / "private")

    @property
    def store_url(self) -> str | None:
        """Public address of the store: the configured one, else the bot's /artifacts/
        for a local store and the bucket's own (None) for GCS."""
        if self.store_public_url:
            return self.store_public_url
        return None if self.store.startswith("gs://") else f"{self.public_url}/artifacts/"

    @classmethod
    def from_env(cls, environ: dict[str, str] | None = None) -> Settings:
        """Read ``SCARLET_BOT_*`` and ``GITHUB_APP_*`` variables (a ``*_SECRET`` variable
        names a Secret Manager version holding the value; one that cannot be read is a
        :class:`SettingsError`, unless optional)."""
        try:
            env = load_secrets(dict(os.environ if environ is None else environ))
        except SecretsError as error:
            raise SettingsError(str(error)) from None

        missing = [name for name in REQUIRED if not env.get(name)]
        key = env.get("GITHUB_APP_PRIVATE_KEY")
        if not key and not env.get("GITHUB_APP_PRIVATE_KEY_FILE"):
            missing.insert(1, "GITHUB_APP_PRIVATE_KEY (or GITHUB_APP_PRIVATE_KEY_FILE)")
        if missing:
            raise SettingsError(f"not set: {', '.join(missing)} (see python -m bot --help)")
        if not key:
            try:
                key = Path(env["GITHUB_APP_PRIVATE_KEY_FILE"]).read_text()
            except OSError as error:
                raise SettingsError(f"GITHUB_APP_PRIVATE_KEY_FILE: {error}") from None
        datasets = tuple(Path(p) for p in env["SCARLET_BOT_DATASETS"].split(os.pathsep) if p)
        return cls(
            app_id=env["GITHUB_APP_ID"],
            private_key=key,
            webhook_secret=env["GITHUB_WEBHOOK_SECRET"],
            data_dir=Path(env.get("SCARLET_BOT_DATA", "bot-data")),
            datasets=datasets,
            api_url=env.get("GITHUB_API_URL", "https://api.github.com"),
            public_url=env.get("SCARLET_BOT_PUBLIC_URL", "http://127.0.0.1:8080").rstrip("/"),
            store=env.get("SCARLET_BOT_STORE", ""),
            private_store=env.get("SCARLET_BOT_PRIVATE_STORE", ""),
            store_public_url=env.get("SCARLET_BOT_STORE_URL", ""),
            store_deadline=float(env["SCARLET_BOT_STORE_DEADLINE"])
            if env.get("SCARLET_BOT_STORE_DEADLINE")
            else None,
            run_drafts=env.get("SCARLET_BOT_RUN_DRAFTS", "") == "1",
            run_forks=env.get("SCARLET_BOT_RUN_FORKS", "") == "1",
            cloud_run_job=env.get("SCARLET_BOT_CLOUD_RUN_JOB", ""),
            cloud_run_tasks=int(env.get("SCARLET_BOT_CLOUD_RUN_TASKS", "1")),
            cloud_run_emulator=env.get("SCARLET_BOT_CLOUD_RUN_EMULATOR_HOST", ""),
            workers=int(env.get("SCARLET_BOT_WORKERS", str(os.cpu_count() or 1))),
            runs_per_repository=int(env.get("SCARLET_BOT_RUNS_PER_REPOSITORY", "2")) or None,
            scheduler_secret=env.get("SCARLET_BOT_SCHEDULER_SECRET", ""),
            # App Engine's runtime sets GAE_APPLICATION; its cron header is trusted there only.
            app_engine=bool(env.get("GAE_APPLICATION")),
            state=env.get("SCARLET_BOT_STATE", ""),
        )
