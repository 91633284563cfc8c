"""The one HTTP session factory, status and network error mapping, and call counting.

Retries are declared by callers with `streamsync.retry.Policy`."""

from __future__ import annotations

import contextlib
import email.utils
import ssl as ssl_module
import time
from collections import Counter
from collections.abc import AsyncIterator, Callable, Mapping
from dataclasses import dataclass
from typing import Any, TypeVar

import aiohttp
import orjson
from multidict import CIMultiDictProxy
from yarl import URL

from streamsync.errors import (
    AuthError,
    RateLimited,
    RetriableError,
    StreamsyncError,
    TransientError,
    UnexpectedStatus,
)
from streamsync.logs import get_logger

T = TypeVar("T")

log = get_logger(__name__)

NETWORK_ERROR = "network"
TIMEOUT = "timeout"
BODY_EXCERPT_CHARS = 300


def _json_dumps(value: Any) -> str:
    return orjson.dumps(value).decode()


def tls_context(ca_file: str | None) -> ssl_module.SSLContext | bool:
    """Certificate verification, always on: the system's CAs, or those of `ca_file`."""
    if ca_file is None:
        return True
    return ssl_module.create_default_context(cafile=ca_file)


def make_session(
    timeout_s: float,
    *,
    ssl: ssl_module.SSLContext | bool = True,
    limit: int = 100,
    connect_timeout_s: float | None = None,
    cookie_jar: aiohttp.abc.AbstractCookieJar | None = None,
) -> aiohttp.ClientSession:
    """A client session with a total per-request timeout, TLS verification on by default, a
    bounded connection pool and orjson for JSON bodies. Must be called inside a running loop.

    `cookie_jar`: CometD needs its session cookies back, also from an IP host such as
    127.0.0.1, which aiohttp's default jar refuses: pass `aiohttp.CookieJar(unsafe=True)`.
    """
    if timeout_s <= 0:
        raise ValueError(f"timeout_s must be positive, got {timeout_s}")
    connector = aiohttp.TCPConnector(limit=limit, ssl=ssl)
    timeout = aiohttp.ClientTimeout(
        total=timeout_s, connect=connect_timeout_s if connect_timeout_s is not None else timeout_s
    )
    return aiohttp.ClientSession(
        connector=connector,
        timeout=timeout,
        json_serialize=_json_dumps,
        cookie_jar=cookie_jar,
        raise_for_status=False,
        auto_decompress=True,
    )


@dataclass(frozen=True, slots=True)
class HttpResponse:
    """A fully read HTTP reply: status, headers and body bytes."""

    status: int
    headers: CIMultiDictProxy[str]
    body: bytes
    api: str
    endpoint: str

    @property
    def ok(self) -> bool:
        return 200 <= self.status < 300

    def json(self) -> Any:
        """The body parsed as JSON; an unparsable body is a TransientError (a garbled reply)."""
        try:
            return orjson.loads(self.body)
        except orjson.JSONDecodeError as exc:
            raise TransientError(
                f"{self.api} {self.endpoint} sent a body that is not JSON "
                f"(HTTP {self.status}): {excerpt(self.body)}"
            ) from exc

    def text(self) -> str:
        return self.body.decode("utf-8", errors="replace")


def excerpt(body: bytes, limit: int = BODY_EXCERPT_CHARS) -> str:
    """The start of a reply body for an error message, never more than `limit` characters."""
    text = body.decode("utf-8", errors="replace").strip()
    return text if len(text) <= limit else text[:limit] + "..."


def parse_retry_after(value: str | None, *, now_s: float | None = None) -> float | None:
    """Seconds to wait from a Retry-After header (delta-seconds or an HTTP date), or None."""
    if value is None:
        return None
    value = value.strip()
    if not value:
        return None
    try:
        seconds = float(value)
    except ValueError:
        try:
            when = email.utils.parsedate_to_datetime(value)
        except (TypeError, ValueError, IndexError):
            return None
        if when is None:
            return None
        current = time.time() if now_s is None else now_s
        return max(0.0, when.timestamp() - current)
    if seconds != seconds or seconds < 0:  # NaN or negative
        return None
    return seconds


