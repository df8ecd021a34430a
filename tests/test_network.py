"""The Hub probe against hostile stand-ins on 127.0.0.1: each failure is bounded in time and named."""

from __future__ import annotations

import socket
import ssl
import subprocess
import time

import pytest

from helpers import hub
from helpers.errors import ModelNotCachedOfflineError
from tools.hostile import free_port, listener

BOUND_S = hub.PROBE_TIMEOUT_S + 3  # the probe's hard deadline, plus thread start-up


@pytest.fixture(autouse=True)
def fresh_probe(monkeypatch):
    for name in ("HF_HUB_OFFLINE", "HTTPS_PROXY", "https_proxy", "HTTP_PROXY", "http_proxy", "ALL_PROXY"):
        monkeypatch.delenv(name, raising=False)
    # huggingface_hub read HF_HUB_OFFLINE when it was imported (CI sets it): these tests are an online kernel.
    monkeypatch.setattr("huggingface_hub.constants.HF_HUB_OFFLINE", False)
    hub.probe.cache_clear()
    yield
    hub.probe.cache_clear()


SHORT_S = 1.0  # the probe's per-phase timeout in these tests (the default is checked in the last one)


def timed_probe(endpoint: str) -> hub.HubProbe:
    start = time.monotonic()
    verdict = hub.probe(endpoint, SHORT_S)
    assert time.monotonic() - start < SHORT_S + 3  # the hard deadline (timeout + 2), plus thread start-up
    return verdict


def test_an_endpoint_that_accepts_and_never_answers_is_a_timeout_within_the_bound():
    with listener() as port:
        verdict = timed_probe(f"http://127.0.0.1:{port}")
    assert not verdict.ok and verdict.problem == "timeout"
    assert "captive portal" in verdict.explain() and "HF_HUB_OFFLINE=1" in verdict.explain()


def test_a_half_open_https_endpoint_is_a_timeout_not_a_hang():
    with listener() as port:
        verdict = timed_probe(f"https://127.0.0.1:{port}")
    assert not verdict.ok and verdict.problem in ("timeout", "tls"), verdict


@pytest.fixture(scope="module")
def self_signed(tmp_path_factory):
    folder = tmp_path_factory.mktemp("tls")
    subprocess.run(["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-subj", "/CN=127.0.0.1",
                    "-days", "1", "-keyout", folder / "key.pem", "-out", folder / "cert.pem"],
                   check=True, capture_output=True)
    return folder / "cert.pem", folder / "key.pem"


def test_a_tls_intercepting_endpoint_is_named_as_a_tls_failure(self_signed):
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(*self_signed)

    def serve(connection):
        try:
            with context.wrap_socket(connection, server_side=True) as tls:
                tls.recv(1024)
                tls.sendall(b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n")
        except (OSError, ssl.SSLError):
            pass  # the client refuses the certificate: that is the point

    with listener(serve=serve) as port:
        verdict = timed_probe(f"https://127.0.0.1:{port}")
    assert not verdict.ok and verdict.problem == "tls", verdict
    assert "SSL_CERT_FILE" in verdict.explain() and "certificate" in verdict.detail.lower()


def test_plain_http_spoken_on_the_https_port_is_a_tls_failure():
    with listener("plain-http") as port:
        verdict = timed_probe(f"https://127.0.0.1:{port}")
    assert not verdict.ok and verdict.problem == "tls", verdict


def test_a_closed_port_is_refused_at_once():
    verdict = timed_probe(f"http://127.0.0.1:{free_port()}")
    assert not verdict.ok and verdict.problem == "refused" and verdict.seconds < 3


def test_an_unresolvable_name_is_a_dns_failure():
    verdict = timed_probe("https://kit-probe.invalid")
    assert not verdict.ok and verdict.problem in ("dns", "timeout"), verdict
    assert verdict.problem == "dns" or "no answer" in verdict.detail


def test_a_hung_dns_lookup_is_cut_at_the_deadline(monkeypatch):
    """getaddrinfo has no timeout of its own; a resolver that never answers must not hang the kernel."""
    real = socket.getaddrinfo

    def hung(host, *args, **kwargs):
        if host == "kit-hung.example":
            time.sleep(60)
        return real(host, *args, **kwargs)

    monkeypatch.setattr(socket, "getaddrinfo", hung)
    verdict = timed_probe("https://kit-hung.example")
    assert not verdict.ok and verdict.problem == "dns", verdict


def test_a_stalled_proxy_is_bounded(monkeypatch):
    with listener() as port:
        monkeypatch.setenv("HTTPS_PROXY", f"http://127.0.0.1:{port}")
        monkeypatch.setenv("HTTP_PROXY", f"http://127.0.0.1:{port}")
        monkeypatch.setattr("huggingface_hub.utils._http._GLOBAL_CLIENT", None)  # proxies are read at creation
        verdict = timed_probe("https://kit-proxied.example")
    assert not verdict.ok and verdict.problem in ("timeout", "proxy"), verdict


def test_any_http_answer_counts_as_reachable():
    def serve(connection):
        connection.recv(1024)
        connection.sendall(b"HTTP/1.1 404 Not Found\r\nContent-Length: 0\r\n\r\n")

    with listener(serve=serve) as port:
        verdict = timed_probe(f"http://127.0.0.1:{port}")
    assert verdict.ok, verdict


def test_an_uncached_hub_id_behind_a_stalled_endpoint_fails_fast_naming_the_cause(monkeypatch, tmp_path):
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path))
    with listener() as port:
        monkeypatch.setattr("huggingface_hub.constants.ENDPOINT", f"http://127.0.0.1:{port}")
        start = time.monotonic()
        with pytest.raises(ModelNotCachedOfflineError) as caught:
            hub.resolve_model_source("someone/not-cached-anywhere")
    assert time.monotonic() - start < BOUND_S
    assert "nothing answered" in str(caught.value) and "HF_HUB_OFFLINE=1" in str(caught.value)


