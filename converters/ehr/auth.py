"""Credentials for the EHR pull: none, a static bearer token, or SMART Backend Services.

Credentials come from a config file (``--auth-config``, JSON or YAML) or from environment variables,
never from the command line. Secrets (tokens, private keys, signed assertions) are never logged,
printed or put in an exception message; their dataclass fields are left out of ``repr``.

SMART Backend Services (client-credentials grant): a JWT client assertion signed with the client's
private key (RS384 or ES384, PyJWT), posted to the token endpoint (given, or discovered from
``{base}/.well-known/smart-configuration``); the access token is cached until shortly before it
expires and fetched again when the server answers 401.
"""

from __future__ import annotations

import logging
import time
import uuid
from collections.abc import Callable, Generator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import httpx
import jwt
import orjson
import yaml
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.hazmat.primitives.serialization import load_pem_private_key

from ..errors import InputError
from .errors import AuthError

if TYPE_CHECKING:
    from .client import FhirClient

log = logging.getLogger("trialbridge.ehr")

ASSERTION_TYPE = "urn:ietf:params:oauth:client-assertion-type:jwt-bearer"
SUPPORTED_ALGS = ("RS384", "ES384")
#: The SMART Backend Services IG caps the assertion's lifetime at five minutes.
ASSERTION_LIFETIME = 300

#: Environment variables read when no --auth-config file is given.
ENV = {
    "bearer_token": "TRIALBRIDGE_BEARER_TOKEN",
    "client_id": "TRIALBRIDGE_CLIENT_ID",
    "private_key_file": "TRIALBRIDGE_PRIVATE_KEY_FILE",
    "kid": "TRIALBRIDGE_KID",
    "alg": "TRIALBRIDGE_JWT_ALG",
    "token_url": "TRIALBRIDGE_TOKEN_URL",
    "scope": "TRIALBRIDGE_SCOPE",
}
CONFIG_KEYS = frozenset(ENV) | {"bearer_token_file"}


@dataclass(frozen=True)
class AuthSettings:
    """How to authenticate; ``method`` is ``none``, ``bearer`` or ``smart``."""

    method: str = "none"
    bearer_token: str | None = field(default=None, repr=False)
    client_id: str | None = None
    private_key_file: Path | None = None
    kid: str | None = None
    alg: str = "RS384"
    token_url: str | None = None
    scope: str | None = None
    source: str = "defaults"   # where the settings came from, for messages


def load_auth_settings(config_file: Path | None, environ: Mapping[str, str]) -> AuthSettings:
    """Settings from ``config_file`` when given, otherwise from the ``TRIALBRIDGE_*`` variables."""
    if config_file is not None:
        return _settings_from(_read_config(config_file), source=str(config_file),
                              relative_to=config_file.parent)
    values = {key: environ[var] for key, var in ENV.items() if environ.get(var)}
    return _settings_from(values, source="environment", relative_to=Path.cwd())


def _read_config(path: Path) -> dict[str, Any]:
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise InputError(f"cannot read auth config ({exc.strerror})", file=str(path)) from None
    try:
        data = orjson.loads(text) if text.lstrip().startswith("{") else yaml.safe_load(text)
    except (orjson.JSONDecodeError, yaml.YAMLError):
        # the parser's message may quote the file, which holds secrets: say only where it failed
        raise InputError("auth config is neither valid JSON nor valid YAML", file=str(path)) from None
    if not isinstance(data, dict):
        raise InputError("auth config must be a mapping of settings", file=str(path))
    unknown = sorted(set(data) - CONFIG_KEYS)
    if unknown:
        raise InputError(f"unknown auth config key(s): {', '.join(unknown)} "
                         f"(known: {', '.join(sorted(CONFIG_KEYS))})", file=str(path))
    return data


def _settings_from(values: Mapping[str, Any], *, source: str, relative_to: Path) -> AuthSettings:
    values = {k: (str(v).strip() if v is not None else None) for k, v in values.items()}
    if values.get("bearer_token_file"):
        token_path = relative_to / str(values["bearer_token_file"])
        try:
            values["bearer_token"] = token_path.read_text(encoding="utf-8").strip()
        except OSError as exc:
            raise InputError(f"cannot read bearer_token_file ({exc.strerror})", file=source) from None
    if values.get("client_id"):
        missing = [k for k in ("private_key_file", "kid") if not values.get(k)]
        if missing:
            raise InputError(f"SMART Backend Services needs {' and '.join(missing)} as well as "
                             "client_id", file=source)
        alg = (values.get("alg") or "RS384").upper()
        if alg not in SUPPORTED_ALGS:
            raise InputError(f"alg {alg} is not supported (use {' or '.join(SUPPORTED_ALGS)})",
                             file=source)
        return AuthSettings(method="smart", client_id=values["client_id"],
                            private_key_file=relative_to / str(values["private_key_file"]),
                            kid=values["kid"], alg=alg, token_url=values.get("token_url") or None,
                            scope=values.get("scope") or None, source=source)
    if values.get("bearer_token"):
        return AuthSettings(method="bearer", bearer_token=values["bearer_token"], source=source)
    if source != "environment":
        raise InputError("auth config has neither client_id (SMART Backend Services) nor "
                         "bearer_token / bearer_token_file", file=source)
    return AuthSettings(source=source)


