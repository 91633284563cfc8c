"""Salesforce OAuth 2.0 tokens (JWT bearer, client credentials, refresh token, password)."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Literal

import aiohttp
import jwt

from streamsync.adapters.http import HttpResponse, UsageCounter, excerpt, send, status_error
from streamsync.errors import AuthError, ConfigError, RateLimited, TransientError
from streamsync.logs import get_logger

log = get_logger(__name__)

Flow = Literal["jwt", "client_credentials", "refresh_token", "password"]
FLOWS: tuple[Flow, ...] = ("jwt", "client_credentials", "refresh_token", "password")
Secret = str | Callable[[], str]

JWT_GRANT = "urn:ietf:params:oauth:grant-type:jwt-bearer"
JWT_LIFETIME_S = 180
PASSWORD_FLOW_RETIREMENT = "2027-02-20"
API = "salesforce"
ENDPOINT = "oauth2/token"


def _reveal(secret: Secret | None) -> str:
    if secret is None:
        return ""
    return secret() if callable(secret) else secret


@dataclass(frozen=True, slots=True)
class Token:
    """An access token and the instance it is valid for (Salesforce sends no expiry)."""

    access_token: str = field(repr=False)
    instance_url: str
    issued_at_s: float
    token_type: str = "Bearer"

    @property
    def authorization(self) -> str:
        return f"{self.token_type} {self.access_token}"


class SalesforceAuth:
    """Obtains, caches and renews a Salesforce access token.

    Concurrent callers of `token()` share one request to the token endpoint (single flight).
    `invalidate(token)` drops the cached token after INVALID_SESSION_ID; only the token the
    caller saw is dropped, so a burst of 401s causes one refresh, not one per request.
    Secrets may be given as strings or as callables that return them, and never appear in
    logs or in `repr()`.
    """

    def __init__(
        self,
        session: aiohttp.ClientSession,
        *,
        login_url: str,
        flow: Flow,
        client_id: str,
        client_secret: Secret | None = None,
        username: str | None = None,
        password: Secret | None = None,
        private_key: Secret | None = None,
        refresh_token: Secret | None = None,
        audience: str | None = None,
        counter: UsageCounter | None = None,
        timeout_s: float | None = None,
        clock: Callable[[], float] = time.time,
        on_refresh_token: Callable[[str], None] | None = None,
    ) -> None:
        if flow not in FLOWS:
            raise ConfigError(f"salesforce.auth.flow: unknown flow {flow!r}; one of {FLOWS}")
        missing = [
            name
            for name, value, needed in (
                ("client_id", client_id, True),
                ("username", username, flow in ("jwt", "password")),
                ("private_key", private_key, flow == "jwt"),
                ("client_secret", client_secret, flow in ("client_credentials", "password")),
                ("password", password, flow == "password"),
                ("refresh_token", refresh_token, flow == "refresh_token"),
            )
            if needed and not value
        ]
        if missing:
            raise ConfigError(
                f"salesforce.auth: flow {flow!r} needs {', '.join(missing)}"
            )
        self._session = session
        self.login_url = login_url.rstrip("/")
        self.token_url = f"{self.login_url}/services/oauth2/token"
        self.flow: Flow = flow
        self.client_id = client_id
        self.username = username
        self.audience = (audience or self.login_url).rstrip("/")
        self._client_secret = client_secret
        self._password = password
        self._private_key = private_key
        self._refresh_token = refresh_token
        self._counter = counter
        self._timeout_s = timeout_s
        self._clock = clock
        self._on_refresh_token = on_refresh_token
        self._token: Token | None = None
        self._inflight: asyncio.Future[Token] | None = None
        self.refreshes = 0
        if flow == "password":
            log.warning(
                "salesforce.auth.password_flow_deprecated",
                retirement_date=PASSWORD_FLOW_RETIREMENT,
                advice="switch to the JWT bearer or client credentials flow",
            )

    def __repr__(self) -> str:
        return (
            f"SalesforceAuth(flow={self.flow!r}, login_url={self.login_url!r}, "
            f"client_id={self.client_id!r}, username={self.username!r}, secrets=[redacted])"
        )

    @property
    def cached(self) -> Token | None:
        """The token in the cache, if any (no request is made)."""
        return self._token

    async def token(self) -> Token:
        """The cached token, or a new one; concurrent callers await the same request."""
        if self._token is not None:
            return self._token
        if self._inflight is None:
            self._inflight = asyncio.ensure_future(self._fetch())
            self._inflight.add_done_callback(self._fetched)
        return await asyncio.shield(self._inflight)

    async def access_token(self) -> str:
        """Just the bearer token string (for clients such as CometD that take a callable)."""
        return (await self.token()).access_token

    async def instance_url(self) -> str:
        """The instance URL the current token belongs to (no trailing slash)."""
        return (await self.token()).instance_url

    def _fetched(self, fut: asyncio.Future[Token]) -> None:
        self._inflight = None
        if not fut.cancelled() and fut.exception() is None:
            self._token = fut.result()

    def invalidate(self, token: Token | None = None) -> None:
        """Forget the cached token (only if it is `token`, when one is given)."""
        if token is None or self._token is token or (
            self._token is not None and self._token.access_token == token.access_token
        ):
            self._token = None

    def _form(self) -> dict[str, str]:
        if self.flow == "jwt":
            now = int(self._clock())
            claims = {
                "iss": self.client_id,
                "sub": self.username,
                "aud": self.audience,
                "exp": now + JWT_LIFETIME_S,
            }
            try:
                assertion = jwt.encode(claims, _reveal(self._private_key), algorithm="RS256")
            except (ValueError, TypeError, jwt.PyJWTError) as exc:
                raise AuthError(
                    f"salesforce.auth: cannot sign the JWT with the private key "
                    f"({type(exc).__name__})"
                ) from exc
            return {"grant_type": JWT_GRANT, "assertion": assertion}
        if self.flow == "client_credentials":
            return {
                "grant_type": "client_credentials",
                "client_id": self.client_id,
                "client_secret": _reveal(self._client_secret),
            }
        if self.flow == "refresh_token":
            form = {
                "grant_type": "refresh_token",
                "client_id": self.client_id,
                "refresh_token": _reveal(self._refresh_token),
            }
            if self._client_secret:
                form["client_secret"] = _reveal(self._client_secret)
            return form
        return {
            "grant_type": "password",
            "client_id": self.client_id,
            "client_secret": _reveal(self._client_secret),
            "username": self.username or "",
            "password": _reveal(self._password),
        }

    async def _fetch(self) -> Token:
        resp = await send(
            self._session,
            "POST",
            self.token_url,
            api=API,
            endpoint=ENDPOINT,
            counter=self._counter,
            headers={"Accept": "application/json"},
            form=self._form(),
            timeout_s=self._timeout_s,
        )
        if resp.status != 200:
            raise status_error(resp, lambda r: _token_error(r, self.flow))
        body = resp.json()
        if not isinstance(body, dict):
            raise TransientError("salesforce token endpoint: reply is not a JSON object")
        access_token = body.get("access_token")
        instance_url = body.get("instance_url")
        if not isinstance(access_token, str) or not isinstance(instance_url, str):
            raise TransientError(
                "salesforce token endpoint: reply lacks access_token or instance_url"
            )
        new_refresh = body.get("refresh_token")
        if self.flow == "refresh_token" and isinstance(new_refresh, str) and new_refresh:
            # Refresh-token rotation: the old one is now void.
            self._refresh_token = new_refresh
            if self._on_refresh_token is not None:
                self._on_refresh_token(new_refresh)
        self.refreshes += 1
        log.info("salesforce.auth.token_obtained", flow=self.flow, instance_url=instance_url)
        return Token(
            access_token=access_token,
            instance_url=instance_url.rstrip("/"),
            issued_at_s=self._clock(),
            token_type=str(body.get("token_type") or "Bearer"),
        )


def _token_error(resp: HttpResponse, flow: str) -> Exception:
    if resp.status == 429:
        return RateLimited("salesforce token endpoint is rate limited (HTTP 429)")
    if resp.status == 408 or resp.status >= 500:
        return TransientError(
            f"salesforce token endpoint failed with HTTP {resp.status}: {excerpt(resp.body)}"
        )
    try:
        body = resp.json()
    except TransientError:
        body = None
    if isinstance(body, dict) and "error" in body:
        error = str(body.get("error"))
        description = str(body.get("error_description") or "")
        return AuthError(
            f"salesforce refused the {flow} grant (HTTP {resp.status}): {error}"
            + (f": {description}" if description else "")
        )
    return AuthError(
        f"salesforce refused the {flow} grant (HTTP {resp.status}): {excerpt(resp.body)}"
    )
