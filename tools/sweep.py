"""The reliability sweep: hostile inputs to every notebook, each run headless as a user would run it.

Every case is one papermill run of a real notebook on the tiny models, with one thing made hostile: a
bad parameter, a damaged model folder, a Hub endpoint that stalls or speaks the wrong protocol, remote
code that imports more than it shows, an unwritable place. Around each run the sweep checks what the
kit promises, whatever the case: the run fails (never exit 0 on nonsense) within 30 s, with a message
that names the problem; the executed notebook is kept; the user's files in `output_dir` are untouched;
nothing is left in $TMPDIR; no canary token (HF_TOKEN, or one put in HF_ENDPOINT) appears in the executed notebook
or any file in output_dir (PNG metadata, manifest, sidecars, logs).

`make sweep` (`python -m tools.sweep --write bench/RELIABILITY.md`) writes the table; `--only TEXT` runs the cases
whose label contains TEXT (and prints their rows, writing no table);
tests/test_reliability.py runs a representative subset (`representative()`), or all with KIT_SWEEP=all, and
asserts each promise.
"""

from __future__ import annotations

import argparse
import ast
import contextlib
import dataclasses
import hashlib
import json
import os
import shutil
import sys
import tempfile
import time
import zlib
from collections.abc import Callable
from concurrent.futures import ProcessPoolExecutor
from contextlib import nullcontext
from dataclasses import dataclass, field
from pathlib import Path

from . import hostile, runner
from .tiny import build_all

NB = {path.stem[:2]: path for path in runner.NOTEBOOKS.glob("[0-9]*.ipynb")}
TIME_LIMIT_S = 30
CANARY = "hf_KitSweepCanaryToken0123456789abcdef"
QUERY_CANARY = "KitSweepQueryCanary9f8e7d6c"  # no hf_ prefix: only the credential-like query rule can hide it
USER_FILES = {"index.html": b"<html>the user's own page</html>\n", "notes.txt": b"mine, not the kit's\n"}

# (notebook, parameter, bad value, text the error must contain besides the name and value)
BAD_PARAMETERS = [
    ("01", "install", "yes", "needs True or False"),
    ("01", "report_only", 1, "needs True or False"),
    ("01", "hf_home", 5, "needs a text value"),
    ("01", "hf_home", "/sys/kit-hf-home", "cannot be written (Permission denied)"),
    ("01", "hf_home", "../README.md", "is an existing file, not a folder"),
    ("02", "dtype", "fp8", "choose one of 'auto'"),
    ("02", "dtype", "half", "choose one of 'auto'"),
    ("02", "device_map", "cuda:1", "choose one of 'auto', 'cuda', 'balanced', 'cpu'"),
    ("02", "device_map", "gpu", "choose one of"),
    ("02", "num_inference_steps", 0, "needs a whole number >= 1"),
    ("02", "num_inference_steps", -3, "needs a whole number >= 1"),
    ("02", "num_inference_steps", "ten", "needs a whole number >= 1"),
    ("02", "num_inference_steps", 2.5, "needs a whole number >= 1"),
    ("02", "num_inference_steps", 100_000_000, "is over the limit of 1000. Use at most 1000"),
    ("02", "height", 30, "a multiple of 8. Try 32"),
    ("02", "width", 0, "a multiple of 8"),
    ("02", "height", -64, "a multiple of 8"),
    ("02", "width", 1000.5, "a multiple of 8"),
    ("02", "guidance_scale", -1, "needs a number >= 0"),
    ("02", "guidance_scale", "high", "needs a number >= 0"),
    ("02", "strength", 0, "needs a number > 0 and <= 1"),
    ("02", "strength", 1.5, "needs a number > 0 and <= 1"),
    ("02", "seed", -1, "needs a whole number from 0 to 2**64 - 1"),
    ("02", "seed", "abc", "needs a whole number from 0 to 2**64 - 1"),
    ("02", "seed", 2**64, "needs a whole number from 0 to 2**64 - 1"),
    ("02", "height", 100000, "is larger than 8192 pixels"),
    ("02", "guidance_scale", 1e300, "needs a number >= 0 and <= 100"),
    ("02", "strength", 0.01, "strength x num_inference_steps must be >= 1"),
    ("02", "output_dir", "../README.md", "is an existing file, not a folder"),
    ("03", "output_dir", "/proc/kit-cannot-write-here", "cannot be written"),
    ("02", "model_id", "./missing-model", "does not exist"),
    ("02", "model_id", "someone/not-cached", "not in the local Hub cache"),
    ("02", "model_id", "", "give a Hub id"),
    ("02", "model_id", "bad id!!", "not a valid Hub id"),
    ("02", "prompt", "", "needs a non-empty text"),
    ("02", "prompt", 1984, "needs a non-empty text"),
    ("02", "output_dir", "", "needs a non-empty text"),
    ("02", "parallel_loading", "no", "needs True or False"),
    ("02", "local_dir", 3, "needs a text value"),
    ("03", "scheduler", "Euler", "needs a scheduler class name"),
    ("03", "vae_id", "./missing-vae", "does not exist"),
    ("03", "safety_model_id", "bad id!!", "not a valid Hub id"),
    ("03", "enable_pag", "true", "needs True or False"),
    ("03", "dtype", "int8", "choose one of"),
    ("04", "community_pipeline", "community/missing.py", "would treat a missing path as a Hub repo"),
    ("04", "community_pipeline", "helpers/rules.py", "defines no class deriving from DiffusionPipeline"),
    ("04", "hub_community_name", "../evil", "needs a community pipeline name"),
    ("04", "custom_revision", "v0.41.0", "Use '0.41.0'"),
    ("04", "revision", "main", "a full 40-character commit hash"),
    ("04", "components_repo", "./nope", "does not exist"),
    ("04", "height", 513, "a multiple of 8"),
    ("05", "prompts", [], "needs a non-empty list"),
    ("05", "prompts", ["a cat", ""], "needs a non-empty list"),
    ("05", "prompts", "a cat", "needs a non-empty list"),
    ("05", "num_processes", 0, "needs a whole number >= 1"),
    ("05", "gpu_memory_gib", [-1], "each > 0"),
    ("05", "gpu_memory_gib", ["15"], "each > 0"),
    ("05", "gpu_memory_gib", [1e-12], "each from 0.01"),
    ("05", "max_memory", [1], "needs a dict"),
    ("05", "dtype", "float8", "choose one of"),
    ("05", "output_dir", "../README.md", "is an existing file, not a folder"),
    ("06", "seeds_per_prompt", 0, "needs a whole number >= 1"),
    ("06", "resume", "yes", "needs True or False"),
    ("06", "output_dir", "/proc/kit-cannot-write-here", "cannot be written"),
    ("06", "prompts_file", "no-such-prompts.txt", "no such file"),
    ("07", "num_frames", 2.5, "needs a whole number >= 1"),  # the family's k*t + 1 rule is checked once loaded
    ("07", "num_frames", 0, "needs a whole number >= 1"),
    ("07", "num_frames", 5_000_001, "is over the limit of 1000 frames"),
    ("07", "input_image", "no-such-picture.png", "needs an existing image file"),
    ("07", "fps", 0, "needs a whole number >= 1"),
    ("07", "run_image_to_video", "yes", "needs True or False"),
    ("07", "output_dir", "../README.md", "is an existing file, not a folder"),
]

