"""Clients built from a `Config`: the one place that turns settings and secrets into adapters."""

from __future__ import annotations

import hashlib
import time
from collections.abc import Callable

import aiohttp
from pydantic import SecretStr

from streamsync.adapters.http import UsageCounter, make_session, tls_context
from streamsync.adapters.iterable import IterableClient
from streamsync.adapters.ratelimit import RateLimiter
from streamsync.adapters.salesforce import SalesforceClient
from streamsync.adapters.salesforce_auth import SalesforceAuth
from streamsync.config import Config
from streamsync.errors import ConfigError
from streamsync.retry import NO_RETRY, Policy


def _reveal(secret: SecretStr | None) -> Callable[[], str] | None:
    """A callable handing out the secret only when a request is signed (never stored as str)."""
    return None if secret is None else secret.get_secret_value


def salesforce_session(config: Config, *, timeout_s: float | None = None,
                       cookie_jar: aiohttp.abc.AbstractCookieJar | None = None
                       ) -> aiohttp.ClientSession:
    """An HTTP session for Salesforce: its timeout, connection cap and trusted CAs."""
    sf = config.salesforce
    return make_session(timeout_s or sf.timeout_s, limit=sf.max_in_flight + 4,
                        ssl=tls_context(sf.ca_file), cookie_jar=cookie_jar)


def iterable_session(config: Config) -> aiohttp.ClientSession:
    """An HTTP session for Iterable: its timeout, connection cap and trusted CAs."""
    it = config.iterable
    return make_session(it.timeout_s, limit=it.max_in_flight + 4, ssl=tls_context(it.ca_file))


def build_salesforce_auth(
    config: Config,
    session: aiohttp.ClientSession,
    counter: UsageCounter | None = None,
    *,
    clock: Callable[[], float] = time.time,
) -> SalesforceAuth:
    """SalesforceAuth for `config.salesforce` with the secrets the loader read."""
    sf, secrets = config.salesforce, config.secrets
    return SalesforceAuth(
        session,
        login_url=sf.login_url,
        flow=sf.auth,
        client_id=sf.client_id,
        client_secret=_reveal(secrets.sf_client_secret),
        username=sf.username,
        password=_reveal(secrets.sf_password),
        private_key=_reveal(secrets.sf_private_key),
        refresh_token=_reveal(secrets.sf_refresh_token),
        audience=sf.jwt_audience,
        counter=counter,
        timeout_s=sf.timeout_s,
        clock=clock,
    )


def build_salesforce_client(
    config: Config,
    session: aiohttp.ClientSession,
    *,
    counter: UsageCounter | None = None,
    retry: Policy = NO_RETRY,
    auth: SalesforceAuth | None = None,
) -> SalesforceClient:
    """SalesforceClient (REST + Bulk) for `config`, with `auth` or a SalesforceAuth of its own."""
    sf = config.salesforce
    return SalesforceClient(
        session,
        auth or build_salesforce_auth(config, session, counter),
        sf.api_version,
        counter,
        call_options_client=sf.client_name,
        retry=retry,
        timeout_s=sf.timeout_s,
        max_in_flight=sf.max_in_flight,
    )


def budget_key(config: Config, family: str = "bulkUpdate") -> str:
    """The shared rate budget of one Iterable project's endpoint family: every process on the
    store with the same base URL and API key draws from it. The project is named by a short
    SHA-256 digest of the two, never by the key itself."""
    key = config.secrets.iterable_api_key
    secret = "" if key is None else key.get_secret_value()
    digest = hashlib.sha256(f"{config.iterable.base_url}\0{secret}".encode()).hexdigest()[:12]
    return f"iterable:{digest}:{family}"


def build_iterable_client(
    config: Config,
    session: aiohttp.ClientSession,
    counter: UsageCounter | None = None,
    *,
    limiter: RateLimiter | None = None,
    subscription_limiter: RateLimiter | None = None,
) -> IterableClient:
    """IterableClient for `config.iterable`; the API key must have been loaded. Its one
    RateLimiter (rate and in-flight cap of every bulkUpdate) is `limiter`, shared by the
    service's writers, or one of its own from [iterable]; the subscription calls' is
    `subscription_limiter`, or one of its own from [consent]."""
    key = config.secrets.iterable_api_key
    if key is None:
        raise ConfigError("secret iterable_api_key is missing: set STREAMSYNC_ITERABLE_API_KEY")
    return IterableClient(
        session, config.iterable.base_url, key.get_secret_value, counter,
        timeout_s=config.iterable.timeout_s,
        bulk_limiter=limiter or RateLimiter(config.iterable.rate_limit_per_s,
                                            max_in_flight=config.iterable.max_in_flight),
        subscription_limiter=subscription_limiter or RateLimiter(
            config.consent.rate_limit_per_s, max_in_flight=config.consent.max_in_flight),
    )
