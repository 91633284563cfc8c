"""OAuth 2.0 token endpoint (password, refresh, client credentials, JWT bearer) and sessions."""

from __future__ import annotations

import base64
import hashlib
import hmac
import secrets
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Literal

import jwt
import orjson
from aiohttp import web
from cryptography import x509
from cryptography.hazmat.primitives.asymmetric.rsa import RSAPublicKey
from cryptography.hazmat.primitives.serialization import load_pem_public_key

SessionStatus = Literal["ok", "expired", "invalid"]


@dataclass
class Session:
    token: str
    user_id: str
    client_id: str
    issued_at_s: float
    last_used_s: float
    expired: bool = False


class Sessions:
    """Issued access tokens with an inactivity lifetime; expire or revoke on demand."""

    def __init__(self, org_id: str, *, lifetime_s: float = 7200.0,
                 clock: Callable[[], float] = time.time) -> None:
        self.org_id = org_id
        self.lifetime_s = lifetime_s
        self.clock = clock
        self._by_token: dict[str, Session] = {}
        self.issued = 0

    def issue(self, user_id: str, client_id: str) -> Session:
        now = self.clock()
        token = f"{self.org_id[:15]}!AQ{secrets.token_urlsafe(72)}"
        session = Session(token, user_id, client_id, now, now)
        self._by_token[token] = session
        self.issued += 1
        return session

    def check(self, token: str) -> SessionStatus:
        """ok, expired (known token past its lifetime) or invalid (unknown/revoked)."""
        session = self._by_token.get(token)
        if session is None:
            return "invalid"
        now = self.clock()
        if session.expired or now - session.last_used_s > self.lifetime_s:
            session.expired = True
            return "expired"
        session.last_used_s = now
        return "ok"

    def user_of(self, token: str) -> str | None:
        session = self._by_token.get(token)
        return session.user_id if session else None

    def expire_all(self) -> int:
        """Every current token now gets INVALID_SESSION_ID; clients must log in again."""
        n = 0
        for s in self._by_token.values():
            if not s.expired:
                s.expired = True
                n += 1
        return n

    def revoke_all(self) -> int:
        n = len(self._by_token)
        self._by_token.clear()
        return n

    def revoke(self, token: str) -> bool:
        return self._by_token.pop(token, None) is not None

    def active_count(self) -> int:
        now = self.clock()
        return sum(1 for s in self._by_token.values()
                   if not s.expired and now - s.last_used_s <= self.lifetime_s)


@dataclass
class OAuthConfig:
    """Credentials the token endpoint accepts."""

    client_id: str
    client_secret: str
    username: str
    password: str
    refresh_token: str
    instance_url: str = ""
    login_url: str = "https://login.salesforce.com"
    jwt_public_key_pem: bytes | None = None  # public key or certificate (PEM)
    jwt_audiences: tuple[str, ...] = ("https://login.salesforce.com",
                                      "https://test.salesforce.com")


def _error(status: int, error: str, description: str) -> web.Response:
    return web.Response(status=status, body=orjson.dumps(
        {"error": error, "error_description": description}), content_type="application/json")


def load_public_key(pem: bytes) -> RSAPublicKey:
    """An RSA public key from a PEM public key or certificate."""
    if b"CERTIFICATE" in pem:
        key: Any = x509.load_pem_x509_certificate(pem).public_key()
    else:
        key = load_pem_public_key(pem)
    if not isinstance(key, RSAPublicKey):
        raise ValueError("JWT bearer flow needs an RSA key")
    return key


