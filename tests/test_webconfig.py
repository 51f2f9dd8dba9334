"""--web.config.file: every key of the exporter-toolkit format honoured (shown with real TLS handshakes
on 127.0.0.1) or refused at start with one line; wrong types and unknown keys refused."""

from __future__ import annotations

import base64
import http.client
import ssl
import subprocess
from collections.abc import Callable
from pathlib import Path

import bcrypt
import pytest

from passthrough_exporter.serving.refresher import Refresher
from passthrough_exporter.serving.server import ExporterServer
from passthrough_exporter.reading.sources.sysfs import SysfsSource
from passthrough_exporter.serving.webconfig import WebConfigError, load
from tests.support import hosts
from tests.support.client import request
from tests.support.local import inspector, local_refresher
from tests.support.parse import log_messages
from tests.support.process import EXE
from tests.support.sysfs_builder import SysfsTree

FAILED_TLS = (ssl.SSLError, ConnectionError, http.client.HTTPException)


def openssl(*args: str) -> None:
    subprocess.run(["openssl", *args], check=True, capture_output=True, timeout=60)


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A CA; a server certificate for 127.0.0.1; client certificates named good.example and bad.example
    by that CA; and a client certificate from another CA."""
    d = tmp_path_factory.mktemp("pki")
    for ca in ("ca", "other-ca"):
        # The extensions a strict verifier wants (Python 3.13 verifies with X509_STRICT by default).
        openssl("req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1", "-subj", f"/CN={ca}",
                "-addext", "basicConstraints=critical,CA:TRUE", "-addext", "keyUsage=critical,keyCertSign,cRLSign",
                "-addext", "subjectKeyIdentifier=hash",
                "-keyout", str(d / f"{ca}.key"), "-out", str(d / f"{ca}.crt"))
    for name, ca, san in (("server", "ca", "IP:127.0.0.1"), ("good", "ca", "DNS:good.example"),
                          ("bad", "ca", "DNS:bad.example"), ("stranger", "other-ca", "DNS:good.example")):
        openssl("req", "-newkey", "rsa:2048", "-nodes", "-subj", f"/CN={name}", "-keyout", str(d / f"{name}.key"),
                "-out", str(d / f"{name}.csr"))
        (d / f"{name}.ext").write_text(f"subjectAltName={san}\nbasicConstraints=CA:FALSE\n"
                                       "keyUsage=critical,digitalSignature,keyEncipherment\n"
                                       "subjectKeyIdentifier=hash\nauthorityKeyIdentifier=keyid\n")
        openssl("x509", "-req", "-in", str(d / f"{name}.csr"), "-CA", str(d / f"{ca}.crt"), "-CAkey",
                str(d / f"{ca}.key"), "-CAcreateserial", "-days", "1", "-extfile", str(d / f"{name}.ext"),
                "-out", str(d / f"{name}.crt"))
    return d


@pytest.fixture(scope="module")
def gpu_host_refresher(tmp_path_factory: pytest.TempPathFactory) -> Refresher:
    """One refresher for the whole module, of a smaller host than conftest's `refresher` (host bridge
    and GPU only): the web config is what these tests vary, never the host."""
    tree = SysfsTree(tmp_path_factory.mktemp("host") / "host")
    hosts.base(tree)
    hosts.desktop_gpu(tree)
    r = local_refresher(SysfsSource(str(tree.sys), str(tree.proc)), inspector(), interval=3600)
    r.refresh()
    return r


class Served:
    """Served(yaml_text): the port of a server of `gpu_host_refresher` under that web config."""

    def __init__(self, refresher: Refresher, tmp_path: Path, start: Callable[..., ExporterServer]) -> None:
        self.refresher, self.tmp_path, self.start = refresher, tmp_path, start
        self.count = 0

    def __call__(self, yaml_text: str) -> int:
        cfg = self.tmp_path / f"web{self.count}.yml"
        self.count += 1
        cfg.write_text(yaml_text)
        return self.start(self.refresher, load(str(cfg))).server_address[1]


@pytest.fixture
def serve_with(gpu_host_refresher: Refresher, tmp_path: Path, start_server: Callable[..., ExporterServer]) -> Served:
    return Served(gpu_host_refresher, tmp_path, start_server)


def client(pki: Path, cert: str | None = None, **kw) -> ssl.SSLContext:
    ctx = ssl.create_default_context(cafile=str(pki / "ca.crt"))
    if cert:
        ctx.load_cert_chain(str(pki / f"{cert}.crt"), str(pki / f"{cert}.key"))
    if "max_version" in kw:
        ctx.maximum_version = kw["max_version"]
    if "ciphers" in kw:
        ctx.set_ciphers(kw["ciphers"])
    if "curve" in kw:
        ctx.set_ecdh_curve(kw["curve"])
    return ctx


def tls_get(port: int, ctx: ssl.SSLContext, path: str = "/healthz",
            headers: dict[str, str] | None = None) -> tuple[int, dict[str, str], str, str]:
    """(status, headers, TLS version, cipher) of one request; raises when the server refuses us."""
    answer = request(port, path, headers=headers, context=ctx)
    version, cipher = answer.tls
    return answer.status, dict(answer.getheaders()), version, cipher


def tls(pki: Path, extra: str = "") -> str:
    return (f"tls_server_config:\n  cert_file: {pki}/server.crt\n  key_file: {pki}/server.key\n" + extra)


# --- honoured ---------------------------------------------------------------------------------------

def test_min_and_max_version(pki: Path, serve_with: Served) -> None:
    only13 = serve_with(tls(pki, "  min_version: TLS13\n"))
    with pytest.raises(FAILED_TLS):
        tls_get(only13, client(pki, max_version=ssl.TLSVersion.TLSv1_2))
    assert tls_get(only13, client(pki))[2] == "TLSv1.3"
    upto12 = serve_with(tls(pki, "  max_version: TLS12\n"))
    assert tls_get(upto12, client(pki))[2] == "TLSv1.2"
    assert tls_get(serve_with(tls(pki)), client(pki))[2] == "TLSv1.3"  # defaults TLS12-TLS13


def test_cipher_suites(pki: Path, serve_with: Served) -> None:
    port = serve_with(tls(pki, "  max_version: TLS12\n  cipher_suites: [TLS_ECDHE_RSA_WITH_AES_256_GCM_SHA384]\n"))
    assert tls_get(port, client(pki))[3] == "ECDHE-RSA-AES256-GCM-SHA384"
    with pytest.raises(FAILED_TLS):
        tls_get(port, client(pki, ciphers="ECDHE-RSA-AES128-GCM-SHA256"))


@pytest.mark.parametrize("prefer, chosen", [("true", "ECDHE-RSA-AES256-GCM-SHA384"),
                                            ("false", "ECDHE-RSA-AES128-GCM-SHA256")])
def test_prefer_server_cipher_suites(pki: Path, serve_with: Served, prefer: str, chosen: str) -> None:
    port = serve_with(tls(pki, "  max_version: TLS12\n  cipher_suites: [TLS_ECDHE_RSA_WITH_AES_256_GCM_SHA384, "
                               f"TLS_ECDHE_RSA_WITH_AES_128_GCM_SHA256]\n  prefer_server_cipher_suites: {prefer}\n"))
    ctx = client(pki, ciphers="ECDHE-RSA-AES128-GCM-SHA256:ECDHE-RSA-AES256-GCM-SHA384")
    assert tls_get(port, ctx)[3] == chosen


@pytest.mark.parametrize("version", [ssl.TLSVersion.TLSv1_2, ssl.TLSVersion.TLSv1_3], ids=["TLS1.2", "TLS1.3"])
def test_curve_preferences(pki: Path, serve_with: Served, version: ssl.TLSVersion) -> None:
    port = serve_with(tls(pki, "  curve_preferences: [CurveP384]\n"))
    assert tls_get(port, client(pki, curve="secp384r1", max_version=version))[0] == 200
    # ECDHE suites only: at TLS 1.2 an OpenSSL whose defaults keep RSA key exchange would otherwise
    # agree on a suite that uses no curve at all (Debian 12's does).
    with pytest.raises(FAILED_TLS):
        tls_get(port, client(pki, curve="prime256v1", max_version=version, ciphers="ECDHE+AESGCM"))


def test_require_and_verify_client_cert(pki: Path, serve_with: Served) -> None:
    port = serve_with(tls(pki, f"  client_auth_type: RequireAndVerifyClientCert\n  client_ca_file: {pki}/ca.crt\n"))
    assert tls_get(port, client(pki, "good"))[0] == 200
    with pytest.raises(FAILED_TLS):
        tls_get(port, client(pki))
    with pytest.raises(FAILED_TLS):
        tls_get(port, client(pki, "stranger"))


def test_verify_client_cert_if_given(pki: Path, serve_with: Served) -> None:
    port = serve_with(tls(pki, f"  client_auth_type: VerifyClientCertIfGiven\n  client_ca_file: {pki}/ca.crt\n"))
    assert tls_get(port, client(pki))[0] == 200
    assert tls_get(port, client(pki, "good"))[0] == 200
    with pytest.raises(FAILED_TLS):
        tls_get(port, client(pki, "stranger"))


def test_client_allowed_sans(pki: Path, serve_with: Served) -> None:
    port = serve_with(tls(pki, f"  client_auth_type: RequireAndVerifyClientCert\n  client_ca_file: {pki}/ca.crt\n"
                               "  client_allowed_sans: [good.example, '2001:db8::1']\n"))
    assert tls_get(port, client(pki, "good"))[0] == 200
    with pytest.raises(FAILED_TLS):
        tls_get(port, client(pki, "bad"))  # verified by the CA, but not a name on the list


def test_inline_cert_key_and_client_ca(pki: Path, serve_with: Served) -> None:
    def block(name: str) -> str:
        return "|\n" + "".join(f"    {line}\n" for line in (pki / name).read_text().splitlines())

    port = serve_with("tls_server_config:\n  cert: " + block("server.crt") + "  key: " + block("server.key")
                      + "  client_auth_type: RequireAndVerifyClientCert\n  client_ca: " + block("ca.crt"))
    assert tls_get(port, client(pki, "good"))[0] == 200
    with pytest.raises(FAILED_TLS):
        tls_get(port, client(pki))


def test_headers_on_every_answer(pki: Path, serve_with: Served) -> None:
    hashed = bcrypt.hashpw(b"pw", bcrypt.gensalt(rounds=4)).decode()
    port = serve_with(tls(pki) + "http_server_config:\n  http2: false\n  headers:\n    X-Frame-Options: deny\n"
                      "    Content-Security-Policy: default-src 'none'\n    Strict-Transport-Security: max-age=60\n"
                      "    X-XSS-Protection: ''\n"
                      f"basic_auth_users:\n  alice: '{hashed}'\n")
    auth = {"Authorization": "Basic " + base64.b64encode(b"alice:pw").decode()}
    for path, headers, status in (("/metrics", auth, 200), ("/nowhere", auth, 404), ("/metrics", {}, 401)):
        got, sent, _, _ = tls_get(port, client(pki), path, headers)
        assert got == status
        assert sent["X-Frame-Options"] == "deny" and sent["Content-Security-Policy"] == "default-src 'none'"
        assert sent["Strict-Transport-Security"] == "max-age=60" and "X-XSS-Protection" not in sent  # blank: unset


def test_rate_limit(pki: Path, serve_with: Served) -> None:
    port = serve_with(tls(pki) + "rate_limit:\n  interval: 1h\n  burst: 3\n")
    ctx = client(pki)
    assert [tls_get(port, ctx)[0] for _ in range(4)] == [200, 200, 200, 429]


# --- refused ----------------------------------------------------------------------------------------

REFUSED = {
    # wrong types
    "- a\n- b\n": "the top level must be a mapping, not a list",
    "tls_server_config: [a]\n": "tls_server_config must be a mapping, not a list",
    "basic_auth_users: [1, 2]\n": "basic_auth_users must be a mapping, not a list",
    "http_server_config: yes\n": "http_server_config must be a mapping, not a boolean",
    "rate_limit: [1]\n": "rate_limit must be a mapping, not a list",
    "tls_server_config:\n  cert_file: [a]\n  key_file: k\n": "tls_server_config.cert_file must be a string, not a list",
    "tls_server_config:\n  cert_file: c\n  key_file: {a: 1}\n": "tls_server_config.key_file must be a string, not a mapping",
    "CERT  client_allowed_sans: good.example\n": "tls_server_config.client_allowed_sans must be a list of strings",
    "CERT  cipher_suites: [1]\n": "tls_server_config.cipher_suites must be a list of strings",
    "CERT  prefer_server_cipher_suites: 'yes'\n": "tls_server_config.prefer_server_cipher_suites must be true or false",
    "http_server_config:\n  headers: [X-Frame-Options]\n": "http_server_config.headers must be a mapping, not a list",
    "http_server_config:\n  http2: 'no'\n": "http_server_config.http2 must be true or false, not a string",
    "basic_auth_users:\n  alice: [x]\n": "the hash of user 'alice' must be a string, not a list",
    "basic_auth_users:\n  yes: x\n": "user name True is not a string (quote it)",
    # unknown keys
    "tls_config: {}\n": "unknown key tls_config (known: tls_server_config, http_server_config, basic_auth_users, "
                        "rate_limit)",
    "CERT  ciphers: [x]\n": "unknown key ciphers in tls_server_config",
    "http_server_config:\n  http3: true\n": "unknown key http3 in http_server_config",
    "rate_limit:\n  interval: 1s\n  burst: 1\n  jitter: 1\n": "unknown key jitter in rate_limit",
    # values that cannot be honoured, or make no sense
    "CERT  client_auth_type: RequestClientCert\n": "client_auth_type RequestClientCert (an unverified client "
                                                   "certificate) is not supported",
    "CERT  client_auth_type: RequireAnyClientCert\n": "client_auth_type RequireAnyClientCert (an unverified client "
                                                      "certificate) is not supported",
    "CERT  client_auth_type: Whatever\n": "client_auth_type must be one of NoClientCert, VerifyClientCertIfGiven, "
                                          "RequireAndVerifyClientCert, not 'Whatever'",
    "CERT  client_ca_file: ca.crt\n": "a client CA is configured without a client_auth_type",
    "CERT  client_auth_type: RequireAndVerifyClientCert\n": "client_auth_type RequireAndVerifyClientCert needs "
                                                            "client_ca_file",
    "CERT  client_allowed_sans: [a]\n": "client_allowed_sans needs client_auth_type RequireAndVerifyClientCert",
    "CERT  min_version: TLS14\n": "min_version must be one of TLS10, TLS11, TLS12, TLS13, not 'TLS14'",
    "CERT  min_version: TLS13\n  max_version: TLS12\n": "min_version is above max_version",
    "CERT  cipher_suites: [TLS_RSA_WITH_RC4_128_SHA]\n": "unknown or insecure suite 'TLS_RSA_WITH_RC4_128_SHA'",
    "CERT  cipher_suites: [TLS_AES_128_GCM_SHA256]\n": "TLS_AES_128_GCM_SHA256 is a TLS 1.3 suite",
    "CERT  curve_preferences: [CurveP999]\n": "unknown curve 'CurveP999'",
    "CERT  curve_preferences: [X25519, CurveP256]\n": "only one curve can be set here (got 2)",
    "tls_server_config:\n  min_version: TLS13\n": "tls_server_config needs cert_file (or cert) and key_file (or key)",
    "CERT  cert: inline\n": "set cert or cert_file, not both",
    "http_server_config:\n  http2: true\n": "http2: true is not supported: this exporter serves HTTP/1.1 only",
    "http_server_config:\n  headers:\n    Server: x\n": "headers: 'Server' cannot be configured",
    "http_server_config:\n  headers:\n    X-Frame-Options: allow\n": "X-Frame-Options must be one of deny, "
                                                                     "sameorigin, not 'allow'",
    "rate_limit:\n  interval: fast\n  burst: 1\n": "rate_limit.interval must be a duration such as 100ms or 1s",
    "rate_limit:\n  interval: 1s\n  burst: 0\n": "rate_limit.burst must be a whole number of at least 1",
    "rate_limit:\n  burst: 5\n": "rate_limit.burst needs rate_limit.interval",
    "a: [unclosed\n": "is not valid YAML at line 2",
}


@pytest.mark.parametrize("text", list(REFUSED))
def test_refused_with_one_line(pki: Path, tmp_path: Path, text: str) -> None:
    cfg = tmp_path / "web.yml"
    cfg.write_text(text.replace("CERT", tls(pki)))
    with pytest.raises(WebConfigError) as err:
        load(str(cfg))
    message = str(err.value)
    assert message.startswith(f"web config {cfg}") and REFUSED[text] in message and "\n" not in message


@pytest.mark.parametrize("text", ["tls_server_config: [a]\n", "basic_auth_users:\n  alice: [x]\n",
                                  "http_server_config:\n  http2: true\n"])
def test_serve_stops_with_one_line_and_no_traceback(tmp_path: Path, text: str) -> None:
    cfg = tmp_path / "web.yml"
    cfg.write_text(text)
    out = subprocess.run([EXE, "serve", "--web.config.file", str(cfg), "--web.listen-address", "127.0.0.1:0"],
                         capture_output=True, text=True, timeout=30)
    assert out.returncode == 1 and len(out.stderr.splitlines()) == 1, out.stderr
    (message,) = log_messages(out.stderr, "error")
    assert message.startswith(f"web config {cfg}: ") and REFUSED[text] in message


def test_accepted_without_effect_on_plain_http(tmp_path: Path) -> None:
    """Empty sections and switched-off options load: nothing an operator wrote is dropped."""
    cfg = tmp_path / "web.yml"
    cfg.write_text("tls_server_config: {}\nhttp_server_config:\n  http2: false\n  headers: {}\n"
                   "basic_auth_users: {}\nrate_limit:\n  interval: 0\n")
    loaded = load(str(cfg))
    assert loaded.ssl_context is None and loaded.users == {} and loaded.rate_limit is None and loaded.headers == {}


def test_a_web_config_that_is_not_a_bounded_regular_file_is_refused_at_once(tmp_path):
    """A FIFO would hang the start (and a SIGHUP reload); /dev/zero-like content would fill memory."""
    import os

    from passthrough_exporter.serving.webconfig import WEB_CONFIG_LIMIT, WebConfigError, load

    fifo = tmp_path / "web.yml"
    os.mkfifo(fifo)
    with pytest.raises(WebConfigError, match="not a regular file"):
        load(str(fifo))
    big = tmp_path / "big.yml"
    with open(big, "wb") as f:
        f.truncate(WEB_CONFIG_LIMIT + 1)  # sparse: costs no disk
    with pytest.raises(WebConfigError, match="at most"):
        load(str(big))


def test_a_web_config_nested_too_deeply_or_naming_a_fifo_is_one_line(tmp_path):
    import os

    from passthrough_exporter.serving.webconfig import WebConfigError, load

    deep = tmp_path / "deep.yml"
    deep.write_text("a: " + "[" * 100_000)
    with pytest.raises(WebConfigError, match="nested too deeply"):
        load(str(deep))
    os.mkfifo(tmp_path / "cert.pem")
    cfg = tmp_path / "web.yml"
    cfg.write_text("tls_server_config:\n  cert_file: cert.pem\n  key_file: cert.pem\n")
    with pytest.raises(WebConfigError, match="cert_file .*: not a regular file"):
        load(str(cfg))
