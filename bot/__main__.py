"""``python -m bot``: serve the GitHub App on $HOST:$PORT (default 127.0.0.1:8080);
``create_app`` sets up the logs. Settings come from the environment (``--help``)."""

import argparse
import os
import sys

from aiohttp import web

from bot.app import create_app
from bot.settings import SettingsError

SETTINGS = """settings (environment variables):
  required:
    GITHUB_APP_ID                 the App's id
    GITHUB_APP_PRIVATE_KEY        its private key (PEM), or GITHUB_APP_PRIVATE_KEY_FILE
    GITHUB_WEBHOOK_SECRET         the secret GitHub signs webhooks with
    SCARLET_BOT_DATASETS          blend sets, separated by ':' (e.g. data/hsc/set1:data/hsc/set3)
  optional:
    HOST, PORT                    where to listen (127.0.0.1, 8080)
    SCARLET_BOT_DATA              jobs, deliveries and the local store (./bot-data)
    SCARLET_BOT_PUBLIC_URL        the bot's address as GitHub and readers see it
    SCARLET_BOT_STATE             gs://bucket/prefix: state shared by every instance
    SCARLET_BOT_STORE             gs://bucket/prefix: where runs are published
    SCARLET_BOT_STORE_URL         where the store's objects are public
    SCARLET_BOT_PRIVATE_STORE     gs://bucket/prefix: the runner's own, never public
    SCARLET_BOT_CLOUD_RUN_JOB     run on Cloud Run Jobs instead of in-process
    SCARLET_BOT_RUNS_PER_REPOSITORY  runs of one repository at a time (2; 0: no cap)
    SCARLET_BOT_SCHEDULER_SECRET  the drift scheduler's token
    GITHUB_API_URL                another GitHub (https://api.github.com)
  a *_SECRET variable may name a Secret Manager version holding the value; the README's
  "The GitHub App" section lists every setting."""


def main() -> int:
    """Serve until interrupted; exit 2 with one line when a setting is missing."""
    argparse.ArgumentParser(
        prog="python -m bot",
        description="Serve the scarlet-regression GitHub App.",
        epilog=SETTINGS,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    ).parse_args()
    try:
        app = create_app()
    except SettingsError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    web.run_app(
        app, host=os.environ.get("HOST", "127.0.0.1"), port=int(os.environ.get("PORT", "8080"))
    )
    return 0


sys.exit(main())
