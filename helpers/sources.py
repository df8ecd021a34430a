"""Where a model comes from: a local folder (checked) or a Hub id (checked to be usable now).

Light on purpose (no torch, no diffusers), so parameter checks run in well under a second.
"""

from __future__ import annotations

import json
import os
from contextlib import contextmanager
from pathlib import Path

from . import network
from .errors import InvalidParameterError, KitError, LocalPathNotFoundError, ModelNotCachedOfflineError
from .rules import truthy


class HubAccessRefused(KitError, PermissionError):
    """The Hub answered that this repository needs accepted terms or a token (gated or private)."""


def _looks_like_local_path(model_id: str) -> bool:
    if model_id.startswith((".", "/", "~")) or "\\" in model_id or model_id.count("/") > 1:
        return True
    if Path(model_id).suffix in (".json", ".safetensors", ".ckpt", ".bin", ".py"):
        return True
    # "models/tiny" where ./models exists is a mistyped local folder, not a Hub id.
    return "/" in model_id and Path(model_id).parent.is_dir()


def hub_probe() -> network.HubProbe:
    """Whether the Hub endpoint (HF_ENDPOINT, e.g. a mirror) answers an HTTPS request now, and if not, why.
    Asked once per endpoint; `hub_reachable.cache_clear()` asks again."""
    from huggingface_hub import constants

    return network.probe(constants.ENDPOINT)


def hub_reachable() -> bool:
    """Whether the Hub endpoint answers (see hub_probe)."""
    return hub_probe().ok


hub_reachable.cache_clear = network.probe.cache_clear  # tests and long sessions can ask again


@contextmanager
def hub_access(repo_id: str, repo_type: str = "model"):
    """Turn the Hub's 401/403 for a gated or private repository into the kit's message (what to do, no token shown).

    Everything else (a missing repo or file, a network error) passes through unchanged.
    """
    from huggingface_hub import constants
    from huggingface_hub.errors import GatedRepoError

    try:
        yield
    except GatedRepoError as error:
        prefix = "" if repo_type == "model" else f"{repo_type}s/"
        page = f"{constants.ENDPOINT}/{prefix}{repo_id}"
        status = getattr(getattr(error, "response", None), "status_code", "401/403")
        raise HubAccessRefused(
            f"{repo_id!r} is gated: the Hub answered {status} and nothing was downloaded. Open {page}, log in and "
            "accept its terms, then make your token available to this process (HF_TOKEN, `hf auth login`, or a "
            "Colab secret named HF_TOKEN) and run this again. Or pick a model that is not gated."
        ) from None


def offline_by_setting() -> bool:
    """HF_HUB_OFFLINE (or, as huggingface_hub reads it, TRANSFORMERS_OFFLINE when HF_HUB_OFFLINE is unset)."""
    return truthy(os.environ.get("HF_HUB_OFFLINE") or os.environ.get("TRANSFORMERS_OFFLINE"))


def hub_offline() -> bool:
    return offline_by_setting() or not hub_reachable()


def offline_reason() -> str:
    """Why the kit treats the Hub as unavailable: HF_HUB_OFFLINE, or what the probe found (with the fix)."""
    if offline_by_setting():
        return "HF_HUB_OFFLINE (or TRANSFORMERS_OFFLINE) is set"
    return hub_probe().explain()


def _cached_file(repo_id: str, filename: str, revision: str | None) -> str | None:
    from huggingface_hub import try_to_load_from_cache

    found = try_to_load_from_cache(repo_id, filename, revision=revision)
    return found if isinstance(found, str) else None


def is_hub_id(model_id) -> bool:
    """Whether resolving `model_id` would consult huggingface_hub: a string that is neither an existing
    folder nor a local-looking path (those are checked without importing anything heavy)."""
    if isinstance(model_id, os.PathLike):
        model_id = os.fspath(model_id)
    if not isinstance(model_id, str) or not model_id.strip():
        return False
    return not Path(model_id).expanduser().is_dir() and not _looks_like_local_path(model_id)


def resolve_model_source(model_id: str, revision: str | None = None, subfolder: str = "") -> str:
    """A local folder (checked to exist and hold a model) or a Hub id (checked to be usable now).

    diffusers treats any path that does not exist as a Hub id; here a missing local path is an
    error, and an uncached Hub id on an offline machine fails at once instead of after retries.
    """
    if isinstance(model_id, os.PathLike):
        model_id = os.fspath(model_id)
    if not isinstance(model_id, str) or not model_id.strip():
        raise InvalidParameterError("model_id", model_id, "give a Hub id like 'Qwen/Qwen-Image' or a local folder")
    path = Path(model_id).expanduser()
    if path.is_dir():
        if not any((path / subfolder / name).is_file() for name in ("model_index.json", "config.json")):
            raise LocalPathNotFoundError(
                "the local folder has no model_index.json (pipeline) or config.json (model)", name="model_id",
                value=model_id, fix="Point it at the folder that save_pretrained or snapshot_download wrote.",
            )
        return str(path.resolve())
    if _looks_like_local_path(model_id):
        raise LocalPathNotFoundError(
            f"the local path does not exist (resolved to {str(path.resolve())!r})", name="model_id", value=model_id,
            fix="Check the path; diffusers would have sent it to the Hub as a repo id. Hub ids look like 'org/name'.",
        )
    from huggingface_hub.utils import HFValidationError, validate_repo_id

    try:
        validate_repo_id(model_id)
    except HFValidationError as error:
        raise InvalidParameterError("model_id", model_id, "not a valid Hub id or existing folder", str(error)) from None
    candidates = ("model_index.json", "config.json", f"{subfolder}/config.json" if subfolder else "config.json")
    cached = any(_cached_file(model_id, name, revision) for name in candidates)
    if not cached and hub_offline():
        raise ModelNotCachedOfflineError(
            f"it is not in the local Hub cache and the Hub cannot be used: {offline_reason()}", name="model_id",
            value=model_id,
            fix="Fix: download it once while online (huggingface_hub.snapshot_download), or pass the local folder "
                "that holds it. To see first whether it fits, run with plan_only=True (plans from configs, "
                "downloads nothing).",
        )
    return model_id


def read_model_index(source: str, revision: str | None = None) -> dict:
    """The pipeline's model_index.json: from the folder, or fetched (a few hundred bytes) from the Hub."""
    source = resolve_model_source(source, revision)  # the kit's clear error for missing or uncached sources
    if Path(source).is_dir():
        index = Path(source) / "model_index.json"
    else:
        from huggingface_hub import hf_hub_download

        with hub_access(source):
            index = Path(hf_hub_download(source, "model_index.json", revision=revision,
                                         local_files_only=hub_offline()))
    if not index.is_file():
        raise LocalPathNotFoundError(f"{str(index)!r} not found: {source!r} is a model folder, not a pipeline.")
    return json.loads(index.read_text())


