"""Can this process reach the Hub right now, and if not, why: one bounded HTTPS request, DNS included.

A TCP connect is not enough: a captive portal or a stalled proxy accepts the connection and never
answers, and huggingface_hub then retries for minutes. So the probe sends a real request through
huggingface_hub's own HTTP client (its proxies and CA settings), in a thread with a hard deadline,
because a DNS lookup is not bounded by any socket timeout. Any HTTP answer counts as reachable.
"""

from __future__ import annotations

import ssl
import threading
import time
from dataclasses import dataclass
from urllib.parse import urlparse

PROBE_TIMEOUT_S = 8.0  # per phase (connect, TLS, answer); the whole probe is cut at PROBE_TIMEOUT_S + 2

FIXES = {
    "dns": "the name could not be resolved: check the network, or HF_ENDPOINT if you set it",
    "refused": "nothing listens there: check HF_ENDPOINT, or your proxy settings (HTTPS_PROXY)",
    "timeout": "a connection was accepted but nothing answered (a captive portal, a stalled proxy or firewall): "
               "log in to the network's portal, or fix HTTPS_PROXY / NO_PROXY",
    "tls": "the TLS handshake failed (often a proxy that intercepts HTTPS with its own certificate): point "
           "SSL_CERT_FILE at your organisation's CA bundle, or use a mirror with HF_ENDPOINT",
    "proxy": "the proxy refused the request: check HTTPS_PROXY / NO_PROXY",
    "offline": "it read HF_HUB_OFFLINE or TRANSFORMERS_OFFLINE when it was imported: unset them and restart the "
               "kernel to go online",
    "other": "check the network",
}


@dataclass(frozen=True)
class HubProbe:
    """The probe's verdict: `ok`, or which step failed (`problem`, a key of FIXES) and what was said."""

    endpoint: str
    ok: bool
    seconds: float
    problem: str = ""
    detail: str = ""

    def explain(self) -> str:
        """One sentence for an error message: what failed, how long it took, and what to do."""
        if self.ok:
            return f"{self.endpoint} answered in {self.seconds:.1f} s"
        cache_only = "" if self.problem == "offline" else " To work from the local cache only, set HF_HUB_OFFLINE=1."
        return (f"{self.endpoint} cannot be reached ({self.problem}: {self.detail}, after {self.seconds:.1f} s): "
                f"{FIXES[self.problem]}.{cache_only}")


def _http_library():
    """The HTTP library of huggingface_hub's session: httpx (huggingface_hub 1.x) or httpx2 (2.x); Colab has both."""
    import importlib

    from huggingface_hub.utils import get_session

    return importlib.import_module(type(get_session()).__module__.split(".")[0])


def _classify(error: BaseException) -> tuple[str, str]:
    """(problem, detail) from an httpx exception and the OS or TLS error behind it."""
    httpx2 = _http_library()

    chain, cause = [], error
    while cause is not None and len(chain) < 8:
        chain.append(cause)
        cause = cause.__cause__ or cause.__context__
    text = "; ".join(dict.fromkeys(str(e) for e in chain if str(e))) or type(error).__name__
    detail = text.splitlines()[0][:200]
    if any(isinstance(e, ssl.SSLError) for e in chain) or any(k in text for k in ("SSL", "TLS", "certificate")):
        return "tls", detail
    if type(error).__name__ == "OfflineModeIsEnabled":
        return "offline", "huggingface_hub is in offline mode"
    if isinstance(error, httpx2.ProxyError):
        return "proxy", detail
    if any(k in text for k in ("Name or service not known", "getaddrinfo", "nodename nor servname",
                               "Temporary failure in name resolution", "No address associated")):
        return "dns", detail
    if isinstance(error, httpx2.TimeoutException) or any(isinstance(e, TimeoutError) for e in chain):
        return "timeout", detail
    if any(isinstance(e, ConnectionRefusedError) for e in chain) or "Connection refused" in text:
        return "refused", detail
    return "other", detail


def _request(endpoint: str, timeout: float) -> None:
    from huggingface_hub.utils import get_session

    httpx2 = _http_library()

    get_session().request("HEAD", endpoint.rstrip("/") + "/api/models", timeout=httpx2.Timeout(timeout),
                          follow_redirects=False)


_ANSWERS: dict[tuple[str, float], tuple[float, HubProbe]] = {}
FAILURE_TTL_S = 60.0  # a failure is asked again after this: the user may have fixed the portal or the proxy


def probe(endpoint: str, timeout: float = PROBE_TIMEOUT_S) -> HubProbe:
    """Whether `endpoint` answers one HEAD request; a success is remembered for the session, a failure
    for FAILURE_TTL_S (probe.cache_clear() forgets both)."""
    key = (endpoint, timeout)
    if key in _ANSWERS:
        asked, verdict = _ANSWERS[key]
        if verdict.ok or time.monotonic() - asked < FAILURE_TTL_S:
            return verdict
    _ANSWERS[key] = (time.monotonic(), _probe(endpoint, timeout))
    return _ANSWERS[key][1]


probe.cache_clear = _ANSWERS.clear


def _probe(endpoint: str, timeout: float) -> HubProbe:
    outcome: dict = {}

    def attempt() -> None:
        try:
            _request(endpoint, timeout)
            outcome["ok"] = True
        except Exception as error:  # noqa: BLE001 - every failure is classified and reported, none is hidden
            outcome["error"] = error

    start = time.monotonic()
    worker = threading.Thread(target=attempt, name="kit-hub-probe", daemon=True)
    worker.start()
    worker.join(timeout + 2)
    seconds = time.monotonic() - start
    if outcome.get("ok"):
        return HubProbe(endpoint, True, seconds)
    if "error" in outcome:
        return HubProbe(endpoint, False, seconds, *_classify(outcome["error"]))
    host = urlparse(endpoint).hostname
    return HubProbe(endpoint, False, seconds, "dns" if _dns_hangs(host) else "timeout",
                    f"no answer within {timeout + 2:.0f} s")


def _dns_hangs(host: str | None, wait: float = 0.5) -> bool:
    """Whether a lookup of `host` is still pending after `wait` s (it tells a hung resolver from a hung server)."""
    import socket

    done = threading.Event()

    def lookup() -> None:
        try:
            socket.getaddrinfo(host, 443)
        except OSError:
            pass
        done.set()

    threading.Thread(target=lookup, daemon=True).start()
    return not done.wait(wait)