# A misspelt parameter (papermill only warns, then runs the default): the kit names the closest declared one.
MISSPELT = [("01", "hf_hom", "hf_home"), ("02", "num_inference_step", "num_inference_steps"),
            ("03", "schedular", "scheduler"), ("04", "custom_revison", "custom_revision"),
            ("05", "promts", "prompts"), ("06", "seeds_per_promt", "seeds_per_prompt"),
            ("07", "num_frame", "num_frames")]


@dataclass(frozen=True)
class Case:
    """One hostile run: `parameters` on top of the tiny headless ones, after `prepare(work, parameters)`
    (which returns more overrides), with `environment` for the kernel and an optional network stand-in
    whose port fills "{port}" in the environment. `expect`: text the error message must contain."""

    notebook: str
    label: str
    expect: str
    parameters: dict = field(default_factory=dict)
    environment: dict = field(default_factory=dict)
    prepare: Callable[[Path, dict], dict] | None = None
    server: str | None = None  # a tools.hostile listener kind
    first_cell: bool = True  # the error must come from the first cell after the parameters
    succeeds: bool = False  # the right answer is to go on: the run must succeed and print `expect`
    kind: str = ""  # parameter, misspelt, network, folder or environment (set by all_cases)
    limit_s: float = 0  # when a bound other than TIME_LIMIT_S is the promise (huggingface_hub's own retries)


def _hub_default(notebook: str, name: str) -> str:
    return ast.literal_eval(runner.declared_parameters(NB[notebook])[name]["default"])


def _network(notebook: str, name: str, label: str, expect: str, server: str | None, endpoint: str,
             proxy: str = "") -> Case:
    """`name` keeps the notebook's real Hub id (uncached), and the Hub is reached through `endpoint`."""
    environment = {"HF_ENDPOINT": endpoint, "HF_HUB_OFFLINE": "0", "HTTPS_PROXY": proxy, "HTTP_PROXY": proxy,
                   "https_proxy": proxy, "http_proxy": proxy, "NO_PROXY": "", "no_proxy": ""}
    return Case(notebook, label, expect, {name: _hub_default(notebook, name)}, environment, server=server)