def test_a_failure_is_asked_again_after_a_while_a_success_is_kept(monkeypatch):
    """The message tells the user to fix the portal or proxy: once fixed, the kit must see it."""
    with listener() as port:
        endpoint = f"http://127.0.0.1:{port}"
        monkeypatch.setattr(hub, "PROBE_TIMEOUT_S", 0.5)
        first = hub.probe(endpoint, 0.5)
        assert not first.ok and hub.probe(endpoint, 0.5) is first  # within the TTL: the same answer
        monkeypatch.setattr(hub, "FAILURE_TTL_S", 0.0)
        assert hub.probe(endpoint, 0.5) is not first


def test_transformers_offline_counts_as_huggingface_hub_reads_it(monkeypatch):
    monkeypatch.setenv("TRANSFORMERS_OFFLINE", "1")
    assert hub.offline_by_setting() and hub.hub_offline()
    assert "TRANSFORMERS_OFFLINE" in hub.offline_reason()
    monkeypatch.setenv("HF_HUB_OFFLINE", "0")  # huggingface_hub: HF_HUB_OFFLINE wins when it is set
    assert not hub.offline_by_setting()


def test_huggingface_hubs_own_offline_mode_is_named_with_the_restart(monkeypatch):
    """HF_HUB_OFFLINE read when huggingface_hub was imported keeps it offline for the kernel's life."""
    monkeypatch.setattr("huggingface_hub.constants.HF_HUB_OFFLINE", True)
    with listener() as port:
        verdict = timed_probe(f"http://127.0.0.1:{port}")
    assert not verdict.ok and verdict.problem == "offline" and "restart the kernel" in verdict.explain()


# --- secrets never printed (issue 22: a token inside HF_ENDPOINT was printed in the kit's own message) -----------

CANARY = "canary0123456789SECRET"


@pytest.mark.parametrize("text", [
    f"http://user:{CANARY}@127.0.0.1:8080/api", f"https://{CANARY}@mirror.example/", f"https://h/x?token={CANARY}",
    f"https://h/x?revision=main&key={CANARY}", f"https://h/x?a=1;sig={CANARY}", f"https://h/x?signature={CANARY}",
    f"https://h/x?password={CANARY}&b=2", f"https://h/x?access_token={CANARY}", f"https://h/x?X-Amz-Signature={CANARY}",
    f"the token hf_{CANARY} was set", f"Authorization: Bearer {CANARY}",
])
def test_redact_hides_each_kind_of_secret(text):
    from helpers.errors import redact

    hidden = redact(text)
    assert CANARY not in hidden and "***" in hidden


def test_redact_keeps_what_is_no_secret():
    from helpers.errors import redact

    plain = "http://127.0.0.1:8080/api/models?revision=main&recursive=true (hf_hub_download, monkey business)"
    assert redact(plain) == plain


def test_every_kit_error_message_is_redacted():
    from helpers.errors import InvalidParameterError, KitError

    error = InvalidParameterError("model_id", f"https://u:{CANARY}@h/x", f"see hf_{CANARY}", f"?token={CANARY}")
    assert CANARY not in str(error) and CANARY not in repr(error) and CANARY not in error.rule + error.fix
    assert CANARY not in str(KitError(f"HF_ENDPOINT=http://kit:{CANARY}@mirror/"))


def test_a_token_inside_hf_endpoint_is_not_printed_when_the_hub_cannot_be_reached(monkeypatch, tmp_path):
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path))
    with listener("closed") as port:
        endpoint = f"http://kit:{CANARY}@127.0.0.1:{port}/?token={CANARY}"
        monkeypatch.setattr("huggingface_hub.constants.ENDPOINT", endpoint)
        with pytest.raises(ModelNotCachedOfflineError) as caught:
            hub.resolve_model_source("someone/not-cached-anywhere")
    message = str(caught.value)
    assert f"127.0.0.1:{port}" in message and CANARY not in message
    assert CANARY not in hub.gated_message("org/gated", 401, True)
