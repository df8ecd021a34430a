"""Reliability sweep: bad parameters fail fast and clearly, offline paths fail fast, outputs are never lost."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time

import nbformat
import papermill
import pytest
from PIL import Image

from helpers import KIT_ROOT, hub, validate
from helpers.errors import InvalidParameterError, ModelNotCachedOfflineError
from tools import runner, sweep

NB = sweep.NB


# `make test` runs a representative subset; KIT_SWEEP=all runs all of them, as `make sweep` does
# (which also writes bench/RELIABILITY.md, checked below to cover every case with none broken).
SELECTED = list(range(len(sweep.CASES))) if os.environ.get("KIT_SWEEP") == "all" else sweep.representative()


@pytest.fixture(scope="module")
def outcomes(tmp_path_factory):
    """The selected sweep cases (tools/sweep.py), run once, two at a time: {case index: outcome}."""
    return dict(zip(SELECTED, sweep.run_sweep(tmp_path_factory.mktemp("sweep"), cases=SELECTED), strict=True))


def test_the_sweep_is_wide():
    assert len(sweep.CASES) >= 80
    assert {case.notebook for case in sweep.CASES} == set(NB)
    assert len({(case.notebook, case.label) for case in sweep.CASES}) == len(sweep.CASES)  # each case once
    subset = [sweep.CASES[i] for i in sweep.representative()]
    assert {case.kind for case in subset} == {"parameter", "misspelt", "network", "folder", "environment"}
    assert {case.notebook for case in subset if case.kind == "parameter"} == set(NB)  # every first cell


@pytest.mark.parametrize("index", SELECTED, ids=[f"{sweep.CASES[i].notebook}-{sweep.CASES[i].label}" for i in SELECTED])
def test_hostile_case_fails_fast_clearly_and_harms_nothing(outcomes, index):
    """Non-zero exit, within 30 s, the expected message; executed notebook kept; the user's files intact;
    nothing left in $TMPDIR; no token in the output. Parameter cases fail in the first cell after the parameters."""
    case, outcome = sweep.CASES[index], outcomes[index]
    assert sweep.problems(outcome, case) == []
    if case.first_cell:
        cells = nbformat.read(NB[case.notebook], as_version=4).cells
        parameters_cell = next(i for i, c in enumerate(cells) if "parameters" in c.metadata.get("tags", []))
        first_after = next(c for c in cells[parameters_cell + 1:] if c.cell_type == "code")
        assert f"(id {first_after.id}:" in outcome.cell
    name, value = next(iter(case.parameters.items()), (None, None))
    if name in sweep.runner.declared_parameters(NB[case.notebook]) and not case.server:
        assert f"{name}={value!r}" in outcome.message  # names the parameter and the value


def test_the_committed_table_covers_every_case_and_reports_none_broken():
    """bench/RELIABILITY.md is written by `make sweep`; a case added since must be run and committed."""
    text = (KIT_ROOT / "bench" / "RELIABILITY.md").read_text()
    rows = [line for line in text.splitlines() if line.startswith("| ") and line[2].isdigit()]
    assert len(rows) == len(sweep.CASES)
    assert [row.split(" | ")[2] for row in rows] == [case.label.replace("|", "/") for case in sweep.CASES]
    assert f"{len(sweep.CASES)} ok, 0 broken" in text


def test_every_parameter_of_every_notebook_has_a_rule():
    for path in NB.values():
        missing = set(papermill.inspect_notebook(str(path))) - set(validate.RULES)
        assert missing == set(), f"{path.name}: no validation rule for {sorted(missing)}"


@pytest.mark.parametrize("call", [
    lambda: hub.resolve_model_source("someone/uncached-model"),
    lambda: hub.read_model_index("someone/uncached-model"),
])
def test_network_paths_fail_fast_without_hf_hub_offline(monkeypatch, call):
    """HF_HUB_OFFLINE unset, no route to the Hub: a clear error in well under the ~23 s of retries."""
    monkeypatch.delenv("HF_HUB_OFFLINE")
    hub.hub_reachable.cache_clear()
    start = time.perf_counter()
    with pytest.raises((ModelNotCachedOfflineError, OSError)) as error:
        call()
    assert time.perf_counter() - start < hub.PROBE_TIMEOUT_S + 3  # the probe's hard deadline
    assert "Hub" in str(error.value) or "offline" in str(error.value) or "cached" in str(error.value)
    hub.hub_reachable.cache_clear()


def test_planner_and_community_refuse_fast_offline(tiny, monkeypatch):
    from helpers import community, planning

    monkeypatch.delenv("HF_HUB_OFFLINE")
    hub.hub_reachable.cache_clear()
    start = time.perf_counter()
    with pytest.raises(ModelNotCachedOfflineError):
        planning.component_sizes("someone/uncached-model")
    with pytest.raises(ModelNotCachedOfflineError):
        community.load_community_pipeline(tiny["sd"], "lpw_stable_diffusion")
    assert time.perf_counter() - start < hub.PROBE_TIMEOUT_S + 5  # one probe for both, then the cache
    hub.hub_reachable.cache_clear()


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


def test_a_notebook_written_for_one_family_refuses_another_before_loading(tiny):
    sd1 = ("StableDiffusionPipeline",)
    with pytest.raises(InvalidParameterError, match="names StableDiffusionXLPipeline; this notebook is written for "
                                                    "StableDiffusionPipeline") as refused:
        validate.check({"model_id": str(tiny["sdxl"])}, stage="before_install", pipeline_classes=sd1)
    assert refused.value.name == "model_id" and refused.value.fix
    with pytest.raises(InvalidParameterError, match="names StableDiffusionXLPipeline"):  # a Hub id: shipped config
        validate.pipeline_class("model_id", "stabilityai/stable-diffusion-xl-base-1.0", sd1)
    validate.check({"model_id": str(tiny["sd"])}, pipeline_classes=sd1)
    validate.check({"model_id": str(tiny["sdxl"])})  # notebooks that take any family


def test_hf_home_must_be_a_folder_that_can_be_written(tmp_path):
    validate.check({"hf_home": ""})  # the default cache
    validate.check({"hf_home": str(tmp_path / "not" / "yet")})  # created later; its parent can be written
    with pytest.raises(InvalidParameterError, match="cannot be written") as refused:
        validate.check({"hf_home": "/sys/kit-hf-home"})  # /sys refuses writes even to root
    assert refused.value.name == "hf_home" and "leave it empty" in refused.value.fix
    assert not (tmp_path / "not").exists()


def test_a_safety_model_without_a_safety_checker_is_refused_before_anything_is_labelled(tiny):
    """The notebook run is a sweep case (tools/sweep.py: "plain SD pipeline as safety_model_id")."""
    validate.check({"safety_model_id": str(tiny["sd-safety"])})
    for plain in ("sd", "sdxl", "vae-alt"):  # [null, null], no entry, no pipeline at all
        with pytest.raises(InvalidParameterError, match="has no safety checker") as refused:
            validate.check({"safety_model_id": str(tiny[plain])}, stage="before_install")
        assert refused.value.name == "safety_model_id" and "ships one" in refused.value.fix


def test_the_canary_check_sees_a_token_in_any_written_file_or_compressed_png_text(tmp_path):
    """sweep._leaked is what every case's "no token anywhere" promise rests on: it must find one where it hides."""
    from PIL import PngImagePlugin

    (tmp_path / "out").mkdir()
    Image.new("RGB", (8, 8)).save(tmp_path / "out" / "clean.png")
    assert not sweep._leaked(None, tmp_path / "out")
    info = PngImagePlugin.PngInfo()
    info.add_text("kit", f"endpoint http://127.0.0.1/?key={sweep.QUERY_CANARY}", zip=True)  # zTXt: compressed
    Image.new("RGB", (8, 8)).save(tmp_path / "out" / "meta.png", pnginfo=info)
    assert sweep.QUERY_CANARY.encode() not in (tmp_path / "out" / "meta.png").read_bytes()
    assert sweep._leaked(None, tmp_path / "out")
    (tmp_path / "out" / "meta.png").unlink()
    (tmp_path / "out" / "sub").mkdir()
    (tmp_path / "out" / "sub" / "run.json").write_text(sweep.CANARY)
    assert sweep._leaked(None, tmp_path / "out")