HALF_OPEN, PLAIN_HTTP = "http://127.0.0.1:{port}", "https://127.0.0.1:{port}"
NETWORK = [  # the fast TLS failure first (make test runs it); tests/test_network.py bounds the half-open probe
    _network("02", "model_id", "Hub speaks plain HTTP to TLS", "TLS handshake failed", "plain-http", PLAIN_HTTP),
    _network("02", "model_id", "Hub accepts TCP, never answers", "nothing answered", "half-open", HALF_OPEN),
    _network("02", "model_id", "Hub port closed", "nothing listens there", "closed", HALF_OPEN),
    _network("02", "model_id", "Hub name does not resolve", "could not be resolved", None, "https://kit-sweep.invalid"),
    _network("02", "model_id", "stalled HTTPS proxy", "cannot be reached", "half-open", "https://huggingface.co",
             proxy="http://127.0.0.1:{port}"),
    _network("03", "vae_id", "Hub speaks plain HTTP to TLS", "TLS handshake failed", "plain-http", PLAIN_HTTP),
    _network("04", "model_id", "Hub speaks plain HTTP to TLS", "TLS handshake failed", "plain-http", PLAIN_HTTP),
    _network("05", "model_id", "Hub speaks plain HTTP to TLS", "TLS handshake failed", "plain-http", PLAIN_HTTP),
    _network("06", "model_id", "Hub speaks plain HTTP to TLS", "TLS handshake failed", "plain-http", PLAIN_HTTP),
    _network("03", "vae_id", "Hub accepts TCP, never answers", "nothing answered", "half-open", HALF_OPEN),
    _network("04", "model_id", "Hub accepts TCP, never answers", "nothing answered", "half-open", HALF_OPEN),
    _network("05", "model_id", "Hub accepts TCP, never answers", "nothing answered", "half-open", HALF_OPEN),
    _network("06", "model_id", "Hub accepts TCP, never answers", "nothing answered", "half-open", HALF_OPEN),
    _network("07", "t2v_model_id", "Hub speaks plain HTTP to TLS", "TLS handshake failed", "plain-http", PLAIN_HTTP),
    # round 3: secrets in the endpoint are printed nowhere; a plain 401, a 5xx, a long Retry-After, a cut answer
    _network("02", "model_id", "HF_ENDPOINT holds a token as its password", "nothing listens there", "closed",
             f"http://kit:{CANARY}@127.0.0.1:{{port}}"),
    _network("02", "model_id", "HF_ENDPOINT holds a ?key= query", "nothing listens there", "closed",
             f"http://127.0.0.1:{{port}}/?key={QUERY_CANARY}"),
    _network("02", "model_id", "Hub answers 401 (not gated), token in HF_ENDPOINT", "(HTTP 401", "unauthorized",
             f"http://kit:{CANARY}@127.0.0.1:{{port}}"),
    dataclasses.replace(  # huggingface_hub retries a 5xx 5 times (1+2+4+8+8 s), each retry printed: bounded, shown
        _network("02", "model_id", "Hub answers 503", "HTTP 503: a server error", "server-error", HALF_OPEN),
        limit_s=60),
    _network("02", "model_id", "Hub answers 429 with Retry-After: 3600", "(HTTP 429, Retry-After); the kit does not "
             "wait", "rate-limited", HALF_OPEN),
    _network("02", "model_id", "Hub cuts its answer short", "was cut", "cut", HALF_OPEN),
]


def _weights(folder: Path, component: str) -> Path:
    return next((folder / component).glob("*.safetensors"))


def _damaged(parameter: str, damage: Callable[[Path], object], file_only: bool = False):
    """prepare(): a copy of the model folder the notebook was given as `parameter`, then `damage` applied."""

    def prepare(work: Path, parameters: dict) -> dict:
        copy = work / "model"
        shutil.copytree(parameters[parameter], copy)
        given = damage(copy)
        return {parameter: str(given if file_only else copy)}

    return prepare


def _index(folder: Path, text: str) -> None:
    (folder / "model_index.json").write_text(text)


def _bigger_latents(config_path: Path) -> None:
    config = json.loads(config_path.read_text())
    config["z_dim" if "z_dim" in config else "latent_channels"] *= 2
    config_path.write_text(json.dumps(config))


FOLDERS = [
    Case("02", "truncated weights", "is truncated", prepare=_damaged("model_id", lambda f: _weights(
        f, "transformer").write_bytes(_weights(f, "transformer").read_bytes()[:1000]))),
    Case("02", "0-byte weights", "too short to be a safetensors file", prepare=_damaged(
        "model_id", lambda f: _weights(f, "vae").write_bytes(b""))),
    Case("02", "garbage weights", "not a safetensors file", prepare=_damaged(
        "model_id", lambda f: _weights(f, "transformer").write_bytes(b"garbage!" * 64))),
    Case("02", "missing vae/", "but vae/ is missing", prepare=_damaged("model_id", lambda f: shutil.rmtree(f / "vae"))),
    Case("02", "model_index.json invalid", "model_index.json is not valid JSON", prepare=_damaged(
        "model_id", lambda f: _index(f, "{not json"))),
    Case("02", "model_index.json is {}", "model_index.json has no _class_name", prepare=_damaged(
        "model_id", lambda f: _index(f, "{}"))),
    Case("02", "model_index.json is a list", "holds a list, not a JSON object", prepare=_damaged(
        "model_id", lambda f: _index(f, "[1, 2]"))),
    Case("02", "component config empty", "config.json is not valid JSON", prepare=_damaged(
        "model_id", lambda f: (f / "vae" / "config.json").write_text(""))),
    Case("02", "component without weights", "has a config.json but no weights", prepare=_damaged(
        "model_id", lambda f: _weights(f, "vae").unlink())),
    Case("02", "unknown pipeline class", "which the installed diffusers does not have", prepare=_damaged(
        "model_id", lambda f: _index(f, (f / "model_index.json").read_text().replace(
            '"QwenImagePipeline"', '"QwenImagePipelineX"')))),
    Case("02", "an Inpaint pipeline folder", "which needs an input image", prepare=_damaged(
        "model_id", lambda f: _index(f, (f / "model_index.json").read_text().replace(
            '"QwenImagePipeline"', '"QwenImageInpaintPipeline"')))),
    Case("02", "config from another model (shapes differ)", "the config and the weights come from different",
         prepare=_damaged("model_id", lambda f: _bigger_latents(f / "vae" / "config.json")), first_cell=False),
    Case("02", "single .safetensors file as model_id", "from_single_file", prepare=_damaged(
        "model_id", lambda f: _weights(f, "transformer"), file_only=True)),
    Case("03", "pipeline folder as vae_id", "whole pipeline folder, not a VAE",
         prepare=lambda work, parameters: {"vae_id": parameters["model_id"]}),
    Case("03", "truncated model weights", "is truncated", prepare=_damaged("model_id", lambda f: _weights(
        f, "unet").write_bytes(_weights(f, "unet").read_bytes()[:1000]))),
    Case("04", "model_index.json is {}", "model_index.json has no _class_name", prepare=_damaged(
        "model_id", lambda f: _index(f, "{}"))),
    Case("03", "plain SD pipeline as safety_model_id", "has no safety checker",
         prepare=lambda work, parameters: {"safety_model_id": str(Path(parameters["model_id"]).parent / "sd")}),
    Case("04", "SDXL pipeline as model_id", "names StableDiffusionXLPipeline; this notebook is written for",
         prepare=lambda work, parameters: {"model_id": str(Path(parameters["model_id"]).parent / "sdxl")}),
    Case("05", "missing vae/", "but vae/ is missing", prepare=_damaged("model_id", lambda f: shutil.rmtree(f / "vae"))),
    Case("06", "garbage weights", "not a safetensors file", prepare=_damaged(
        "model_id", lambda f: _weights(f, "unet").write_bytes(b"garbage!" * 64))),
    Case("07", "truncated weights", "is truncated", prepare=_damaged("t2v_model_id", lambda f: _weights(
        f, "transformer").write_bytes(_weights(f, "transformer").read_bytes()[:1000]))),
]


