"""Reliability sweep: bad parameters fail fast and clearly, offline paths fail fast, outputs are never lost."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import nbformat
import papermill
import pytest
from PIL import Image

from helpers import network, sources, validate
from helpers.errors import InvalidParameterError, ModelNotCachedOfflineError
from tools import runner

NB = {path.stem[:2]: path for path in runner.NOTEBOOKS.glob("[0-9]*.ipynb")}

# (notebook, parameter, bad value, text the error must contain besides the name and value)
BAD_PARAMETERS = [
    ("01", "install", "yes", "needs True or False"),
    ("01", "report_only", 1, "needs True or False"),
    ("01", "hf_home", 5, "needs a text value"),
    ("02", "dtype", "fp8", "choose one of 'auto'"),
    ("02", "dtype", "half", "choose one of 'auto'"),
    ("02", "device_map", "cuda:1", "choose one of 'auto', 'cuda', 'balanced', 'cpu'"),
    ("02", "device_map", "gpu", "choose one of"),
    ("02", "num_inference_steps", 0, "needs a whole number >= 1"),
    ("02", "num_inference_steps", -3, "needs a whole number >= 1"),
    ("02", "num_inference_steps", "ten", "needs a whole number >= 1"),
    ("02", "num_inference_steps", 2.5, "needs a whole number >= 1"),
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
    ("02", "output_dir", "", "needs a non-empty text"),
    ("02", "parallel_loading", "no", "needs True or False"),
    ("02", "local_dir", 3, "needs a text value"),
    ("03", "scheduler", "Euler", "needs a scheduler class name"),
    ("03", "vae_id", "./missing-vae", "does not exist"),
    ("03", "safety_model_id", "bad id!!", "not a valid Hub id"),
    ("03", "enable_pag", "true", "needs True or False"),
    ("03", "dtype", "int8", "choose one of"),
    ("04", "community_pipeline", "community/missing.py", "would treat a missing path as a Hub repo"),
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
    ("05", "max_memory", [1], "needs a dict"),
    ("05", "dtype", "float8", "choose one of"),
    ("06", "seeds_per_prompt", 0, "needs a whole number >= 1"),
    ("06", "resume", "yes", "needs True or False"),
    ("07", "num_frames", 80, "needs 4k + 1 frames"),
    ("07", "num_frames", 0, "needs 4k + 1 frames"),
    ("07", "input_image", "no-such-picture.png", "needs an existing image file"),
    ("07", "fps", 0, "needs a whole number >= 1"),
    ("07", "run_image_to_video", "yes", "needs True or False"),
]


def run_bad(case):
    """Tiny, valid values for everything (as the harness runs it), then the one bad value."""
    notebook, name, value, _ = case
    out = Path(os.environ["KIT_SWEEP_DIR"]) / f"{notebook}-{name}-{abs(hash(repr(value)))}.ipynb"
    tiny = {name: Path(path) for name, path in json.loads(os.environ["KIT_SWEEP_TINY"]).items()}
    parameters = {**runner.headless_parameters(NB[notebook], tiny, out.with_suffix("")), name: value}
    start = time.perf_counter()
    result = runner.execute(NB[notebook], out, parameters)
    return result, time.perf_counter() - start


@pytest.fixture(scope="module")
def sweep(tmp_path_factory, tiny):
    os.environ["KIT_SWEEP_DIR"] = str(tmp_path_factory.mktemp("sweep"))
    os.environ["KIT_SWEEP_TINY"] = json.dumps({name: str(path) for name, path in tiny.items()})
    runner.headless_environment()
    with ProcessPoolExecutor(max_workers=2) as pool:
        return dict(zip(range(len(BAD_PARAMETERS)), pool.map(run_bad, BAD_PARAMETERS), strict=True))


def test_the_sweep_is_wide():
    assert len(BAD_PARAMETERS) >= 40
    assert {case[0] for case in BAD_PARAMETERS} == set(NB)


@pytest.mark.parametrize("index", range(len(BAD_PARAMETERS)),
                         ids=[f"{c[0]}-{c[1]}={c[2]!r}" for c in BAD_PARAMETERS])
def test_bad_parameter_fails_in_the_first_cell_with_a_clear_message(sweep, index):
    notebook, name, value, expected = BAD_PARAMETERS[index]
    result, seconds = sweep[index]
    assert result.error is not None, f"{name}={value!r} was accepted"
    parameters_cell = next(i for i, c in enumerate(nbformat.read(NB[notebook], as_version=4).cells)
                           if "parameters" in c.metadata.get("tags", []))
    first_after = next(c for c in nbformat.read(NB[notebook], as_version=4).cells[parameters_cell + 1:]
                       if c.cell_type == "code")
    assert f"(id {first_after.id}:" in result.error.cell
    assert f"{name}={value!r}" in result.error.error and expected in result.error.error
    assert seconds < 10
    assert result.executed.is_file()


def test_every_parameter_of_every_notebook_has_a_rule():
    for path in NB.values():
        missing = set(papermill.inspect_notebook(str(path))) - set(validate.RULES)
        assert missing == set(), f"{path.name}: no validation rule for {sorted(missing)}"


@pytest.mark.parametrize("call", [
    lambda: sources.resolve_model_source("someone/uncached-model"),
    lambda: sources.read_model_index("someone/uncached-model"),
])
def test_network_paths_fail_fast_without_hf_hub_offline(monkeypatch, call):
    """HF_HUB_OFFLINE unset, no route to the Hub: a clear error in well under the ~23 s of retries."""
    monkeypatch.delenv("HF_HUB_OFFLINE")
    sources.hub_reachable.cache_clear()
    start = time.perf_counter()
    with pytest.raises((ModelNotCachedOfflineError, OSError)) as error:
        call()
    assert time.perf_counter() - start < network.PROBE_TIMEOUT_S + 3  # the probe's hard deadline
    assert "Hub" in str(error.value) or "offline" in str(error.value) or "cached" in str(error.value)
    sources.hub_reachable.cache_clear()


def test_planner_and_community_refuse_fast_offline(tiny, monkeypatch):
    from helpers import community, planning

    monkeypatch.delenv("HF_HUB_OFFLINE")
    sources.hub_reachable.cache_clear()
    start = time.perf_counter()
    with pytest.raises(ModelNotCachedOfflineError):
        planning.component_sizes("someone/uncached-model")
    with pytest.raises(ModelNotCachedOfflineError):
        community.load_community_pipeline(tiny["sd"], "lpw_stable_diffusion")
    assert time.perf_counter() - start < network.PROBE_TIMEOUT_S + 5  # one probe for both, then the cache
    sources.hub_reachable.cache_clear()


WRITER = """
import sys
from PIL import Image
from helpers import outputs
image = Image.effect_noise((1536, 1536), 64).convert("RGB")
for i in range(1000):
    outputs.save_image(image, sys.argv[1], "big", {"i": i})