def default_status_error(resp: HttpResponse) -> Exception:
    """The generic mapping of a non-2xx reply: 429 → RateLimited, 408/5xx → TransientError,
    401/403 → AuthError, any other status → UnexpectedStatus."""
    where = f"{resp.api} {resp.endpoint}"
    status = resp.status
    if status == 429:
        return RateLimited(f"{where} is rate limited (HTTP 429)")
    if status == 408 or status >= 500:
        return TransientError(f"{where} failed with HTTP {status}: {excerpt(resp.body)}")
    if status in (401, 403):
        return AuthError(f"{where} refused the credentials (HTTP {status}): {excerpt(resp.body)}")
    return UnexpectedStatus(resp.api, resp.endpoint, status, excerpt(resp.body))


def raise_for_status(resp: HttpResponse) -> HttpResponse:
    """Return a 2xx reply unchanged; raise the generic error of any other."""
    if resp.ok:
        return resp
    raise status_error(resp)


def status_error(resp: HttpResponse,
                 error_for: Callable[[HttpResponse], Exception] = default_status_error
                 ) -> Exception:
    """The error of a non-2xx reply: `error_for` (an API's refinement of the generic mapping)
    picks the class; here it gets its typed attributes (api, endpoint, status) and, when it is
    retriable, the Retry-After the reply sent (the one place that reads that header)."""
    error = error_for(resp)
    if isinstance(error, StreamsyncError):
        error.api = error.api or resp.api
        error.endpoint = error.endpoint or resp.endpoint
        error.status = error.status or resp.status
        if isinstance(error, RetriableError) and error.retry_after_s is None:
            error.retry_after_s = parse_retry_after(resp.headers.get("Retry-After"))
    return error


def network_error(api: str, endpoint: str, method: str, exc: BaseException) -> TransientError:
    """The TransientError of a request that got no reply (timeout, refused, dropped)."""
    if isinstance(exc, TimeoutError):
        return TransientError(f"{api} {endpoint}: no reply in time ({method})", api=api,
                              endpoint=endpoint)
    return TransientError(f"{api} {endpoint}: network failure ({type(exc).__name__}: {exc})",
                          api=api, endpoint=endpoint)


class UsageCounter:
    """Counts calls per API, endpoint and status, and remembers reported usage allocations.

    Statuses are HTTP codes as strings, or "network"/"timeout" when no reply arrived.
    """

    def __init__(self) -> None:
        self._calls: Counter[tuple[str, str, str]] = Counter()
        self._usage: dict[str, tuple[int, int]] = {}
        self._listeners: list[Callable[[str, str, str], None]] = []

    def subscribe(self, listener: Callable[[str, str, str], None]) -> None:
        """Call `listener(api, endpoint, status)` on every recorded call (e.g. for metrics)."""
        self._listeners.append(listener)

    def record(self, api: str, endpoint: str, status: int | str) -> None:
        key = (api, endpoint, str(status))
        self._calls[key] += 1
        for listener in self._listeners:
            listener(*key)

    def set_usage(self, api: str, used: int, allowed: int) -> None:
        """Store the latest usage the remote side reported (e.g. Sforce-Limit-Info)."""
        self._usage[api] = (used, allowed)

    def usage(self, api: str) -> tuple[int, int] | None:
        return self._usage.get(api)

    def total(
        self,
        api: str | None = None,
        *,
        endpoint: str | None = None,
        status: int | str | None = None,
    ) -> int:
        """Calls matching every given filter."""
        wanted = None if status is None else str(status)
        return sum(
            n
            for (a, e, s), n in self._calls.items()
            if (api is None or a == api)
            and (endpoint is None or e == endpoint)
            and (wanted is None or s == wanted)
        )

    def by_status(self, api: str, endpoint: str | None = None) -> dict[str, int]:
        out: Counter[str] = Counter()
        for (a, e, s), n in self._calls.items():
            if a == api and (endpoint is None or e == endpoint):
                out[s] += n
        return dict(out)

    def snapshot(self) -> dict[str, dict[str, dict[str, int]]]:
        """{api: {endpoint: {status: calls}}}, a copy safe to serialise."""
        out: dict[str, dict[str, dict[str, int]]] = {}
        for (a, e, s), n in sorted(self._calls.items()):
            out.setdefault(a, {}).setdefault(e, {})[s] = n
        return out