def _batch_ids(parameters: dict) -> list[str]:
    """Notebook 06's item ids for these parameters, made as its plan cell makes them (CPU: float32)."""
    from helpers import batch, planning

    declared = {name: ast.literal_eval(info["default"]) for name, info in runner.declared_parameters(NB["06"]).items()}
    given = {**declared, **parameters}
    plan = planning.plan_load(given["model_id"], dtype="float32", quantization=given["quantization"],
                              offload=given["offload"], device_map="cpu", height=given["height"], width=given["width"])
    return [item.id for item in batch.plan_items(
        given["model_id"], batch.rows_from_list(given["prompts"]), seeds_per_prompt=given["seeds_per_prompt"],
        seed=given["seed"], height=given["height"], width=given["width"], dtype=plan.dtype,
        num_inference_steps=given["num_inference_steps"], guidance_scale=given["guidance_scale"],
        quantization=plan.quantization)]


def _manifest_line(**fields):
    """prepare(): output_dir's manifest.jsonl holds one line for the batch's first item, with `fields` ("{out}" and
    "{work}" in a value are the folders; a `target` field names a file whose bytes and sha256 the line records)."""

    def prepare(work: Path, parameters: dict) -> dict:
        out = Path(parameters["output_dir"])
        first = _batch_ids(parameters)[0]
        line = {"id": first, "file": f"{first}.png", "seconds": 1.0, "rank": 0, "run": "r", "prompt": "p", "seed": 0}
        line.update({k: v.format(out=out, work=work, first=first) if isinstance(v, str) else v
                     for k, v in fields.items()})
        target = Path(line.pop("target", out / line["file"] if isinstance(line["file"], str) else "/dev/null"))
        if target.is_file():
            data = target.read_bytes()
            line.setdefault("sha256", hashlib.sha256(data).hexdigest())
            line.setdefault("bytes", len(data))
        line.setdefault("sha256", "0" * 64)
        (out / "manifest.jsonl").write_text(json.dumps(line) + "\n")
        return {}

    return prepare


def _state_file(name: str, make: Callable[[Path, Path], object]):
    """prepare(): `make(output_dir / name, work)` puts something hostile where the batch keeps its own state."""

    def prepare(work: Path, parameters: dict) -> dict:
        make(Path(parameters["output_dir"]) / name, work)
        return {}

    return prepare


def _fifo_as_first_png(work: Path, parameters: dict) -> dict:
    out = Path(parameters["output_dir"])
    first = _batch_ids(parameters)[0]
    os.mkfifo(out / f"{first}.png")
    _manifest_line(bytes=10)(work, parameters)
    return {}


def _elsewhere(path: Path, work: Path) -> None:
    (work / "elsewhere").mkdir()
    path.symlink_to(work / "elsewhere")


def _second_png(work: Path, parameters: dict) -> dict:
    second = _batch_ids(parameters)[1]
    (Path(parameters["output_dir"]) / f"{second}.png").write_bytes(b"\x89PNG another item's image")
    return _manifest_line(file=f"{second}.png")(work, parameters)


def _outside(work: Path, parameters: dict) -> dict:
    (work / "photo.png").write_bytes(b"\x89PNG the user's photo")
    return _manifest_line(file="{work}/photo.png", target="{work}/photo.png")(work, parameters)


