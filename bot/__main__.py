"""``python -m bot``: serve the GitHub App on $PORT (default 8080); ``create_app`` sets
up the logs."""

import os

from aiohttp import web

from bot.app import create_app

web.run_app(
    create_app(), host=os.environ.get("HOST", "127.0.0.1"), port=int(os.environ.get("PORT", "8080"))
)