class TokenEndpoint:
    """POST /services/oauth2/token."""

    def __init__(self, config: OAuthConfig, sessions: Sessions, user_id: Callable[[], str],
                 *, clock: Callable[[], float] = time.time) -> None:
        self.config = config
        self.sessions = sessions
        self.user_id = user_id
        self.clock = clock
        self._jwt_key = (load_public_key(config.jwt_public_key_pem)
                         if config.jwt_public_key_pem else None)
        self.calls: dict[str, int] = {}

    async def handle(self, request: web.Request) -> web.Response:
        form = await request.post()
        fields = {k: str(v) for k, v in form.items()}
        grant = fields.get("grant_type", "")
        self.calls[grant or "none"] = self.calls.get(grant or "none", 0) + 1
        client_id, client_secret = fields.get("client_id"), fields.get("client_secret")
        auth = request.headers.get("Authorization", "")
        if auth.startswith("Basic "):
            try:
                decoded = base64.b64decode(auth[6:]).decode()
                client_id, _, client_secret = decoded.partition(":")
            except (ValueError, UnicodeDecodeError):
                return _error(400, "invalid_client", "invalid client credentials")
        if grant == "urn:ietf:params:oauth:grant-type:jwt-bearer":
            return self._jwt(fields.get("assertion", ""))
        flows = {"password": self._password, "client_credentials": self._client_credentials,
                 "refresh_token": self._refresh}
        flow = flows.get(grant)
        if flow is None:
            return _error(400, "unsupported_grant_type", "grant type not supported")
        return flow(fields, client_id, client_secret)

    def _password(self, fields: dict[str, str], client_id: str | None,
                  client_secret: str | None) -> web.Response:
        cfg = self.config
        if client_id != cfg.client_id:
            return _error(400, "invalid_client_id", "client identifier invalid")
        if client_secret != cfg.client_secret:
            return _error(400, "invalid_client", "invalid client credentials")
        if fields.get("username") != cfg.username or fields.get("password") != cfg.password:
            return _error(400, "invalid_grant", "authentication failure")
        return self._reply(client_id)

    def _client_credentials(self, fields: dict[str, str], client_id: str | None,
                            client_secret: str | None) -> web.Response:
        cfg = self.config
        if client_id != cfg.client_id or client_secret != cfg.client_secret:
            return _error(400, "invalid_client", "invalid client credentials")
        return self._reply(client_id, api_instance_url=True)

    def _refresh(self, fields: dict[str, str], client_id: str | None,
                 client_secret: str | None) -> web.Response:
        cfg = self.config
        if client_id != cfg.client_id:
            return _error(400, "invalid_client_id", "client identifier invalid")
        if client_secret is not None and client_secret != cfg.client_secret:
            return _error(400, "invalid_client", "invalid client credentials")
        if fields.get("refresh_token") != cfg.refresh_token:
            return _error(400, "invalid_grant", "expired access/refresh token")
        return self._reply(client_id)

    async def revoke(self, request: web.Request) -> web.Response:
        """POST /services/oauth2/revoke: invalidate an access token."""
        form = await request.post()
        token = str(form.get("token", "") or request.query.get("token", ""))
        if not self.sessions.revoke(token):
            return _error(400, "unsupported_token_type", "this token type is not supported")
        return web.Response(status=200)

    def _jwt(self, assertion: str) -> web.Response:
        if self._jwt_key is None:
            return _error(400, "invalid_grant", "invalid assertion")
        try:
            header = jwt.get_unverified_header(assertion)
        except jwt.PyJWTError:
            return _error(400, "invalid_grant", "invalid assertion")
        if header.get("alg") != "RS256":
            return _error(400, "invalid_grant", "invalid assertion")
        try:
            claims = jwt.decode(assertion, self._jwt_key, algorithms=["RS256"],
                                options={"verify_aud": False, "require": ["exp", "iss", "aud"]},
                                leeway=0)
        except jwt.ExpiredSignatureError:
            return _error(400, "invalid_grant", "expired assertion")
        except jwt.PyJWTError:
            return _error(400, "invalid_grant", "invalid assertion")
        aud = claims.get("aud")
        auds = aud if isinstance(aud, list) else [aud]
        allowed = set(self.config.jwt_audiences) | {self.config.instance_url}
        if not any(a in allowed for a in auds):
            return _error(400, "invalid_grant", "audience is invalid")
        if claims.get("iss") != self.config.client_id:
            return _error(400, "invalid_client_id", "client identifier invalid")
        subject = claims.get("sub", claims.get("prn"))
        if subject != self.config.username:
            return _error(400, "invalid_grant", "user hasn't approved this consumer")
        return self._reply(self.config.client_id, refresh=False)

    def _reply(self, client_id: str | None, *, api_instance_url: bool = False,
               refresh: bool = False) -> web.Response:
        cfg = self.config
        user = self.user_id()
        session = self.sessions.issue(user, client_id or "")
        issued_at = str(int(session.issued_at_s * 1000))
        ident = f"{cfg.login_url}/id/{self.sessions.org_id}/{user}"
        signature = base64.b64encode(hmac.new(cfg.client_secret.encode(),
                                              (ident + issued_at).encode(),
                                              hashlib.sha256).digest()).decode()
        body: dict[str, Any] = {
            "access_token": session.token,
            "instance_url": cfg.instance_url,
            "id": ident,
            "token_type": "Bearer",
            "issued_at": issued_at,
            "signature": signature,
            "scope": "api",
        }
        if refresh:
            body["refresh_token"] = cfg.refresh_token
        if api_instance_url:
            body["api_instance_url"] = cfg.instance_url
        return web.Response(body=orjson.dumps(body), content_type="application/json")
