"""GitHub App authentication: the app's JWT and installation tokens, cached."""

from __future__ import annotations

import asyncio
import time
from datetime import datetime

import aiohttp
from gidgethub import apps

from bot.github.resilience import ResilientGitHubAPI
from bot.settings import Settings

USER_AGENT = "scarlet-regression"
REFRESH_MARGIN = 300.0  # seconds before expiry when a token is renewed


class InstallationClients:
    """Authenticated gidgethub clients per installation, tokens cached until near expiry."""

    def __init__(self, session: aiohttp.ClientSession, settings: Settings):
        self.session = session
        self.settings = settings
        self._tokens: dict[int, tuple[str, float]] = {}
        self._lock = asyncio.Lock()
        self._bot_login: str | None = None

    def app_client(self) -> ResilientGitHubAPI:
        """A client that authenticates as the app itself (JWT)."""
        return ResilientGitHubAPI(
            self.session,
            USER_AGENT,
            app_id=self.settings.app_id,
            private_key=self.settings.private_key,
            base_url=self.settings.api_url,
            backoff=self.settings.github_backoff,
        )

    async def bot_login(self) -> str:
        """The login of the App's bot user, ``<slug>[bot]`` (the slug asked of GitHub once:
        every installation names its app's)."""
        if self._bot_login is None:
            async for installation in self.app_client().getiter("/app/installations"):
                self._bot_login = f"{installation['app_slug']}[bot]"
                break
            else:
                raise LookupError("the App has no installation")
        return self._bot_login

    async def token(self, installation_id: int) -> str:
        """An installation token valid for at least REFRESH_MARGIN seconds."""
        async with self._lock:
            cached = self._tokens.get(installation_id)
            if cached and cached[1] - time.time() > REFRESH_MARGIN:
                return cached[0]
            data = await apps.get_installation_access_token(
                self.app_client(),
                installation_id=str(installation_id),
                app_id=self.settings.app_id,
                private_key=self.settings.private_key,
            )
            expires = datetime.fromisoformat(data["expires_at"].replace("Z", "+00:00"))
            self._tokens[installation_id] = (data["token"], expires.timestamp())
            return data["token"]

    async def renew(self, installation_id: int) -> str:
        """A new token, after GitHub refused the cached one (401: expired or revoked)."""
        async with self._lock:
            self._tokens.pop(installation_id, None)
        return await self.token(installation_id)

    async def client(self, installation_id: int) -> ResilientGitHubAPI:
        """A client acting as the installation (retrying, renewing its token)."""
        token = await self.token(installation_id)
        return ResilientGitHubAPI(
            self.session,
            USER_AGENT,
            oauth_token=token,
            base_url=self.settings.api_url,
            renew_token=lambda: self.renew(installation_id),
            backoff=self.settings.github_backoff,
        )