SET_ASIDE = "manifest.jsonl line 1 set aside in manifest.rejected.jsonl"
BATCH_STATE = [  # notebook 06's output_dir, left hostile: nothing read back from it is trusted
    Case("06", "manifest names the user's notes.txt with its sha256", SET_ASIDE, succeeds=True, first_cell=False,
         prepare=_manifest_line(file="notes.txt", target="{out}/notes.txt")),
    Case("06", "manifest names an absolute path outside with its sha256", SET_ASIDE, succeeds=True,
         first_cell=False, prepare=_outside),
    Case("06", "manifest names ../ (a path out of output_dir)", SET_ASIDE, succeeds=True, first_cell=False,
         prepare=_manifest_line(file="../photo.png")),
    Case("06", "manifest names /dev/zero", SET_ASIDE, succeeds=True, first_cell=False,
         prepare=_manifest_line(file="/dev/zero")),
    Case("06", "manifest names another item's PNG", SET_ASIDE, succeeds=True, first_cell=False, prepare=_second_png),
    Case("06", "manifest line with wrong JSON types", SET_ASIDE, succeeds=True, first_cell=False,
         prepare=_manifest_line(file=5, bytes="12")),
    Case("06", "an item's PNG is a FIFO", "regenerated 1", succeeds=True, first_cell=False, prepare=_fifo_as_first_png),
    Case("06", "torn last line of runs.jsonl", "runs.jsonl line 1 is not a run summary", succeeds=True,
         first_cell=False, prepare=_state_file("runs.jsonl", lambda path, work: path.write_text('{"run": "x", "im'))),
    Case("06", "a one-image batch", "repaired: 1 images in", succeeds=True, first_cell=False,
         prepare=lambda work, parameters: {"prompts": ["a lighthouse"], "seeds_per_prompt": 1}),
    Case("06", ".manifest.lock is a link to the user's notes.txt", ".manifest.lock is a symbolic link",
         first_cell=False, prepare=_state_file(".manifest.lock", lambda path, work: path.symlink_to("notes.txt"))),
    Case("06", "manifest.jsonl is a link", "manifest.jsonl is a symbolic link", first_cell=False,
         prepare=_state_file("manifest.jsonl", lambda path, work: path.symlink_to("notes.txt"))),
    Case("06", ".partial is a link out of output_dir", ".partial is a symbolic link", first_cell=False,
         prepare=_state_file(".partial", _elsewhere)),
]


def _file(parameter: str, make: Callable[[Path], object], value: str = "{path}", name: str = "input.png"):
    """prepare(): `make(work / name)` puts something hostile there; `parameter` becomes `value` ({path}: its path)."""

    def prepare(work: Path, parameters: dict) -> dict:
        make(work / name)
        return {parameter: value.format(path=work / name)}

    return prepare


def _png_header(path: Path, width: int = 100_000, height: int = 100_000) -> None:
    """A PNG signature and IHDR chunk declaring width x height pixels, with no pixel data (a decompression bomb)."""
    chunk = b"IHDR" + width.to_bytes(4, "big") + height.to_bytes(4, "big") + bytes([8, 2, 0, 0, 0])
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + (13).to_bytes(4, "big") + chunk + zlib.crc32(chunk).to_bytes(4, "big"))


def _gguf(label: str, expect: str, make: Callable[[Path], object], notebook: str = "02") -> Case:
    return Case(notebook, f"gguf: source {label}", expect, prepare=_file("quantization", make, "gguf:{path}", "q.gguf"))


def _rows(text: str):
    return _file("prompts_file", lambda path: path.write_text(text), name="prompts.jsonl")


NOT_REGULAR = "a folder, pipe or device"
INPUT_FILES = [  # round 3: what can only be checked by opening it is opened (never blocking) in the setup cell
    Case("07", "input_image is a text file named .png", "is not a usable image file",
         prepare=_file("input_image", lambda path: path.write_text("not a picture\n"))),
    Case("07", "input_image declares 100000 x 100000 pixels", "declares more than 40,000,000 pixels",
         prepare=_file("input_image", _png_header)),
    Case("07", "input_image is a FIFO", NOT_REGULAR, prepare=_file("input_image", os.mkfifo)),
    Case("07", "input_image URL on a closed port, token in its query", "start.png?***' is not valid: could not be "
         "downloaded", first_cell=False, prepare=lambda work, parameters: {
             "input_image": f"http://127.0.0.1:{hostile.free_port()}/start.png?token=secret"}),
    _gguf("is a FIFO", NOT_REGULAR, os.mkfifo),
    _gguf("is a folder", NOT_REGULAR, Path.mkdir),
    _gguf("is a link to /dev/zero", NOT_REGULAR, lambda path: path.symlink_to("/dev/zero")),
    _gguf("is a 20 GB sparse file", "is not a usable GGUF file (.gguf): it starts with b'\\x00",
          lambda path: (path.touch(), os.truncate(path, 20 * 2**30))),
    _gguf("is missing", "needs an existing GGUF file (.gguf) (No such file or directory)", lambda path: None),
    _gguf("is not GGUF", "is not a usable GGUF file (.gguf): it starts with b'PK", lambda path: path.write_bytes(
        b"PK\x03\x04 a zip"), notebook="07"),
    Case("06", "prompts-file row seed above 2**64 - 1", "line 2: seed=18446744073709551616",
         prepare=_rows('{"prompt": "a cat"}\n{"prompt": "a dog", "seed": 18446744073709551616}\n')),
    Case("06", "prompts-file row with 5,000,000 steps", "line 1: num_inference_steps=5000000",
         prepare=_rows('{"prompt": "a cat", "num_inference_steps": 5000000}\n')),
    Case("06", "seed + i * seeds_per_prompt past 2**64 - 1", "past 2**64 - 1", first_cell=False,
         parameters={"seed": 2**64 - 3, "seeds_per_prompt": 2}),
    Case("06", "HF_ENDPOINT holds tokens; nothing written keeps them", "images in", succeeds=True, first_cell=False,
         environment={"HF_ENDPOINT": f"http://kit:{CANARY}@127.0.0.1:9/?key={QUERY_CANARY}"}),
]


def _nested_relative_import(work: Path, parameters: dict) -> dict:
    """A custom pipeline folder whose helper imports another helper (diffusers would not copy the second)."""
    folder = work / "kit_sweep_nested"
    folder.mkdir()
    (folder / "pipeline.py").write_text("from diffusers import StableDiffusionPipeline\n\nfrom .sweep_a import A\n\n\n"
                                        "class KitSweepPipeline(StableDiffusionPipeline):\n    a = A\n")
    (folder / "sweep_a.py").write_text("from .sweep_b import B\n\nA = B\n")
    (folder / "sweep_b.py").write_text("B = 1\n")
    return {"community_pipeline": str(folder)}


