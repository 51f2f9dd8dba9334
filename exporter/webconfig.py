"""`--web.config.file`: TLS and basic auth in the Prometheus exporter-toolkit format.

    tls_server_config:
      cert_file: server.crt
      key_file: server.key
      client_auth_type: RequireAndVerifyClientCert   # optional
      client_ca_file: ca.crt                          # optional
    basic_auth_users:
      alice: $2y$10$...   # bcrypt hash

Relative paths are relative to the config file, as in exporter-toolkit.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import os
import ssl
import threading
from dataclasses import dataclass, field

import bcrypt
import yaml

CLIENT_AUTH = {
    "NoClientCert": ssl.CERT_NONE,
    "RequestClientCert": ssl.CERT_OPTIONAL,
    "RequireAnyClientCert": ssl.CERT_REQUIRED,
    "VerifyClientCertIfGiven": ssl.CERT_OPTIONAL,
    "RequireAndVerifyClientCert": ssl.CERT_REQUIRED,
}


class WebConfigError(Exception):
    pass


@dataclass
class WebConfig:
    ssl_context: ssl.SSLContext | None = None
    users: dict[str, bytes] = field(default_factory=dict)
    # (user, sha256 of the password) -> ok; bcrypt per request would cost ~50 ms each
    _verified: dict[tuple[str, bytes], bool] = field(default_factory=dict, repr=False)
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False)
    _dummy: bytes | None = field(default=None, repr=False)

    def _dummy_hash(self) -> bytes:
        """Checked when the user is unknown. Its bcrypt cost is the highest configured one, so an
        unknown user takes as long as a wrong password: response time does not tell who exists."""
        with self._lock:
            if self._dummy is None:
                fields = [h.split(b"$") for h in self.users.values()]  # $2b$<cost>$<salt+hash>
                costs = [int(f[2]) for f in fields if len(f) > 2 and f[2].isdigit()]
                cost = min(max(max(costs, default=10), 4), 31)  # the range bcrypt accepts
                self._dummy = bcrypt.hashpw(b"unused", bcrypt.gensalt(rounds=cost))
            return self._dummy

    def check_authorization(self, header: str | None) -> bool:
        """True when no users are configured or the Basic credentials match one of them."""
        if not self.users:
            return True
        if not header or not header.startswith("Basic "):
            return False
        try:
            user, _, password = base64.b64decode(header[6:], validate=True).decode("utf-8").partition(":")
        except (binascii.Error, UnicodeDecodeError):
            return False
        key = (user, hashlib.sha256(password.encode()).digest())
        with self._lock:
            cached = self._verified.get(key)
        if cached is not None:
            return cached
        hashed = self.users.get(user)
        ok = bcrypt.checkpw(password.encode(), hashed if hashed is not None else self._dummy_hash())
        ok = ok and hashed is not None
        with self._lock:
            if len(self._verified) > 1024:  # bounded: a password-guessing client cannot grow it forever
                self._verified.clear()
            self._verified[key] = ok
        return ok


def load(path: str) -> WebConfig:
    try:
        with open(path, encoding="utf-8") as f:
            raw = yaml.safe_load(f) or {}
    except OSError as exc:
        raise WebConfigError(f"cannot read web config {path}: {exc.strerror}") from None
    except yaml.YAMLError as exc:
        raise WebConfigError(f"web config {path} is not valid YAML: {exc}") from None
    if not isinstance(raw, dict):
        raise WebConfigError(f"web config {path}: expected a mapping at the top level")
    unknown = set(raw) - {"tls_server_config", "basic_auth_users", "http_server_config"}
    if unknown:
        raise WebConfigError(f"web config {path}: unknown keys {sorted(unknown)}")
    base = os.path.dirname(os.path.abspath(path))
    cfg = WebConfig()
    tls = raw.get("tls_server_config")
    if tls:
        cfg.ssl_context = _ssl_context(tls, base, path)
    users = raw.get("basic_auth_users") or {}
    if not isinstance(users, dict):
        raise WebConfigError(f"web config {path}: basic_auth_users must map user names to bcrypt hashes")
    for user, hashed in users.items():
        if not isinstance(hashed, str) or not hashed.startswith(("$2a$", "$2b$", "$2y$")):
            raise WebConfigError(f"web config {path}: password of user {user!r} is not a bcrypt hash")
        cfg.users[str(user)] = hashed.encode()
    if cfg.users:
        cfg._dummy_hash()  # made now, so the first unknown user does not pay for it
    return cfg


def _ssl_context(tls: dict, base: str, path: str) -> ssl.SSLContext:
    def resolve(key: str) -> str | None:
        value = tls.get(key)
        return None if not value else os.path.join(base, value)

    cert, key = resolve("cert_file"), resolve("key_file")
    if not cert or not key:
        raise WebConfigError(f"web config {path}: tls_server_config needs cert_file and key_file")
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    try:
        ctx.load_cert_chain(cert, key)
    except (OSError, ssl.SSLError) as exc:
        raise WebConfigError(f"web config {path}: cannot load certificate {cert} / key {key}: {exc}") from None
    auth = tls.get("client_auth_type", "NoClientCert")
    if auth not in CLIENT_AUTH:
        raise WebConfigError(f"web config {path}: client_auth_type must be one of {sorted(CLIENT_AUTH)}")
    ctx.verify_mode = CLIENT_AUTH[auth]
    ca = resolve("client_ca_file")
    if ca:
        try:
            ctx.load_verify_locations(ca)
        except (OSError, ssl.SSLError) as exc:
            raise WebConfigError(f"web config {path}: cannot load client CA {ca}: {exc}") from None
    elif auth in ("RequireAndVerifyClientCert", "VerifyClientCertIfGiven"):
        raise WebConfigError(f"web config {path}: client_auth_type {auth} needs client_ca_file")
    return ctx
