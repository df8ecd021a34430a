"""Where a model comes from (a local folder, the kit's shipped configs, the Hub) and whether the Hub can be used now.
Standard library only at import: the parameter checks use it before the pinned packages are installed."""

from __future__ import annotations

import importlib
import logging
import os
import re
import socket
import ssl
import threading
import time
from contextlib import contextmanager, suppress
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import unquote, urlparse

from . import folders
from .env import truthy
from .errors import (
    GatedModelError,
    HubRequestError,
    InvalidParameterError,
    KitError,
    LocalPathNotFoundError,
    ModelNotCachedOfflineError,
    redact,
)

SHIPPED = Path(__file__).resolve().parent / "architectures"  # its package imports torch: only for a shipped id

# --- can the Hub be reached: one HTTPS request (any HTTP answer counts), in a thread with a deadline (captive portals)
PROBE_TIMEOUT_S = 8.0  # per phase (connect, TLS, answer); the whole probe is cut at PROBE_TIMEOUT_S + 2
FAILURE_TTL_S = 60.0  # a failure is asked again after this: the user may have fixed the portal or the proxy
LONGEST_RATE_LIMIT_WAIT_S = 30.0  # huggingface_hub sleeps out any Retry-After, logging at most a warning
_ANSWERS: dict[tuple[str, float], tuple[float, HubProbe]] = {}  # (endpoint, timeout) -> (when asked, verdict)