def _dynamic(loader: str, allow: list | None = None, pin_only_pipeline: bool = False):
    """prepare(): a custom pipeline folder whose pipeline.py runs sibling.py at import time through `loader`
    (lines 3 on); `allow` sets allow_dynamic_code; `pin_only_pipeline` pins a manifest of pipeline.py alone."""

    def prepare(work: Path, parameters: dict) -> dict:
        folder = work / "kit_sweep_dynamic"
        folder.mkdir()
        (folder / "pipeline.py").write_text(f"from diffusers import StableDiffusionPipeline\n\n{loader}\n\n"
                                            "class KitSweepDynamicPipeline(StableDiffusionPipeline):\n    pass\n")
        (folder / "sibling.py").write_text("raise RuntimeError('sibling.py ran unaudited')\n")
        overrides = {"community_pipeline": str(folder)}
        if allow is not None:
            overrides["allow_dynamic_code"] = allow
        if pin_only_pipeline:
            digest = hashlib.sha256((folder / "pipeline.py").read_bytes()).hexdigest()
            (work / "manifest.json").write_text(json.dumps({"pipeline.py": digest}, indent=1))
            overrides["pinned_manifest"] = str(work / "manifest.json")
        return overrides

    return prepare


def _manifest(text: str, link: bool = False):
    """prepare(): `pinned_manifest` is a file holding `text` (or a symlink to one)."""

    def prepare(work: Path, parameters: dict) -> dict:
        (work / "manifest.json").write_text(text)
        if link:
            (work / "link.json").symlink_to(work / "manifest.json")
        return {"pinned_manifest": str(work / ("link.json" if link else "manifest.json"))}

    return prepare


RUNPY = "import os\nimport runpy\nrunpy.run_path(os.path.join(os.path.dirname(__file__), 'sibling.py'))"
SHA = "0" * 64
REMOTE_CODE = [
    Case("04", "custom pipeline with a nested relative import", "relatively, but from a local folder",
         prepare=_nested_relative_import, first_cell=False),
    Case("04", "custom pipeline runs a sibling with runpy", "pipeline.py line 5: `runpy.run_path(os.path.join(os.path"
         ".dirname(__file__), 'sibling.py'))` loads code at run time", prepare=_dynamic(RUNPY), first_cell=False),
    Case("04", "custom pipeline runs exec(open(...).read())", "pipeline.py line 4: `exec(open(os.path.join(",
         prepare=_dynamic("import os\nexec(open(os.path.join(os.path.dirname(__file__), 'sibling.py')).read())"),
         first_cell=False),
    Case("04", "custom pipeline runs importlib.import_module", "line 4: `importlib.import_module('sibling')`",
         prepare=_dynamic("import importlib\nimportlib.import_module('sibling')"), first_cell=False),
    Case("04", "custom pipeline runs __import__", "pipeline.py line 3: `__import__('sibling')`",
         prepare=_dynamic("__import__('sibling')"), first_cell=False),
    Case("04", "custom pipeline runs a file through importlib.util", "`importlib.util.spec_from_file_location('s', "
         "'sibling.py')`", prepare=_dynamic("import importlib.util\nimportlib.util.spec_from_file_location("
                                            "'s', 'sibling.py').loader.exec_module(None)"), first_cell=False),
    Case("04", "opt-in lists the loaded file, which the manifest never pinned", "sibling.py: pinned absent, found",
         prepare=_dynamic(RUNPY, allow=["pipeline.py"], pin_only_pipeline=True), first_cell=False),
    Case("04", "opt-in names a file that loads nothing", "names no audited file that loads code at run time",
         {"allow_dynamic_code": ["kit_prompt_weighting.py"]}, first_cell=False),
    Case("04", "second kernel rewrites the modules-cache copy before import", "(it changed after the audit)",
         environment={"PYTHONPATH": str(runner.ROOT / "tools" / "second_kernel")}, first_cell=False),
    Case("04", "manifest names a file outside the folder", "line 3: entry '../escape.py' is not a file name inside",
         prepare=_manifest(f'{{\n "kit_prompt_weighting.py": "{SHA}",\n "../escape.py": "{SHA}"\n}}'),
         first_cell=False),
    Case("04", "manifest is not valid JSON", "line 2: not valid JSON", prepare=_manifest('{\n "a.py": }'),
         first_cell=False),
    Case("04", "manifest holds a short hash", "line 2: entry 'kit_prompt_weighting.py' has 'abc123', not a sha256",
         prepare=_manifest('{\n "kit_prompt_weighting.py": "abc123"\n}'), first_cell=False),
    Case("04", "manifest is a symlink", "is a symbolic link", prepare=_manifest("{}", link=True), first_cell=False),
    Case("04", "DIFFUSERS_DISABLE_REMOTE_CODE=1", "DIFFUSERS_DISABLE_REMOTE_CODE is set",
         environment={"DIFFUSERS_DISABLE_REMOTE_CODE": "1"}, first_cell=False),
    Case("04", "HF_HOME not writable", "diffusers copies custom code into /sys/kit-hf-home/modules",
         environment={"HF_HOME": "/sys/kit-hf-home"}, first_cell=False),  # /sys refuses writes even to root
]


