"""`--web.config.file`: TLS, HTTP headers, basic auth and a rate limit, in the exporter-toolkit format.

    tls_server_config:
      cert_file: server.crt          # or cert: <PEM text>
      key_file: server.key           # or key: <PEM text>
      client_auth_type: RequireAndVerifyClientCert
      client_ca_file: ca.crt         # or client_ca: <PEM text>
      client_allowed_sans: [prometheus.example.org]
      min_version: TLS12
      max_version: TLS13
      cipher_suites: [TLS_ECDHE_RSA_WITH_AES_128_GCM_SHA256]
      prefer_server_cipher_suites: true
      curve_preferences: [X25519]
    http_server_config:
      http2: false
      headers: {X-Frame-Options: deny}
    basic_auth_users:
      alice: $2y$10$...   # bcrypt hash
    rate_limit: {interval: 100ms, burst: 20}

Every key that format documents is honoured, or refused at start with one line where Python's
TLS stack cannot do what it promises; unknown keys and values of the wrong type are refused.
Relative paths are relative to the config file, as in exporter-toolkit. The file is read at start
and again on SIGHUP (`serve` swaps the loaded config in; one that does not load keeps the old).
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import ipaddress
import os
import re
import secrets
import ssl
import stat
import threading
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import bcrypt
import yaml

from ..inputs import read_operator_file
from ..settings import ConfigError

WEB_CONFIG_LIMIT = 1 << 20  # bytes: a web config with every key and a few hundred users is a few KB

# Go's names for the policies (crypto/tls ClientAuthType). Python's ssl can only ask for a client
# certificate it also verifies, so the two policies that accept unverified certificates (which the
# exporter-toolkit documentation calls insecure) are refused rather than silently made stricter.
CLIENT_AUTH = {
    "NoClientCert": ssl.CERT_NONE,
    "VerifyClientCertIfGiven": ssl.CERT_OPTIONAL,
    "RequireAndVerifyClientCert": ssl.CERT_REQUIRED,
}
UNVERIFIED_CLIENT_AUTH = ("RequestClientCert", "RequireAnyClientCert", "RequireClientCert")
TLS_VERSIONS = {
    "TLS10": ssl.TLSVersion.TLSv1,
    "TLS11": ssl.TLSVersion.TLSv1_1,
    "TLS12": ssl.TLSVersion.TLSv1_2,
    "TLS13": ssl.TLSVersion.TLSv1_3,
}
# Go's tls.CipherSuites() for TLS 1.0-1.2, by their OpenSSL names. Go ignores cipher_suites for
# TLS 1.3 (as does OpenSSL's cipher list), so a TLS 1.3 suite listed there is refused, not ignored.
CIPHER_SUITES = {
    "TLS_ECDHE_ECDSA_WITH_AES_128_CBC_SHA": "ECDHE-ECDSA-AES128-SHA",
    "TLS_ECDHE_ECDSA_WITH_AES_256_CBC_SHA": "ECDHE-ECDSA-AES256-SHA",
    "TLS_ECDHE_RSA_WITH_AES_128_CBC_SHA": "ECDHE-RSA-AES128-SHA",
    "TLS_ECDHE_RSA_WITH_AES_256_CBC_SHA": "ECDHE-RSA-AES256-SHA",
    "TLS_ECDHE_ECDSA_WITH_AES_128_GCM_SHA256": "ECDHE-ECDSA-AES128-GCM-SHA256",
    "TLS_ECDHE_ECDSA_WITH_AES_256_GCM_SHA384": "ECDHE-ECDSA-AES256-GCM-SHA384",
    "TLS_ECDHE_RSA_WITH_AES_128_GCM_SHA256": "ECDHE-RSA-AES128-GCM-SHA256",
    "TLS_ECDHE_RSA_WITH_AES_256_GCM_SHA384": "ECDHE-RSA-AES256-GCM-SHA384",
    "TLS_ECDHE_ECDSA_WITH_CHACHA20_POLY1305_SHA256": "ECDHE-ECDSA-CHACHA20-POLY1305",
    "TLS_ECDHE_RSA_WITH_CHACHA20_POLY1305_SHA256": "ECDHE-RSA-CHACHA20-POLY1305",
}
TLS13_SUITES = ("TLS_AES_128_GCM_SHA256", "TLS_AES_256_GCM_SHA384", "TLS_CHACHA20_POLY1305_SHA256")
CURVES = {"CurveP256": "prime256v1", "CurveP384": "secp384r1", "CurveP521": "secp521r1", "X25519": "X25519"}
# exporter-toolkit's allowed response headers, with their allowed values (None: any string).
HEADERS: dict[str, tuple[str, ...] | None] = {
    "Strict-Transport-Security": None,
    "X-Content-Type-Options": ("nosniff",),
    "X-Frame-Options": ("deny", "sameorigin"),
    "X-XSS-Protection": None,
    "Content-Security-Policy": None,
}
BCRYPT_HASH = re.compile(r"\$(2[aby])\$(\d\d)\$([./A-Za-z0-9]{22})([./A-Za-z0-9]{31})")
# bcrypt doubles its work per cost step: 14 is about a second a check on a server core, 15 two.
# Above that every unauthenticated request becomes a denial of service, so it is refused.
MAX_BCRYPT_COST = 14
MAX_PASSWORD_BYTES = 72  # bcrypt reads no further; a longer password can never match (as in Go)
VERIFIED_CACHE = 1024
GO_DURATION = re.compile(r"(?:(\d+(?:\.\d*)?|\.\d+)(ns|us|µs|ms|s|m|h))+")
GO_UNITS = {"ns": 1e-9, "us": 1e-6, "µs": 1e-6, "ms": 1e-3, "s": 1.0, "m": 60.0, "h": 3600.0}


class WebConfigError(Exception):
    pass


@dataclass(frozen=True)
class RateLimit:
    interval: float  # seconds between two requests (the bucket's refill period)
    burst: int


@dataclass
class WebConfig:
    ssl_context: ssl.SSLContext | None = None
    users: dict[str, bytes] = field(default_factory=dict)
    # SANs of which a client certificate must carry one (None: any verified certificate)
    allowed_sans: frozenset[str] | None = None
    headers: dict[str, str] = field(default_factory=dict)
    rate_limit: RateLimit | None = None
    # The bcrypt check, a seam for tests that count calls; always bcrypt.checkpw in the product.
    checkpw: Callable[[bytes, bytes], bool] = field(default=bcrypt.checkpw, repr=False)
    _verified: OrderedDict[bytes, None] = field(default_factory=OrderedDict, repr=False)
    _key: bytes = field(default_factory=lambda: secrets.token_bytes(32), repr=False)
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False)
    _dummy: bytes | None = field(default=None, repr=False)

    # --- basic auth ------------------------------------------------------------------------------

    def dummy_hash(self) -> bytes:
        """Checked when the user is unknown, at the highest configured cost, so that an unknown user
        costs as much as a wrong password and response times do not tell who exists. Its salt is
        real and its digest invented: no password matches it, and making it costs nothing."""
        with self._lock:
            if self._dummy is None:
                costs = [int(BCRYPT_HASH.fullmatch(h.decode()).group(2)) for h in self.users.values()]
                salt = bcrypt.gensalt(rounds=max(costs, default=10))  # b"$2b$NN$" + 22 characters
                self._dummy = salt + b"." * 31
            return self._dummy

    def _cache_key(self, header: str) -> bytes:
        # Keyed on a keyed hash of the whole header: neither the password nor a plain digest of it
        # is kept in memory.
        return hmac.new(self._key, header.encode("utf-8", "surrogateescape"), hashlib.sha256).digest()

    def authorize_fast(self, header: str | None) -> bool | None:
        """The answer when it needs no bcrypt check (no users, cached, malformed), else None."""
        if not self.users:
            return True
        credentials = _credentials(header)
        if credentials is None:
            return False
        if len(credentials[1]) > MAX_PASSWORD_BYTES:
            return False  # no bcrypt hash can match it: refused for every user alike, at no cost
        with self._lock:
            key = self._cache_key(header)  # type: ignore[arg-type]  # _credentials checked it
            if key in self._verified:
                self._verified.move_to_end(key)
                return True
        return None

    def authorize_slow(self, header: str) -> bool:
        """One bcrypt check (blocking; run it off the event loop). Successes are remembered."""
        credentials = _credentials(header)
        if credentials is None or len(credentials[1]) > MAX_PASSWORD_BYTES:
            return False
        user, password = credentials
        hashed = self.users.get(user)
        ok = self.checkpw(password, hashed if hashed is not None else self.dummy_hash()) and hashed is not None
        if ok:
            with self._lock:
                self._verified[self._cache_key(header)] = None
                while len(self._verified) > VERIFIED_CACHE:
                    self._verified.popitem(last=False)
        return ok

    def check_authorization(self, header: str | None) -> bool:
        """True when no users are configured or the Basic credentials match one of them."""
        fast = self.authorize_fast(header)
        return fast if fast is not None else self.authorize_slow(header)  # type: ignore[arg-type]

    # --- client certificates -------------------------------------------------------------------

    def peer_allowed(self, peercert: dict[str, Any] | None) -> bool:
        """client_allowed_sans: the verified client certificate names one of them (as Go compares:
        DNS names, e-mail addresses, IP addresses and URIs, exactly)."""
        if self.allowed_sans is None:
            return True
        for kind, value in (peercert or {}).get("subjectAltName", ()):
            if kind == "IP Address":
                try:
                    value = str(ipaddress.ip_address(value.strip()))
                except ValueError:
                    continue
            if kind in ("DNS", "email", "URI", "IP Address") and value in self.allowed_sans:
                return True
        return False


def _credentials(header: str | None) -> tuple[str, bytes] | None:
    if not header or not header.startswith("Basic ") or len(header) > 4096:
        return None
    try:
        user, sep, password = base64.b64decode(header[6:], validate=True).decode("utf-8").partition(":")
    except (binascii.Error, UnicodeDecodeError, ValueError):
        return None
    if not sep:
        return None
    return user, password.encode()


# --- loading --------------------------------------------------------------------------------------

class _Reader:
    """Typed access to one mapping of the file; every error names the key and is one line."""

    def __init__(self, path: str, where: str, raw: Any, known: tuple[str, ...]) -> None:
        self.path, self.where = path, where
        if raw is None:
            raw = {}
        if not isinstance(raw, dict):
            raise self.error(f"{where or 'the top level'} must be a mapping, not {_kind(raw)}")
        unknown = [str(k) for k in raw if k not in known]
        if unknown:
            raise self.error(f"unknown key{'s' if len(unknown) > 1 else ''} {', '.join(unknown)}"
                             f"{' in ' + where if where else ''} (known: {', '.join(known)})")
        self.raw = raw

    def error(self, message: str) -> WebConfigError:
        return WebConfigError(f"web config {self.path}: {message}")

    def name(self, key: str) -> str:
        return f"{self.where}.{key}" if self.where else key

    def string(self, key: str) -> str | None:
        value = self.raw.get(key)
        if value is None:
            return None
        if not isinstance(value, str):
            raise self.error(f"{self.name(key)} must be a string, not {_kind(value)}")
        return value

    def boolean(self, key: str) -> bool | None:
        value = self.raw.get(key)
        if value is not None and not isinstance(value, bool):
            raise self.error(f"{self.name(key)} must be true or false, not {_kind(value)}")
        return value

    def strings(self, key: str) -> list[str] | None:
        value = self.raw.get(key)
        if value is None:
            return None
        if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
            raise self.error(f"{self.name(key)} must be a list of strings")
        return value

    def mapping(self, key: str) -> dict:
        value = self.raw.get(key)
        if value is None:
            return {}
        if not isinstance(value, dict):
            raise self.error(f"{self.name(key)} must be a mapping, not {_kind(value)}")
        return value


def _kind(value: Any) -> str:
    return {list: "a list", dict: "a mapping", str: "a string", bool: "a boolean", int: "a number",
            float: "a number"}.get(type(value), type(value).__name__)


def load(path: str) -> WebConfig:
    try:  # a regular file, bounded: a FIFO or /dev/zero named here must not hang or fill memory
        data = read_operator_file(path, WEB_CONFIG_LIMIT, "web config")
    except ConfigError as exc:
        raise WebConfigError(str(exc)) from None
    try:
        raw = yaml.safe_load(data.decode("utf-8"))
    except UnicodeDecodeError:
        raise WebConfigError(f"web config {path} is not UTF-8 text") from None
    except RecursionError:  # [[[[... a hundred thousand deep: never a traceback that ends serve on SIGHUP
        raise WebConfigError(f"web config {path} is nested too deeply") from None
    except yaml.YAMLError as exc:
        where = getattr(exc, "problem_mark", None)
        at = f" at line {where.line + 1}" if where is not None else ""
        raise WebConfigError(f"web config {path} is not valid YAML{at}") from None
    top = _Reader(path, "", raw, ("tls_server_config", "http_server_config", "basic_auth_users", "rate_limit"))
    base = os.path.dirname(os.path.abspath(path))
    cfg = WebConfig()
    tls = _Reader(path, "tls_server_config", top.raw.get("tls_server_config"), (
        "cert", "key", "client_ca", "cert_file", "key_file", "client_auth_type", "client_ca_file",
        "client_allowed_sans", "min_version", "max_version", "cipher_suites", "prefer_server_cipher_suites",
        "curve_preferences"))
    if tls.raw:
        cfg.ssl_context, cfg.allowed_sans = _ssl_context(tls, base)
    _http_server_config(_Reader(path, "http_server_config", top.raw.get("http_server_config"), ("http2", "headers")),
                        cfg)
    users = top.mapping("basic_auth_users")
    for user, hashed in users.items():
        if not isinstance(user, str):
            raise top.error(f"basic_auth_users: user name {user!r} is not a string (quote it)")
        cfg.users[user] = _bcrypt_hash(top, user, hashed)
    if cfg.users:
        cfg.dummy_hash()
    cfg.rate_limit = _rate_limit(_Reader(path, "rate_limit", top.raw.get("rate_limit"), ("interval", "burst")))
    return cfg


def _bcrypt_hash(top: _Reader, user: str, hashed: Any) -> bytes:
    if not isinstance(hashed, str):
        raise top.error(f"basic_auth_users: the hash of user {user!r} must be a string, not {_kind(hashed)}")
    m = BCRYPT_HASH.fullmatch(hashed)
    if not m:
        raise top.error(f"basic_auth_users: the password of user {user!r} is not a bcrypt hash ($2y$NN$ and 53 characters)")
    cost = int(m.group(2))
    if not 4 <= cost <= MAX_BCRYPT_COST:
        raise top.error(f"basic_auth_users: the bcrypt cost of user {user!r} is {cost}; use 4 to {MAX_BCRYPT_COST} "
                        f"(each step doubles the time of every login; 10-12 is usual)")
    # The salt must decode as bcrypt's does. Checked at the lowest cost with the same salt: instant.
    try:
        bcrypt.checkpw(b"", f"${m.group(1)}$04${m.group(3)}{m.group(4)}".encode())
    except ValueError:
        raise top.error(f"basic_auth_users: the bcrypt hash of user {user!r} has an invalid salt") from None
    return hashed.encode()


def _rate_limit(rl: _Reader) -> RateLimit | None:
    if not rl.raw:
        return None
    interval = rl.raw.get("interval")
    if interval is None or interval == 0 or interval == "0":
        if rl.raw.get("burst") is not None and interval is None:
            raise rl.error("rate_limit.burst needs rate_limit.interval")
        return None  # interval 0 switches the limiter off, as in exporter-toolkit
    if not isinstance(interval, str) or not GO_DURATION.fullmatch(interval):
        raise rl.error(f"rate_limit.interval must be a duration such as 100ms or 1s, not {interval!r}")
    seconds = sum(float(n) * GO_UNITS[u] for n, u in re.findall(r"(\d+(?:\.\d*)?|\.\d+)(ns|us|µs|ms|s|m|h)", interval))
    burst = rl.raw.get("burst")
    if isinstance(burst, bool) or not isinstance(burst, int) or burst < 1:
        # Go's limiter with a burst of 0 refuses every request: surely not what was meant.
        raise rl.error("rate_limit.burst must be a whole number of at least 1")
    return RateLimit(seconds, burst)


def _http_server_config(hc: _Reader, cfg: WebConfig) -> None:
    if hc.boolean("http2"):
        raise hc.error("http_server_config.http2: true is not supported: this exporter serves HTTP/1.1 only "
                       "(set it to false or remove it)")
    headers = hc.mapping("headers")
    for name, value in headers.items():
        if name not in HEADERS:
            raise hc.error(f"http_server_config.headers: {name!r} cannot be configured (allowed: {', '.join(HEADERS)})")
        if not isinstance(value, str) or "\r" in value or "\n" in value:
            raise hc.error(f"http_server_config.headers.{name} must be a one-line string")
        allowed = HEADERS[name]
        if allowed is not None and value not in allowed:
            raise hc.error(f"http_server_config.headers.{name} must be one of {', '.join(allowed)}, not {value!r}")
        if value:  # blank means unset
            cfg.headers[name] = value


def _pem_path(value: str) -> str:
    """Inline PEM as a path ssl can load: an anonymous in-memory file, never on disk."""
    fd = os.memfd_create("web-config-pem", os.MFD_CLOEXEC)
    os.write(fd, value.encode())
    return f"/proc/self/fd/{fd}"


def _ssl_context(tls: _Reader, base: str) -> tuple[ssl.SSLContext, frozenset[str] | None]:
    def source(inline_key: str, file_key: str) -> tuple[str | None, str | None]:
        inline, path = tls.string(inline_key), tls.string(file_key)
        if inline and path:
            raise tls.error(f"tls_server_config: set {inline_key} or {file_key}, not both")
        if not path:
            return inline or None, None
        full = os.path.join(base, path)
        try:  # the TLS library opens it blocking: a FIFO named here would hang start and every reload
            regular = stat.S_ISREG(os.stat(full).st_mode)
        except OSError:  # missing or unreadable: told where the file is loaded
            regular = True
        if not regular:
            raise tls.error(f"tls_server_config.{file_key} {full}: not a regular file")
        return None, full

    cert_pem, cert_file = source("cert", "cert_file")
    key_pem, key_file = source("key", "key_file")
    ca_pem, ca_file = source("client_ca", "client_ca_file")
    if not (cert_pem or cert_file) or not (key_pem or key_file):
        raise tls.error("tls_server_config needs cert_file (or cert) and key_file (or key)")
    auth = tls.string("client_auth_type") or "NoClientCert"
    if auth in UNVERIFIED_CLIENT_AUTH:
        raise tls.error(f"tls_server_config.client_auth_type {auth} (an unverified client certificate) is not "
                        f"supported: use RequireAndVerifyClientCert or VerifyClientCertIfGiven with a client CA")
    if auth not in CLIENT_AUTH:
        raise tls.error(f"tls_server_config.client_auth_type must be one of {', '.join(CLIENT_AUTH)}, not {auth!r}")
    if (ca_pem or ca_file) and auth == "NoClientCert":
        raise tls.error("tls_server_config: a client CA is configured without a client_auth_type")
    if auth != "NoClientCert" and not (ca_pem or ca_file):
        raise tls.error(f"tls_server_config.client_auth_type {auth} needs client_ca_file (or client_ca)")

    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    versions = []
    for key, default in (("min_version", "TLS12"), ("max_version", "TLS13")):
        name = tls.string(key) or default
        if name not in TLS_VERSIONS:
            raise tls.error(f"tls_server_config.{key} must be one of {', '.join(TLS_VERSIONS)}, not {name!r}")
        versions.append(TLS_VERSIONS[name])
    if versions[0] > versions[1]:
        raise tls.error("tls_server_config.min_version is above max_version")
    ctx.minimum_version, ctx.maximum_version = versions

    fds: list[str] = []
    try:
        cert = _pem_path(cert_pem) if cert_pem else cert_file
        key = _pem_path(key_pem) if key_pem else key_file
        fds += [p for p in (cert, key) if p.startswith("/proc/self/fd/")]
        ctx.load_cert_chain(cert, key)
    except (OSError, ssl.SSLError) as exc:
        what = f"{cert_file or 'cert'} / {key_file or 'key'}"
        raise tls.error(f"cannot load certificate {what}: {getattr(exc, 'strerror', None) or exc}") from None
    finally:
        for p in fds:
            os.close(int(p.rsplit("/", 1)[1]))
    ctx.verify_mode = CLIENT_AUTH[auth]
    if ca_pem or ca_file:
        try:
            if ca_pem:
                ctx.load_verify_locations(cadata=ca_pem)
            else:
                ctx.load_verify_locations(ca_file)
        except (OSError, ssl.SSLError, ValueError) as exc:
            raise tls.error(f"cannot load client CA {ca_file or 'client_ca'}: {getattr(exc, 'strerror', None) or exc}") from None

    suites = tls.strings("cipher_suites")
    if suites:
        for name in suites:
            if name in TLS13_SUITES:
                raise tls.error(f"tls_server_config.cipher_suites: {name} is a TLS 1.3 suite; cipher_suites only "
                                f"chooses among TLS 1.2 suites (TLS 1.3 suites are always on, as in Go)")
            if name not in CIPHER_SUITES:
                raise tls.error(f"tls_server_config.cipher_suites: unknown or insecure suite {name!r} "
                                f"(known: {', '.join(CIPHER_SUITES)})")
        ctx.set_ciphers(":".join(CIPHER_SUITES[n] for n in suites))
    if tls.boolean("prefer_server_cipher_suites") is False:
        ctx.options &= ~ssl.OP_CIPHER_SERVER_PREFERENCE
    else:  # the default, as in exporter-toolkit
        ctx.options |= ssl.OP_CIPHER_SERVER_PREFERENCE
    curves = tls.strings("curve_preferences")
    if curves:
        for name in curves:
            if name not in CURVES:
                raise tls.error(f"tls_server_config.curve_preferences: unknown curve {name!r} (known: {', '.join(CURVES)})")
        if len(curves) > 1:
            # Python's ssl sets one key-exchange group, not a preference list.
            raise tls.error("tls_server_config.curve_preferences: only one curve can be set here "
                            f"(got {len(curves)}); list the one to use")
        try:
            ctx.set_ecdh_curve(CURVES[curves[0]])
        except (ValueError, ssl.SSLError) as exc:
            raise tls.error(f"tls_server_config.curve_preferences: {curves[0]} is not available: {exc}") from None
    sans = tls.strings("client_allowed_sans")
    allowed = None
    if sans is not None:
        if auth == "NoClientCert":
            raise tls.error("tls_server_config.client_allowed_sans needs client_auth_type RequireAndVerifyClientCert")
        allowed = frozenset(_normalise_san(s) for s in sans)
    return ctx, allowed


def _normalise_san(value: str) -> str:
    try:
        return str(ipaddress.ip_address(value))
    except ValueError:
        return value
