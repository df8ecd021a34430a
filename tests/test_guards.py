"""Run-time guards: out of memory, gated repos (against a stand-in Hub on 127.0.0.1), NaN latents, black images."""

from __future__ import annotations

import http.server
import json
import threading
import warnings

import numpy as np
import pytest
import torch
from PIL import Image

from helpers import generation, loading, outputs
from helpers import hub as kit_hub
from helpers.errors import BlankImageWarning, GatedModelError, KitOutOfMemoryError, NonFiniteLatentsError

SECRET = "hf_kitTESTtoken0123456789abcdef"


# --- out of memory ------------------------------------------------------------------------------------------

def test_a_real_out_of_memory_gets_the_next_options():
    with pytest.raises(KitOutOfMemoryError) as caught:
        with loading.out_of_memory():
            torch.empty(2**62, dtype=torch.uint8)  # a real allocation failure (the CPU allocator's RuntimeError)
    message = str(caught.value)
    assert isinstance(caught.value, torch.OutOfMemoryError)  # code that catches torch's error still does
    assert "Out of memory during load" in message and "offload='model'" in message and "quantization=" in message
    assert message.index("1. more offload") < message.index("2. quantization") < message.index("3. a smaller model")


def test_other_errors_pass_through():
    with pytest.raises(ValueError, match="unrelated"), loading.out_of_memory():
        raise ValueError("unrelated")


# --- gated repos ---------------------------------------------------------------------------------------------

class _Hub(http.server.BaseHTTPRequestHandler):
    """Answers as the Hub does for a gated repo without access: its metadata is public (/api/models/...),
    every file is refused (401/403, X-Error-Code: GatedRepo). The refusal echoes the Authorization header."""

    status = 401
    gated = True

    def do_GET(self):  # noqa: N802 - http.server's name
        if self.path.startswith("/api/models/"):
            body = json.dumps({"id": "org/gated", "sha": "0" * 40, "gated": "auto",
                               "siblings": [{"rfilename": "model_index.json"}]}).encode()
            self.send_response(200)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)
            return
        body = f'{{"error": "Access to model is restricted. You sent: {self.headers.get("Authorization")}"}}'.encode()
        self.send_response(self.status)
        if self.gated:
            self.send_header("X-Error-Code", "GatedRepo")
        self.send_header("X-Error-Message", "Access to model org/gated is restricted.")
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    do_HEAD = do_GET  # noqa: N815

    def log_message(self, *args):
        pass


@pytest.fixture
def hub(monkeypatch):
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Hub)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    monkeypatch.setenv("HF_HUB_OFFLINE", "0")
    from huggingface_hub import constants, hf_api

    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)
    monkeypatch.setattr(constants, "HF_HUB_ETAG_TIMEOUT", 2)
    endpoint = f"http://127.0.0.1:{server.server_address[1]}"
    monkeypatch.setattr(constants, "ENDPOINT", endpoint)  # what HF_ENDPOINT sets at import
    monkeypatch.setattr(constants, "HUGGINGFACE_CO_URL_TEMPLATE", endpoint + "/{repo_id}/resolve/{revision}/{filename}")
    monkeypatch.setattr(hf_api.api, "endpoint", endpoint)  # the module-level HfApi behind model_info
    yield endpoint
    server.shutdown()


@pytest.mark.parametrize("status, gated", [(401, True), (403, True), (403, False)])
def test_a_refused_download_names_token_and_licence_never_the_token(hub, monkeypatch, status, gated):
    from huggingface_hub import hf_hub_download

    monkeypatch.setattr(_Hub, "status", status)
    monkeypatch.setattr(_Hub, "gated", gated)
    monkeypatch.setenv("HF_TOKEN", SECRET)
    with pytest.raises(GatedModelError) as caught:
        with kit_hub.hub_access("org/gated"):
            hf_hub_download("org/gated", "model_index.json")
    message = str(caught.value)
    assert f"{hub}/org/gated" in message and "accept the licence" in message
    assert "HF_TOKEN" in message and "hf auth login" in message and "a Hugging Face token was sent" in message
    assert ("is gated" in message) == gated and f"HTTP {status}" in message
    assert SECRET not in message and SECRET not in repr(caught.value)


def test_a_gated_pipeline_load_without_a_token(hub):
    """The real diffusers call against the stand-in Hub: from_pretrained of a gated repo, no token."""
    from diffusers import DiffusionPipeline

    with pytest.raises(GatedModelError, match=r"(?s)'org/gated' is gated.*no Hugging Face token was found"):
        with kit_hub.hub_access("org/gated"):
            DiffusionPipeline.from_pretrained("org/gated")


def test_load_pipeline_says_what_to_do_for_a_gated_repo(hub, monkeypatch):
    monkeypatch.setattr(kit_hub, "hub_reachable", lambda timeout=3.0: True)  # its probe dials port 443, not ours
    monkeypatch.setenv("HF_TOKEN", SECRET)
    with pytest.raises(GatedModelError, match=r"(?s)'org/gated' is gated.*accept the licence") as caught:
        loading.load_pipeline("org/gated", dtype="float32", device_map="cpu")
    assert SECRET not in str(caught.value)