def all_cases() -> list[Case]:
    cases = [Case(nb, f"{name}={value!r}", expect, {name: value}, kind="parameter")
             for nb, name, value, expect in BAD_PARAMETERS]
    cases += [Case(nb, f"misspelt {typo}", f"Did you mean {right!r}", {typo: 2}, kind="misspelt")
              for nb, typo, right in MISSPELT]
    for kind, group in (("network", NETWORK), ("folder", FOLDERS + BATCH_STATE + INPUT_FILES),
                        ("environment", REMOTE_CODE)):
        cases += [dataclasses.replace(case, kind=kind) for case in group]
    return cases


CASES = all_cases()


def representative() -> list[int]:
    """What `make test` runs: the first bad parameter of each notebook (its first cell) and the first case of each
    other kind; `make sweep` runs them all and writes the table."""
    chosen, seen = [], set()
    for index, case in enumerate(CASES):
        key = (case.notebook, case.kind) if case.kind == "parameter" else case.kind
        if key not in seen:
            seen.add(key)
            chosen.append(index)
    return chosen


@dataclass
class Outcome:
    """What one case did: how it ended and whether any promise was broken."""

    notebook: str
    label: str
    seconds: float
    failed: bool
    cell: str
    message: str  # the error's first line
    executed_kept: bool
    lost: list[str]  # user files changed or removed, partial files left
    leftovers: list[str]  # what stayed in the case's $TMPDIR
    canary_leaked: bool

    @property
    def first_line(self) -> str:
        return self.message.splitlines()[0] if self.message else ""


def _digest(folder: Path) -> dict[str, str]:
    return {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in folder.iterdir() if p.is_file()}


def run_case(index: int, tiny: dict[str, str], root: str) -> Outcome:
    """Run CASES[index] in its own folder, with its own $TMPDIR and a seeded output_dir, then check it."""
    case = CASES[index]
    work = Path(root) / f"{index:03d}"
    temp, out = work / "tmp", work / "out"
    temp.mkdir(parents=True)
    out.mkdir()
    for name, data in USER_FILES.items():
        (out / name).write_bytes(data)
    before = _digest(out)
    notebook = NB[case.notebook]
    parameters = runner.headless_parameters(notebook, {k: Path(v) for k, v in tiny.items()}, out)
    if case.prepare:
        parameters.update(case.prepare(work, parameters))
    declared = runner.declared_parameters(notebook)
    parameters.update({name: value for name, value in case.parameters.items() if name in declared})
    undeclared = {name: value for name, value in case.parameters.items() if name not in declared}
    server = hostile.listener(case.server) if case.server else nullcontext(0)
    with server as port:
        environment = {name: value.replace("{port}", str(port)) for name, value in case.environment.items()}
        environment.update(TMPDIR=str(temp), HF_TOKEN=CANARY)
        result = runner.execute(notebook, work / notebook.name, parameters, environment, undeclared)
    after = _digest(out) if out.is_dir() else {}
    lost = sorted(name for name, digest in before.items() if after.get(name) != digest)
    lost += sorted(p.name for p in out.iterdir() if p.is_file() and p.stat().st_size == 0) if out.is_dir() else []
    executed = result.executed
    kept = executed.is_file() and executed.stat().st_size > 0
    error = result.error
    message = error.error if error else _printed_line(executed, case.expect) if kept and case.succeeds else ""
    return Outcome(case.notebook, case.label, round(result.seconds, 1), error is not None,
                   error.cell if error else "", message, kept, lost,
                   sorted(p.name for p in temp.iterdir()), _leaked(executed if kept else None, out))


def _leaked(executed: Path | None, out: Path) -> bool:
    """Whether a canary token is in the executed notebook, or in any regular file in `out` (PNG text chunks decoded:
    they may be compressed), links and pipes not followed."""
    from PIL import Image

    files = [executed] if executed else []
    files += [Path(top, name) for top, _, names in os.walk(out) for name in names] if out.is_dir() else []
    for path in files:
        if path.is_symlink() or not path.is_file():
            continue
        texts = [path.read_bytes().decode("latin-1")]
        if path.suffix == ".png":
            with contextlib.suppress(OSError), Image.open(path) as image:
                texts += [str(value) for value in getattr(image, "text", {}).values()]
        if any(canary in text for canary in (CANARY, QUERY_CANARY) for text in texts):
            return True
    return False


def _printed_line(executed: Path, text: str) -> str:
    """The first line the executed notebook printed that contains `text` ("" if none)."""
    import nbformat

    printed = (output.get("text", "") for cell in nbformat.read(executed, as_version=4).cells
               for output in cell.get("outputs", []) if output.get("output_type") == "stream")
    return next((line for chunk in printed for line in chunk.splitlines() if text in line), "")


def run_sweep(root: Path, workers: int = 2, cases: list[int] | None = None) -> list[Outcome]:
    """Every case (or the `cases` indices), `workers` at a time; the tiny models are built first."""
    tiny = {name: str(path) for name, path in build_all(runner.TINY_DIR).items()}
    runner.headless_environment()
    indices = list(range(len(CASES))) if cases is None else cases
    with ProcessPoolExecutor(max_workers=workers) as pool:
        return list(pool.map(run_case, indices, [tiny] * len(indices), [str(root)] * len(indices)))