FIXES = {
    "dns": "the name could not be resolved: check the network, or HF_ENDPOINT if you set it",
    "refused": "nothing listens there: check HF_ENDPOINT, or your proxy settings (HTTPS_PROXY)",
    "timeout": "a connection was accepted but nothing answered (a captive portal, a stalled proxy or firewall): log in "
               "to the network's portal, or fix HTTPS_PROXY / NO_PROXY",
    "tls": "the TLS handshake failed (often a proxy that intercepts HTTPS with its own certificate): point "
           "SSL_CERT_FILE at your organisation's CA bundle, or use a mirror with HF_ENDPOINT",
    "proxy": "the proxy refused the request: check HTTPS_PROXY / NO_PROXY",
    "offline": "it read HF_HUB_OFFLINE or TRANSFORMERS_OFFLINE when it was imported: unset them and restart the kernel",
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
            return f"{redact(self.endpoint)} answered in {self.seconds:.1f} s"
        cache_only = "" if self.problem == "offline" else " To work from the local cache only, set HF_HUB_OFFLINE=1."
        return redact(f"{self.endpoint} cannot be reached ({self.problem}: {self.detail}, after {self.seconds:.1f} s): "
                      f"{FIXES[self.problem]}.{cache_only}")


def _chain(error: BaseException | None) -> list[BaseException]:
    found = []
    while error is not None and error not in found and len(found) < 10:
        found.append(error)
        error = error.__cause__ or error.__context__
    return found


def _http_library():
    """The HTTP library of huggingface_hub's session: httpx (huggingface_hub 1.x) or httpx2 (2.x); Colab has both."""
    from huggingface_hub.utils import get_session
    return importlib.import_module(type(get_session()).__module__.split(".")[0])


def _classify(error: BaseException) -> tuple[str, str]:
    """(problem, detail) from an httpx exception and the OS or TLS error behind it."""
    httpx2, chain = _http_library(), _chain(error)[:8]
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


def probe(endpoint: str, timeout: float = PROBE_TIMEOUT_S) -> HubProbe:
    """Whether `endpoint` answers one HEAD request; a success is kept for the session, a failure for FAILURE_TTL_S."""
    if (key := (endpoint, timeout)) in _ANSWERS:
        asked, verdict = _ANSWERS[key]
        if verdict.ok or time.monotonic() - asked < FAILURE_TTL_S:
            return verdict
    from huggingface_hub.utils import get_session
    outcome: dict = {}

    def attempt() -> None:
        try:
            get_session().request("HEAD", endpoint.rstrip("/") + "/api/models",
                                  timeout=_http_library().Timeout(timeout), follow_redirects=False)
            outcome["ok"] = True
        except Exception as error:  # noqa: BLE001 - every failure is classified and reported, none is hidden
            outcome["error"] = error
    start = time.monotonic()
    (worker := threading.Thread(target=attempt, name="kit-hub-probe", daemon=True)).start()
    worker.join(timeout + 2)
    seconds = time.monotonic() - start
    if not outcome:  # no answer at all: a lookup still pending after 0.5 s tells a hung resolver from a hung server
        resolved = threading.Event()

        def lookup() -> None:
            with suppress(OSError):
                socket.getaddrinfo(urlparse(endpoint).hostname, 443)
            resolved.set()
        threading.Thread(target=lookup, daemon=True).start()
        outcome["hung"] = "timeout" if resolved.wait(0.5) else "dns"
    problem = () if outcome.get("ok") else _classify(outcome["error"]) if "error" in outcome else (
        outcome["hung"], f"no answer within {timeout + 2:.0f} s")
    _ANSWERS[key] = (start, HubProbe(endpoint, not problem, seconds, *problem))
    return _ANSWERS[key][1]


def hub_reachable() -> bool:
    from huggingface_hub import constants
    return probe(constants.ENDPOINT).ok


hub_reachable.cache_clear = probe.cache_clear = _ANSWERS.clear  # tests and long sessions can ask again


def offline_by_setting() -> bool:
    """HF_HUB_OFFLINE (or, as huggingface_hub reads it, TRANSFORMERS_OFFLINE when HF_HUB_OFFLINE is unset)."""
    return truthy(os.environ.get("HF_HUB_OFFLINE") or os.environ.get("TRANSFORMERS_OFFLINE"))


def hub_offline() -> bool:
    return offline_by_setting() or not hub_reachable()


def offline_reason() -> str:
    """Why the kit treats the Hub as unavailable: HF_HUB_OFFLINE, or what the probe found (with the fix)."""
    if offline_by_setting():
        return "HF_HUB_OFFLINE (or TRANSFORMERS_OFFLINE) is set"
    from huggingface_hub import constants
    return probe(constants.ENDPOINT).explain()


# --- a refused or failed Hub request: gated or private repositories, bad tokens, server errors, cut downloads ---
def _token_state() -> str:
    from huggingface_hub import get_token
    return "a Hugging Face token was sent" if get_token() is not None else "no Hugging Face token was found"


def gated_message(repo_id: str, status: int | None, gated: bool, repo_type: str = "model") -> str:
    """What to do about a refused download: the licence page, HF_TOKEN, `hf auth login`. Never the token."""
    from huggingface_hub import constants
    page = redact(f"{constants.ENDPOINT.rstrip('/')}/{'' if repo_type == 'model' else f'{repo_type}s/'}{repo_id}")
    what = "is gated" if gated else "refused access"
    return (f"{repo_id!r} {what} (HTTP {status or '401/403'}; {_token_state()}); nothing was downloaded. To download "
            f"it:\n  1. Open {page} while logged in and accept the licence (access can take a while to be granted).\n"
            "  2. Give the kernel a token with read access (https://huggingface.co/settings/tokens): set the HF_TOKEN "
            "environment variable (Colab: the key icon > Secrets > HF_TOKEN, with notebook access on), or run `hf auth "
            "login` in a terminal.\n  3. Restart the kernel and run again. Never paste the token into a notebook cell. "
            "Or pick a model that is not gated.")


def _where(error: BaseException) -> tuple[str, str]:
    """(host, file) of the request behind a Hub error, for a one-line message."""
    try:
        response = getattr(error, "response", None)
        url = response.request.url if response is not None else error.request.url
    except (AttributeError, RuntimeError):  # httpx raises RuntimeError for an error without its request
        return "the Hub", "a file"
    path = unquote(url.path)
    if "/resolve/" in path:
        repo, rest = path.strip("/").split("/resolve/", 1)
        path = f"{repo}/{rest.split('/', 1)[-1]}"
    return redact(f"{url.host}:{url.port}" if url.port else url.host), path.strip("/")


def _refusal(error: BaseException, repo_id: str, repo_type: str) -> KitError | None:
    """GatedModelError for a gated repo or a 403 anywhere in the chain (a not gated RepositoryNotFoundError passes);
    else a one-line HubRequestError (what, where, the fix) for a 401, a 429, a 5xx or a cut download; else None."""
    from huggingface_hub.errors import GatedRepoError, HfHubHTTPError, RepositoryNotFoundError
    httpx2, chain = _http_library(), _chain(error)
    for cause in chain:
        status = getattr(getattr(cause, "response", None), "status_code", None)
        gated, plain = isinstance(cause, GatedRepoError), not isinstance(cause, RepositoryNotFoundError)
        if gated or (status == 403 and plain and isinstance(cause, HfHubHTTPError)):
            return GatedModelError(gated_message(repo_id, status, gated, repo_type))
    for cause in chain:
        status = getattr(getattr(cause, "response", None), "status_code", None)
        if isinstance(cause, HfHubHTTPError) and not isinstance(cause, RepositoryNotFoundError) and status:
            host, file = _where(cause)
            if status == 401:
                why = "the token is not valid" if (state := _token_state()).startswith("a ") else "it asks for a token"
                return HubRequestError(f"The Hub at {host} refused {file} (HTTP 401; {state}): {why}. Fix: make a "
                                       "read token at https://huggingface.co/settings/tokens, set HF_TOKEN (or run "
                                       "`hf auth login`) and restart the kernel.")
            if status == 429:
                wait = cause.response.headers.get("Retry-After")
                return HubRequestError(f"The Hub at {host} rate-limited {file} (HTTP 429"
                                       f"{f', retry after {wait} s' if wait else ''}). Fix: wait and run again; "
                                       "logged-in requests (HF_TOKEN) get a higher limit.")
            if status >= 500:
                return HubRequestError(f"The Hub at {host} failed on {file} (HTTP {status}: a server error, not your "
                                       "setup). Fix: run again in a few minutes (https://status.huggingface.co), or "
                                       "use a mirror (HF_ENDPOINT).")
        if isinstance(cause, httpx2.RemoteProtocolError):
            host, file = _where(cause)
            return HubRequestError(f"The download of {file} from {host} was cut ({str(cause).splitlines()[0]}). "
                                   "Fix: run again; huggingface_hub resumes what it has.")
    return None


@contextmanager
def hub_access(repo_id: str, repo_type: str = "model"):
    """Re-raise a gated or private repo's 401/403 as GatedModelError, and a refused token, a rate limit, a server error
    or a cut download as a one-line HubRequestError; a long Retry-After is refused. The rest (a missing file) passes."""
    target = logging.getLogger("huggingface_hub.utils._http")
    previous, shown_from = target.level, target.getEffectiveLevel()

    def guard(record: logging.LogRecord) -> bool:  # stops the retry loop before it sleeps; shows what it showed
        found = re.match(r"Rate limited\. Waiting ([\d.]+)s", record.getMessage())
        if found and float(found[1]) > LONGEST_RATE_LIMIT_WAIT_S:
            raise HubRequestError(f"The Hub rate-limited a request and asks to wait {float(found[1]):.0f} s (HTTP 429, "
                                  f"Retry-After); the kit does not wait more than {LONGEST_RATE_LIMIT_WAIT_S:.0f} s "
                                  "unseen. Fix: run again later; logged-in requests (HF_TOKEN) get a higher limit.")
        return record.levelno >= shown_from
    target.addFilter(guard)
    target.setLevel(min(shown_from, logging.WARNING))
    try:
        yield
    except Exception as error:
        if (refusal := _refusal(error, repo_id, repo_type)) is None:
            raise
        raise refusal from None
    finally:
        target.removeFilter(guard)
        target.setLevel(previous)


def refuse_mismatches(repo_id: str, folder: str, checked) -> str:
    """After huggingface_hub's `verify_repo_checksums` of `folder` (what `snapshot_download` returned): a file whose
    sha256 (git-sha1 for small files) differs from the Hub's is deleted, with its cache blob, and refused."""
    root = Path(folder)
    for bad in checked.mismatches:
        (root / bad["path"]).resolve().unlink(missing_ok=True)  # the cache blob (or the local_dir file) ...
        (root / bad["path"]).unlink(missing_ok=True)  # ... and the snapshot's link to it
    if checked.mismatches:
        shown = ", ".join(f"{bad['path']} ({bad['algorithm']} {bad['actual'][:12]}..., the Hub says "
                          f"{bad['expected'][:12]}...)" for bad in checked.mismatches)
        raise HubRequestError(f"{repo_id}: {shown} did not arrive as the Hub has it; deleted. Fix: run the cell "
                              "again, the file downloads again (if it keeps happening, a proxy or the network "
                              "alters it).")
    return f"checksums: {checked.checked_count} files of {repo_id} match the Hub's"


# --- where a model comes from ------------------------------------------------------------------------------------
def _looks_like_local_path(model_id: str) -> bool:
    return (model_id.startswith((".", "/", "~")) or "\\" in model_id or model_id.count("/") > 1
            or Path(model_id).suffix in (".json", ".safetensors", ".ckpt", ".bin", ".py")
            or ("/" in model_id and Path(model_id).parent.is_dir()))


def is_hub_id(model_id) -> bool:
    """Whether resolving `model_id` would consult huggingface_hub: not an existing folder nor a local-looking path."""
    model_id = os.fspath(model_id) if isinstance(model_id, os.PathLike) else model_id
    return (isinstance(model_id, str) and bool(model_id.strip()) and not Path(model_id).expanduser().is_dir()
            and not _looks_like_local_path(model_id))


def cached_file(repo_id: str, filename: str, revision: str | None = None) -> str | None:
    from huggingface_hub import try_to_load_from_cache
    from huggingface_hub.utils import HFValidationError
    try:
        found = try_to_load_from_cache(repo_id, filename, revision=revision)
    except HFValidationError:
        return None  # not a repo id: resolve_model_source says why
    return found if isinstance(found, str) else None


def resolve_model_source(model_id: str, revision: str | None = None, subfolder: str = "") -> str:
    """A local folder (checked to hold a model) or a Hub id (checked to be usable now): a missing local path is an
    error (diffusers sends it to the Hub), an uncached Hub id offline fails at once instead of after retries."""
    model_id = os.fspath(model_id) if isinstance(model_id, os.PathLike) else model_id
    if not isinstance(model_id, str) or not model_id.strip():
        raise InvalidParameterError("model_id", model_id, "give a Hub id like 'Qwen/Qwen-Image' or a local folder")
    path = Path(model_id).expanduser()
    if path.is_dir():
        if not any((path / subfolder / name).is_file() for name in ("model_index.json", "config.json")):
            raise LocalPathNotFoundError("the local folder has no model_index.json (pipeline) or config.json (model)",
                                         name="model_id", value=model_id,
                                         fix="Point it at the folder that save_pretrained or snapshot_download wrote.")
        return str(path.resolve())
    if _looks_like_local_path(model_id):
        raise LocalPathNotFoundError(
            f"the local path does not exist (resolved to {str(path.resolve())!r})", name="model_id", value=model_id,
            fix="Check the path; diffusers would have sent it to the Hub as a repo id. Hub ids look like 'org/name'.")
    from huggingface_hub.utils import HFValidationError, validate_repo_id
    try:
        validate_repo_id(model_id)
    except HFValidationError as error:
        raise InvalidParameterError("model_id", model_id, "not a valid Hub id or existing folder", str(error)) from None
    candidates = ("model_index.json", "config.json", f"{subfolder}/config.json" if subfolder else "config.json")
    if not any(cached_file(model_id, name, revision) for name in candidates) and hub_offline():
        raise ModelNotCachedOfflineError(
            f"it is not in the local Hub cache and the Hub cannot be used: {offline_reason()}", name="model_id",
            value=model_id, fix="Fix: download it once while online (huggingface_hub.snapshot_download), or pass the "
            "local folder that holds it. To see first whether it fits, run with plan_only=True (plans from configs, "
            "downloads nothing).")
    return model_id


def fetch_file(source: str, filename: str, revision: str | None = None) -> Path:
    """`filename` in the folder `source`, or downloaded from the Hub repo `source` (offline: from the cache)."""
    if Path(source).is_dir():
        return Path(source) / filename
    from huggingface_hub import hf_hub_download
    with hub_access(source):
        return Path(hf_hub_download(source, filename, revision=revision, local_files_only=hub_offline()))


def read_model_index(source: str, revision: str | None = None, *, prefer_shipped: bool = False) -> dict:
    """The pipeline's model_index.json: a local folder's; for a Hub id the cached copy, else the Hub's, else offline the
    kit's shipped copy. prefer_shipped: the shipped copy answers first, without a request."""
    source = os.fspath(source) if isinstance(source, os.PathLike) else source
    if is_hub_id(source):
        shipped = revision is None and (SHIPPED / source.replace("/", "--", 1) / "model_index.json").is_file()
        if cached := None if shipped and prefer_shipped else cached_file(source, "model_index.json", revision):
            return folders.read_json_object(Path(cached))
        if shipped and (prefer_shipped or hub_offline()):
            from . import architectures
            return architectures.model_index(source)
    source = resolve_model_source(source, revision)  # the kit's clear error for missing or uncached sources
    if not (index := fetch_file(source, "model_index.json", revision)).is_file():
        raise LocalPathNotFoundError(f"{str(index)!r} not found: {source!r} is a model folder, not a pipeline.")
    return folders.read_json_object(index)


# --- which files a pipeline download fetches: not the formats and variants from_pretrained skips (ONNX, Flax, fp16)
SKIPPED_FILES = ["*.bin", "*.ckpt", "*.msgpack", "*.onnx", "*.onnx_data", "*.pb", "*.h5", "*.xml", "*.fp16.*", "*.pt"]


def pipeline_file_patterns(model_index: dict) -> dict[str, list[str]]:
    """`allow_patterns`/`ignore_patterns` for `snapshot_download` of exactly the pipeline's components."""
    components = [name for name, spec in model_index.items() if not name.startswith("_") and isinstance(spec, list)]
    allow = ["model_index.json", "*.py", *(f"{name}/*" for name in components)]
    return {"allow_patterns": allow, "ignore_patterns": SKIPPED_FILES}


def repo_files(repo_id: str, revision: str | None = None) -> dict[str, int]:
    """{filename: bytes} of a Hub repo: its file metadata (one request), or offline the cached snapshot's files."""
    if hub_offline():
        if (index := cached_file(repo_id, "model_index.json", revision)) is None:
            raise ModelNotCachedOfflineError(f"its file list is not in the local Hub cache: {offline_reason()}",
                                         name="model_id", value=repo_id, fix="Download it once while online.")
        snapshot = Path(index).parent
        return {p.relative_to(snapshot).as_posix(): p.stat().st_size for p in snapshot.rglob("*") if p.is_file()}
    from huggingface_hub import HfApi, constants
    with hub_access(repo_id):
        info = HfApi(endpoint=constants.ENDPOINT).model_info(repo_id, revision=revision, files_metadata=True)
    return {sibling.rfilename: sibling.size or 0 for sibling in info.siblings or []}


def _patterns(model_index: dict, files, variant: str | None) -> dict[str, list[str]]:
    """With a variant, diffusers' own selection: the variant's weights where a component has them, else its default."""
    if variant is None:
        return pipeline_file_patterns(model_index)
    from diffusers.pipelines.pipeline_loading_utils import variant_compatible_siblings
    other_formats = [p for p in SKIPPED_FILES if p != "*.fp16.*"]
    try:
        usable, _ = variant_compatible_siblings(set(files), variant=variant, ignore_patterns=other_formats)
    except ValueError:  # diffusers' from_pretrained(variant=) fails the same way
        raise InvalidParameterError("variant", variant, "the repository has no weight files of this variant",
                                    "Load without a variant (variant=None): its default weights.") from None
    unused = sorted({f for f in files if ".safetensors" in f or ".bin" in f} - usable)
    return {**pipeline_file_patterns(model_index), "ignore_patterns": other_formats + unused}


def snapshot_patterns(repo_id: str, variant: str | None = None, revision: str | None = None) -> dict[str, list[str]]:
    """`snapshot_download` patterns for exactly what `from_pretrained(repo_id, variant=variant)` loads."""
    return _patterns(read_model_index(repo_id, revision), repo_files(repo_id, revision) if variant else (), variant)


def weight_files(repo_id: str, variant: str | None = None, revision: str | None = None) -> dict[str, int]:
    """{repo filename: bytes} of exactly the files `snapshot_patterns(repo_id, variant)` downloads."""
    from huggingface_hub.utils import filter_repo_objects
    files = repo_files(repo_id, revision)
    patterns = _patterns(read_model_index(repo_id, revision), files, variant)
    return {name: files[name] for name in filter_repo_objects(sorted(files), **patterns)}