def load_private_key(settings: AuthSettings) -> Any:
    """The signing key from a PEM file (or a private JWK in JSON), checked against ``alg``."""
    path = settings.private_key_file
    assert path is not None
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise InputError(f"cannot read private key ({exc.strerror})", file=str(path)) from None
    try:
        if data.lstrip().startswith(b"{"):
            key = jwt.PyJWK(orjson.loads(data), algorithm=settings.alg).key
        else:
            key = load_pem_private_key(data, password=None)
    except Exception:  # noqa: BLE001 - never echo key material from a parser message
        raise InputError("private key is not an unencrypted PEM private key or a private JWK",
                         file=str(path)) from None
    if settings.alg == "RS384" and not isinstance(key, rsa.RSAPrivateKey):
        raise InputError("alg RS384 needs an RSA private key", file=str(path))
    if settings.alg == "ES384" and not (isinstance(key, ec.EllipticCurvePrivateKey)
                                        and isinstance(key.curve, ec.SECP384R1)):
        raise InputError("alg ES384 needs an EC private key on curve P-384", file=str(path))
    return key


class BearerAuth(httpx.Auth):
    """A fixed bearer token. A 401 cannot be cured by refreshing; the caller reports it."""

    refreshable = False

    def __init__(self, token: str) -> None:
        self._token = token

    def __repr__(self) -> str:
        return "BearerAuth(<token hidden>)"

    def auth_flow(self, request: httpx.Request) -> Generator[httpx.Request, httpx.Response, None]:
        request.headers["Authorization"] = f"Bearer {self._token}"
        yield request


class SmartBackendAuth(httpx.Auth):
    """SMART Backend Services: client-credentials grant with a signed JWT client assertion."""

    refreshable = True

    def __init__(self, settings: AuthSettings, client: FhirClient, *,
                 clock: Callable[[], float] = time.time) -> None:
        self._settings = settings
        self._client = client
        self._clock = clock
        self._key = load_private_key(settings)
        self._token: str | None = None
        self._expires_at = 0.0
        self._margin = 0.0
        self._token_url = settings.token_url
        self._scope = settings.scope
        self.tokens_fetched = 0

    def __repr__(self) -> str:
        return f"SmartBackendAuth(client_id={self._settings.client_id!r}, <secrets hidden>)"

    # ---------------------------------------------------------------- discovery
    def _discover(self) -> None:
        url = f"{self._client.base}/.well-known/smart-configuration"
        resp = self._client.request("GET", url, headers={"Accept": "application/json"}, auth=None)
        config: dict[str, Any] = {}
        if resp.status_code == 200:
            try:
                config = orjson.loads(resp.content)
            except orjson.JSONDecodeError:
                config = {}
        if self._token_url is None:
            token_url = config.get("token_endpoint") if isinstance(config, dict) else None
            if not isinstance(token_url, str) or not token_url:
                raise AuthError(f"no token endpoint: {self._client.safe_url(url)} answered HTTP "
                                f"{resp.status_code} without token_endpoint; set token_url in the "
                                "auth config")
            self._token_url = token_url
        if self._scope is None:
            # SMART v2 scopes when the server says it speaks them, otherwise the v1 form
            v2 = ("permission-v2" in (config.get("capabilities") or [])
                  or "system/*.rs" in (config.get("scopes_supported") or []))
            self._scope = "system/*.rs" if v2 else "system/*.read"

    def _assertion(self, token_url: str) -> str:
        now = int(self._clock())
        cid = self._settings.client_id
        claims = {"iss": cid, "sub": cid, "aud": token_url, "iat": now,
                  "exp": now + ASSERTION_LIFETIME, "jti": uuid.uuid4().hex}
        return jwt.encode(claims, self._key, algorithm=self._settings.alg,
                          headers={"kid": self._settings.kid, "typ": "JWT"})

    def refresh(self) -> str:
        if self._token_url is None or self._scope is None:
            self._discover()
        assert self._token_url is not None and self._scope is not None
        form = {"grant_type": "client_credentials", "scope": self._scope,
                "client_assertion_type": ASSERTION_TYPE,
                "client_assertion": self._assertion(self._token_url)}
        resp = self._client.request("POST", self._token_url, data=form, auth=None,
                                    headers={"Accept": "application/json"})
        where = self._client.safe_url(self._token_url)
        try:
            body = orjson.loads(resp.content) if resp.content else {}
        except orjson.JSONDecodeError:
            body = {}
        if resp.status_code != 200 or not isinstance(body, dict) or not body.get("access_token"):
            error = body.get("error", "no access_token") if isinstance(body, dict) else "not JSON"
            raise AuthError(f"token endpoint {where} refused client {self._settings.client_id!r}: "
                            f"HTTP {resp.status_code} {error}")
        if str(body.get("token_type", "bearer")).lower() != "bearer":
            raise AuthError(f"token endpoint {where} issued a {body.get('token_type')} token, "
                            "not a bearer token")
        lifetime = float(body.get("expires_in") or 300)
        self._token = str(body["access_token"])
        self._expires_at = self._clock() + lifetime
        # refresh a little before expiry; a fifth of the lifetime for very short-lived tokens
        self._margin = min(30.0, lifetime / 5)
        self.tokens_fetched += 1
        log.info("obtained an access token from %s (scope %s, expires in %d s)", where,
                 body.get("scope", self._scope), lifetime)
        return self._token

    def token(self) -> str:
        if self._token is None or self._clock() >= self._expires_at - self._margin:
            return self.refresh()
        return self._token

    def auth_flow(self, request: httpx.Request) -> Generator[httpx.Request, httpx.Response, None]:
        request.headers["Authorization"] = f"Bearer {self.token()}"
        response = yield request
        if response.status_code == 401:
            log.info("the server rejected the access token (HTTP 401); fetching a new one")
            self._token = None
            request.headers["Authorization"] = f"Bearer {self.refresh()}"
            yield request


def build_auth(settings: AuthSettings, client: FhirClient) -> httpx.Auth | None:
    if settings.method == "bearer":
        assert settings.bearer_token
        return BearerAuth(settings.bearer_token)
    if settings.method == "smart":
        return SmartBackendAuth(settings, client)
    return None