def problems(outcome: Outcome, case: Case) -> list[str]:
    """Every promise this outcome breaks (empty: the case passed)."""
    found = []
    if outcome.failed == case.succeeds:
        found.append(f"failed: {outcome.first_line}" if case.succeeds else "exit 0 on nonsense")
    if outcome.seconds >= (case.limit_s or TIME_LIMIT_S * (8 if case.succeeds else 1)):  # a success runs every cell
        found.append(f"took {outcome.seconds:.0f} s")
    if (outcome.failed or case.succeeds) and case.expect not in outcome.message:
        found.append(f"message lacks {case.expect!r}")
    if not outcome.executed_kept:
        found.append("executed notebook missing")
    if outcome.lost:
        found.append(f"lost or partial: {', '.join(outcome.lost)}")
    if outcome.leftovers:
        found.append(f"left in $TMPDIR: {', '.join(outcome.leftovers)}")
    if outcome.canary_leaked:
        found.append("HF_TOKEN leaked")
    return found


def table(outcomes: list[Outcome]) -> str:
    """bench/RELIABILITY.md: one row per case, then the totals and the slowest case."""
    rows = ["| # | notebook | case | time to fail (s) | message (first line) | executed notebook kept | lost, "
            "overwritten or left in $TMPDIR | verdict |", "|---|---|---|---|---|---|---|---|"]
    broken = 0
    for number, (outcome, case) in enumerate(zip(outcomes, CASES, strict=True), start=1):
        issues = problems(outcome, case)
        broken += bool(issues)
        message = outcome.first_line.replace("|", "\\|")[:300]
        damage = ", ".join(outcome.lost + outcome.leftovers) or "nothing"
        rows.append(f"| {number} | {outcome.notebook} | {case.label.replace('|', '/')} | {outcome.seconds:.1f} | "
                    f"{message} | {'yes' if outcome.executed_kept else 'NO'} | {damage} | "
                    f"{'; '.join(issues) or 'ok'} |")
    slowest = max(outcomes, key=lambda o: o.seconds)
    per_notebook = {nb: sum(o.notebook == nb for o in outcomes) for nb in sorted(NB)}
    header = [
        "# Reliability sweep", "",
        "Written by `make sweep` (`python -m tools.sweep --write bench/RELIABILITY.md`); `make test` runs a "
        "representative subset (tests/test_reliability.py; `KIT_SWEEP=all` runs all). Each case is one "
        "headless papermill run of a notebook on the tiny "
        "models with one hostile input, its own $TMPDIR, an HF_TOKEN canary, and an output_dir seeded with the "
        f"user's own `index.html` and `notes.txt`. Limit: {TIME_LIMIT_S} s per case.", "",
        f"**Totals:** {len(outcomes)} cases ({', '.join(f'{nb}: {n}' for nb, n in per_notebook.items())}); "
        f"{len(outcomes) - broken} ok, {broken} broken; "
        f"{sum(not o.failed for o in outcomes)} exited 0, "
        f"{sum(o.seconds >= TIME_LIMIT_S for o in outcomes)} over {TIME_LIMIT_S} s, "
        f"{sum(bool(o.lost) for o in outcomes)} lost or overwrote a file, "
        f"{sum(bool(o.leftovers) for o in outcomes)} left files in $TMPDIR, "
        f"{sum(not o.executed_kept for o in outcomes)} without an executed notebook, "
        f"{sum(o.canary_leaked for o in outcomes)} leaked the token. "
        f"Slowest: {slowest.notebook} {slowest.label} ({slowest.seconds:.1f} s). "
        f"Sum of case times: {sum(o.seconds for o in outcomes):.0f} s.", "",
    ]
    return "\n".join(header + rows) + "\n"


def write_atomically(path: Path, text: str) -> None:
    with tempfile.NamedTemporaryFile("w", dir=path.parent, prefix=f".{path.name}.", delete=False) as handle:
        handle.write(text)
    os.chmod(handle.name, 0o644)  # NamedTemporaryFile makes it 0600; a committed table is world-readable
    os.replace(handle.name, path)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--write", type=Path, help="write the markdown table here (e.g. bench/RELIABILITY.md)")
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--json", type=Path, help="also write the outcomes as JSON")
    parser.add_argument("--only", action="append", metavar="TEXT", help="run only the cases whose label contains "
                        "TEXT (repeatable); prints their rows and verdicts, writes no table")
    args = parser.parse_args(argv)
    chosen = [i for i, case in enumerate(CASES) if any(text in case.label for text in args.only)] if args.only else None
    if chosen == []:
        parser.error(f"no case label contains any of {args.only}")
    with tempfile.TemporaryDirectory(prefix="kit-sweep-") as root:
        start = time.perf_counter()
        outcomes = run_sweep(Path(root), args.workers, chosen)
        print(f"{len(outcomes)} cases in {time.perf_counter() - start:.0f} s", file=sys.stderr)
    if chosen is not None:
        for index, outcome in zip(chosen, outcomes, strict=True):
            print(f"{index + 1} | {outcome.notebook} | {CASES[index].label} | {outcome.seconds:.1f} s | "
                  f"{outcome.first_line[:300]} | {'; '.join(problems(outcome, CASES[index])) or 'ok'}")
        return 1 if any(problems(o, CASES[i]) for i, o in zip(chosen, outcomes, strict=True)) else 0
    text = table(outcomes)
    if args.write:
        write_atomically(args.write, text)
    if args.json:
        write_atomically(args.json, json.dumps([o.__dict__ for o in outcomes], indent=1))
    print(text)
    return 1 if any(problems(o, c) for o, c in zip(outcomes, CASES, strict=True)) else 0


if __name__ == "__main__":
    sys.exit(main())
