"""The bot's fixtures, shared with the tests beside the bot's first ones (``tests/``):
the running bot on the fake GitHub, and a production deployment (state in a bucket,
runs on a fake of Cloud Run)."""

from test_bot import bot, gcs_bot  # noqa: F401
from test_production import cloud_run, deployment  # noqa: F401