"""


def test_a_killed_writer_leaves_no_truncated_png(tmp_path):
    writer = subprocess.Popen([sys.executable, "-c", WRITER, str(tmp_path)])
    deadline = time.time() + 60
    while len(list(tmp_path.glob("*.png"))) < 2 and time.time() < deadline:
        time.sleep(0.05)
    time.sleep(0.13)
    writer.send_signal(signal.SIGKILL)
    writer.wait()
    pngs = list(tmp_path.glob("*.png"))
    assert len(pngs) >= 2
    for png in pngs:
        with Image.open(png) as image:
            image.load()  # a truncated file raises here
    assert all(p.name.startswith(".") and p.name.endswith(".png.tmp") for p in tmp_path.iterdir() if p not in pngs)


def test_validation_itself_names_parameter_value_and_rule():
    with pytest.raises(InvalidParameterError, match=r"^height=30 is not valid: .*multiple of 8\. Try 32\.$"):
        validate.check({"height": 30})
    validate.check({"height": 32, "unrelated": object(), "prompts": ["a"], "revision": ""})


def test_a_misspelt_parameter_is_refused_with_the_closest_name(tmp_path, tiny):
    """papermill only warns about `-p num_inference_step 2` and injects it as a global; the kit refuses it."""
    parameters = {**runner.headless_parameters(NB["02"], tiny, tmp_path / "out"), "num_inference_step": 2}
    out = tmp_path / "typo.ipynb"
    runner.headless_environment()
    with pytest.raises(papermill.PapermillExecutionError) as failure:
        papermill.execute_notebook(str(NB["02"]), str(out), parameters=parameters, cwd=str(NB["02"].parent),
                                   kernel_name="python3", progress_bar=False)
    assert failure.value.evalue == ("num_inference_step=2 is not valid: is not a parameter of this notebook. "
                                    "Did you mean 'num_inference_steps'?")
    assert out.is_file()


def test_unknown_names_ignore_what_the_setup_cell_defines():
    import pathlib as a_module

    namespace = {"prompt": "a cat", "KIT_VERSION": "0.1.0", "root": a_module.Path("."), "clone": ["git"],
                 "pathlib": a_module, "_i1": "x", "helpers": a_module}
    assert validate.unknown_parameters(namespace) == []
    assert validate.unknown_parameters({**namespace, "promt": "a dog"}) == ["promt"]
