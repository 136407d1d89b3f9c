"""HTTP for the EHR pull: one httpx client, bounded retries with exponential backoff and jitter.

Retried: HTTP 429 and 5xx gateway/availability answers (honouring ``Retry-After``, capped) and
dropped or timed-out connections. Every loop is bounded by ``RetryPolicy.retries``. Log lines name
the server path without its query string (queries can carry patient ids) and never a header value.
"""

from __future__ import annotations

import email.utils
import logging
import random
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any
from urllib.parse import urljoin, urlsplit

import httpx
import orjson

from .. import __version__
from .errors import AuthError, PullError, ServerRefused

log = logging.getLogger("trialbridge.ehr")

RETRY_STATUS = frozenset({429, 500, 502, 503, 504})
#: Failures worth another try; others (a bad URL scheme, a proxy refusal) fail at once.
TRANSIENT = (httpx.TimeoutException, httpx.NetworkError, httpx.RemoteProtocolError)


@dataclass(frozen=True)
class RetryPolicy:
    retries: int = 5                 # further attempts after the first
    backoff: float = 1.0             # first wait, seconds; doubles each attempt
    backoff_cap: float = 60.0
    retry_after_cap: float = 300.0   # a server's Retry-After is honoured up to this
    timeout: float = 60.0            # per request (connect, read, write, pool)

    def delay(self, attempt: int, retry_after: float | None) -> float:
        """Seconds to wait before retry number ``attempt`` (1-based)."""
        if retry_after is not None:
            return min(max(retry_after, 0.0), self.retry_after_cap)
        ceiling = min(self.backoff_cap, self.backoff * 2 ** (attempt - 1))
        return ceiling / 2 + random.uniform(0, ceiling / 2)   # "equal jitter"


def parse_retry_after(value: str | None) -> float | None:
    """``Retry-After`` as seconds: delta-seconds or an HTTP-date; None when absent or unreadable."""
    if not value:
        return None
    value = value.strip()
    if value.isdigit():
        return float(value)
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    if when.tzinfo is None:
        when = when.replace(tzinfo=UTC)
    return max(0.0, (when - datetime.now(UTC)).total_seconds())


def outcome_text(resp: httpx.Response, limit: int = 300) -> str:
    """The diagnostics of an OperationOutcome body (or the start of a text body) for a message."""
    try:
        body = orjson.loads(resp.content)
    except orjson.JSONDecodeError:
        text = resp.content[:limit].decode("utf-8", "replace").strip()
        return text
    if isinstance(body, dict) and body.get("resourceType") == "OperationOutcome":
        parts = [str(i.get("diagnostics") or i.get("details", {}).get("text") or i.get("code"))
                 for i in body.get("issue", []) if isinstance(i, dict)]
        return "; ".join(parts)[:limit]
    if isinstance(body, dict) and "error" in body:
        return str(body["error"])[:limit]
    return ""


class FhirClient:
    """A FHIR server at ``base``; ``auth`` (set after construction) goes on API requests."""

    def __init__(self, base: str, *, policy: RetryPolicy | None = None,
                 sleep: Callable[[float], None] = time.sleep,
                 transport: httpx.BaseTransport | None = None) -> None:
        self.base = base.rstrip("/")
        self.policy = policy or RetryPolicy()
        self.sleep = sleep
        self.auth: httpx.Auth | None = None
        self.http = httpx.Client(timeout=httpx.Timeout(self.policy.timeout), follow_redirects=True,
                                 headers={"User-Agent": f"trialbridge/{__version__}"},
                                 transport=transport)

    def close(self) -> None:
        self.http.close()

    def __enter__(self) -> FhirClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # ---------------------------------------------------------------- URLs
    def url(self, ref: str) -> str:
        """An absolute URL for ``ref`` (absolute already, or relative to the base)."""
        if urlsplit(ref).scheme:
            return ref
        return f"{self.base}/{ref.lstrip('/')}"

    def resolve(self, ref: str, against: str) -> str:
        return urljoin(against, ref)

    def same_origin(self, url: str) -> bool:
        a, b = urlsplit(url), urlsplit(self.base)
        return (a.scheme, a.hostname, a.port) == (b.scheme, b.hostname, b.port)

    @staticmethod
    def safe_url(url: str) -> str:
        """``url`` without query or fragment: fit for a log line or a message."""
        parts = urlsplit(url)
        return f"{parts.scheme}://{parts.netloc.rpartition('@')[2]}{parts.path}"

    # ---------------------------------------------------------------- requests
    def pause(self, attempt: int, retry_after: float | None, why: str) -> None:
        wait = self.policy.delay(attempt, retry_after)
        log.warning("%s; retrying in %.1f s (retry %d of %d)", why, wait, attempt,
                    self.policy.retries)
        self.sleep(wait)

    def request(self, method: str, url: str, *, auth: Any = "api", **kwargs: Any) -> httpx.Response:
        """Send with retries on 429/5xx and dropped connections; the last response is returned.

        ``auth="api"`` sends the client's credentials; pass ``auth=None`` for none.
        """
        use_auth = self.auth if auth == "api" else auth
        url = self.url(url)
        where = f"{method} {self.safe_url(url)}"
        attempt = 0
        while True:
            try:
                resp = self.http.request(method, url, auth=use_auth, **kwargs)
            except TRANSIENT as exc:
                attempt += 1
                if attempt > self.policy.retries:
                    raise PullError(f"{where}: {describe(exc)} (gave up after "
                                    f"{attempt} attempts)") from None
                self.pause(attempt, None, f"{where}: {describe(exc)}")
                continue
            except httpx.TransportError as exc:
                raise PullError(f"{where}: {describe(exc)}") from None
            if resp.status_code in RETRY_STATUS and attempt < self.policy.retries:
                attempt += 1
                self.pause(attempt, parse_retry_after(resp.headers.get("Retry-After")),
                           f"{where}: HTTP {resp.status_code}")
                continue
            if resp.status_code == 401 and use_auth is not None:
                raise auth_refused(where, resp, use_auth)
            return resp

    def get_json(self, url: str, *, accept: str = "application/fhir+json") -> Any:
        url = self.url(url)
        resp = self.request("GET", url, headers={"Accept": accept})
        if resp.status_code != 200:
            raise ServerRefused(f"GET {self.safe_url(url)}: HTTP {resp.status_code} "
                                f"{outcome_text(resp)}".rstrip(), status=resp.status_code)
        try:
            return orjson.loads(resp.content)
        except orjson.JSONDecodeError:
            raise PullError(f"GET {self.safe_url(url)}: the answer is not JSON") from None


def auth_refused(where: str, resp: httpx.Response, auth: Any) -> AuthError:
    if getattr(auth, "refreshable", False):
        return AuthError(f"{where}: the server refused a freshly issued access token (HTTP 401)")
    return AuthError(f"{where}: the server refused the bearer token (HTTP 401); a static token "
                     "cannot be refreshed: supply a new one or use SMART Backend Services")


def describe(exc: httpx.TransportError) -> str:
    """A short, secret-free description of a transport failure."""
    kinds = {httpx.TimeoutException: "timed out", httpx.ConnectError: "cannot connect",
             httpx.RemoteProtocolError: "connection dropped", httpx.ReadError: "connection dropped"}
    for cls, text in kinds.items():
        if isinstance(exc, cls):
            return text
    return f"network error ({type(exc).__name__})"