def _timeout(session: aiohttp.ClientSession, timeout_s: float | None) -> aiohttp.ClientTimeout:
    """A per-call override or the session's own (aiohttp reads `timeout=None` as NO timeout)."""
    return session.timeout if timeout_s is None else aiohttp.ClientTimeout(total=timeout_s)


@dataclass(frozen=True, slots=True)
class Call:
    """Where a request goes and how it is counted and mapped: the part every request shares."""

    api: str
    endpoint: str
    counter: UsageCounter | None = None

    def record(self, status: int | str) -> None:
        if self.counter is not None:
            self.counter.record(self.api, self.endpoint, status)


@contextlib.asynccontextmanager
async def _exchange(session: aiohttp.ClientSession, method: str, url: str, call: Call, *,
                    count_on_answer: bool, timeout_s: float | None,
                    cookie_jar: aiohttp.abc.AbstractCookieJar | None = None,
                    **options: Any) -> AsyncIterator[aiohttp.ClientResponse]:
    """The one place a request is opened: statuses are left to the caller (whatever the
    session says), and no reply, a timeout or a dropped body becomes TransientError, counted
    as "network"/"timeout" (after an answer only when `count_on_answer` is False)."""
    answered = False
    cookies = cookie_jar.filter_cookies(URL(url)) if cookie_jar is not None else None
    try:
        async with session.request(method, url, cookies=cookies,
                                   timeout=_timeout(session, timeout_s),
                                   raise_for_status=False, **options) as raw:
            answered = True
            if cookie_jar is not None:
                cookie_jar.update_cookies(raw.cookies, raw.url)
            if count_on_answer:
                call.record(raw.status)
            yield raw
    except (TimeoutError, aiohttp.ClientError, OSError) as exc:
        if not (answered and count_on_answer):
            call.record(TIMEOUT if isinstance(exc, TimeoutError) else NETWORK_ERROR)
        raise network_error(call.api, call.endpoint, method, exc) from exc


async def send(
    session: aiohttp.ClientSession,
    method: str,
    url: str,
    *,
    api: str,
    endpoint: str,
    counter: UsageCounter | None = None,
    headers: Mapping[str, str] | None = None,
    params: Mapping[str, str] | None = None,
    data: bytes | None = None,
    form: Mapping[str, str] | None = None,
    timeout_s: float | None = None,
    cookie_jar: aiohttp.abc.AbstractCookieJar | None = None,
    error_for: Callable[[HttpResponse], Exception] | None = None,
) -> HttpResponse:
    """Send one request and read the whole reply: every request to Salesforce and Iterable
    passes here (or through `stream`). Network failures, timeouts and truncated replies become
    TransientError. With `error_for`, a non-2xx reply raises `status_error(reply, error_for)`;
    without, the status is the caller's to map. `cookie_jar`: cookies sent from it and stored
    back into it (CometD's session cookies)."""
    call = Call(api, endpoint, counter)
    body: bytes | aiohttp.FormData | None = data
    if form is not None:
        body = aiohttp.FormData(dict(form))
    async with _exchange(session, method, url, call, count_on_answer=False, timeout_s=timeout_s,
                         cookie_jar=cookie_jar, headers=headers, params=params,
                         data=body) as raw:
        resp = HttpResponse(raw.status, raw.headers, await raw.read(), api, endpoint)
    call.record(resp.status)
    if error_for is not None and not resp.ok:
        raise status_error(resp, error_for)
    return resp


@contextlib.asynccontextmanager
async def stream(session: aiohttp.ClientSession, method: str, url: str, call: Call, *,
                 error_for: Callable[[HttpResponse], Exception] = default_status_error,
                 timeout_s: float | None = None, **options: Any
                 ) -> AsyncIterator[aiohttp.ClientResponse]:
    """Open a GET-like request (`options`: headers, params) whose 2xx body the caller reads
    incrementally. A non-2xx reply is read and raised through `status_error`; network failures
    while reading become TransientError."""
    async with _exchange(session, method, url, call, count_on_answer=True, timeout_s=timeout_s,
                         **options) as raw:
        if not 200 <= raw.status < 300:
            payload = await raw.read()
            raise status_error(HttpResponse(raw.status, raw.headers, payload, call.api,
                                            call.endpoint), error_for)
        yield raw