def test_hub_errors_that_are_not_access_pass_through():
    with pytest.raises(FileNotFoundError), kit_hub.hub_access("org/x"):
        raise FileNotFoundError("no such file")


# --- NaN latents and black images ---------------------------------------------------------------------------

BAD = dict(prompt="a photo of a cat", height=32, width=32, num_inference_steps=2, guidance_scale=1e300, seed=0)


@pytest.fixture(scope="module")
def sd(tiny):
    return loading.load_pipeline(str(tiny["sd"]), dtype="float32", device_map="cpu")


def test_without_the_guard_guidance_1e300_gives_a_black_image(sd):
    """The failure the guard exists for: diffusers itself returns an all-black image and no error."""
    call = {k: v for k, v in generation.call_arguments(sd, **BAD).items() if k != "callback_on_step_end"}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # numpy's "invalid value encountered in cast"
        image = sd(**call).images[0]
    assert outputs.image_problem(image) == "all black"


def test_nan_latents_stop_generation_naming_the_guidance_scale(sd, tmp_path):
    call = generation.call_arguments(sd, **BAD)
    with pytest.raises(NonFiniteLatentsError, match=r"step 1.*guidance_scale=1e\+300 is far out of range"):
        sd(**call)
    assert not list(tmp_path.iterdir())


def test_the_guard_keeps_a_callers_callback(sd):
    steps = []

    def on_step(pipe, step, timestep, kwargs):
        steps.append(step)
        return kwargs

    call = generation.call_arguments(sd, **{**BAD, "guidance_scale": 4.0}, callback_on_step_end=on_step)
    assert outputs.image_problem(sd(**call).images[0]) is None
    assert steps == list(range(len(sd.scheduler.timesteps))) and steps  # the caller's callback ran every step


def test_fp16_is_named_as_the_cause():
    assert "float16 overflow" in outputs.likely_cause(5.0, torch.float16)
    assert "guidance_scale" not in outputs.likely_cause(5.0, torch.float16)


def test_a_black_image_is_never_saved_as_a_normal_result(tmp_path):
    metadata = {"parameters": {"guidance_scale": 1e300, "seed": 0}}
    with pytest.warns(BlankImageWarning, match=r"all black.*guidance_scale=1e\+300"):
        path = outputs.save_image(Image.new("RGB", (8, 8)), tmp_path, "cat", metadata)
    assert path.name == "cat-blank.png"
    saved = outputs.read_metadata(path)
    assert "all black" in saved["image_check"] and saved["parameters"]["seed"] == 0


def test_a_normal_image_is_saved_without_a_warning(tmp_path):
    with warnings.catch_warnings():
        warnings.simplefilter("error", BlankImageWarning)
        path = outputs.save_image(Image.new("RGB", (8, 8), (10, 20, 30)), tmp_path, "cat", {})
    assert path.name == "cat.png" and "image_check" not in outputs.read_metadata(path)


def test_nan_in_a_float_array_is_reported():
    assert outputs.image_problem(np.full((4, 4, 3), np.nan, dtype=np.float32)) == "NaN/inf pixels"


def test_notebook_02_with_guidance_1e300_saves_no_normal_png(tiny, tmp_path):
    """The reported failure, end to end: papermill + notebook 02 on the tiny model with guidance_scale=1e300.

    Before the guards it saved black PNGs with normal metadata and exited 0; now the generate cell stops
    with the cause, and no PNG is saved as a normal result.
    """
    from tools import runner

    notebook = runner.NOTEBOOKS / "02_load_and_generate.ipynb"
    runner.headless_environment()
    output_dir = tmp_path / "images"
    parameters = {**runner.headless_parameters(notebook, tiny, output_dir), "guidance_scale": 1e300}
    result = runner.execute(notebook, tmp_path / "executed.ipynb", parameters)
    # The parameter check now refuses it in the setup cell, before anything loads...
    assert result.error is not None and "guidance_scale=1e+300 is not valid: needs a number >= 0 and <= 100" in str(
        result.error), result.error
    assert "(id setup:" in result.error.cell
    assert [p.name for p in output_dir.rglob("*.png")] == []
    # ...and the generation guard still stops NaN latents that a valid-looking call produces (tested above on the
    # same tiny pipeline: test_nan_latents_stop_generation_naming_the_guidance_scale).


def test_a_switched_off_model_parameter_is_only_type_checked():
    from helpers import validate
    from helpers.errors import InvalidParameterError

    uncached = {"i2v_model_id": "kit-tester/never-downloaded", "run_image_to_video": True}
    with pytest.raises(InvalidParameterError, match="i2v_model_id='kit-tester/never-downloaded'"):
        validate.check(uncached, stage="after_install")
    validate.check({**uncached, "run_image_to_video": False}, stage="after_install")  # not used: not looked up
    with pytest.raises(InvalidParameterError, match="i2v_model_id=5"):
        validate.check({"i2v_model_id": 5, "run_image_to_video": False})
