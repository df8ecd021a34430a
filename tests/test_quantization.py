"""Quantized loading on the tiny models, through the same calls the notebooks make.

load_pipeline(..., quantization_config=quantization.pipeline_config(...)) -> generation.call_arguments ->
pipe(**call) -> outputs.save_image, with each backend that runs on a CPU: torchao int8, quanto int8/int4,
and GGUF (Q8_0 and Q4_0 files the kit writes itself). bitsandbytes needs a GPU: here only its decision and
its refusal are tested; its generation runs in tests/test_quantization_gpu.py (make test-gpu).
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from bench.quant_memory import quantized_bytes, stored_bytes
from helpers import architectures, generation, loading, outputs, quantization, rules
from helpers.errors import InvalidParameterError, QuantizationUnavailableError
from tools.tiny.gguf_file import write_denoiser_gguf

CALL = dict(prompt="a photo of a cat", height=32, width=32, num_inference_steps=2, guidance_scale=4.0, seed=3)


def _generate(pipe):
    return np.asarray(pipe(**generation.call_arguments(pipe, **CALL)).images[0], dtype=np.float64)


@pytest.fixture(scope="module")
def reference(tiny):
    """The unquantized tiny SD image, in float32 (what every quantized run is compared with)."""
    return _generate(loading.load_pipeline(str(tiny["sd"]), dtype="float32", device_map="cpu"))


# --- names and decisions ---------------------------------------------------------------------------------

@pytest.mark.parametrize("value", ["fp8", "INT8", "", "gguf:", "gguf:model.safetensors", 8, None])
def test_bad_names_are_refused_with_the_choices(value):
    with pytest.raises(InvalidParameterError, match=r"quantization=.* is not valid"):
        rules.parse_quantization(value)


def test_gguf_names_keep_their_source():
    assert rules.parse_quantization("gguf:https://huggingface.co/city96/x/blob/main/x-Q4_K_M.gguf") == (
        "gguf", "https://huggingface.co/city96/x/blob/main/x-Q4_K_M.gguf")


@pytest.mark.parametrize("name, device, backend", [
    ("int8", "cpu", "torchao"), ("int4", "cpu", "quanto"), ("int8", "cuda", "bitsandbytes"),
    ("nf4", "cuda", "bitsandbytes"), ("int4", "cuda", "quanto"), ("none", "cpu", None), ("gguf:x.gguf", "cpu", "gguf"),
])
def test_auto_backend_by_device(name, device, backend):
    assert quantization.resolve_backend(name, "auto", device) == backend


@pytest.mark.parametrize("name, backend", [("nf4", "auto"), ("int8", "bitsandbytes")])
def test_bitsandbytes_is_refused_on_cpu_before_loading_with_the_cpu_alternative(name, backend):
    with pytest.raises(QuantizationUnavailableError, match=r"needs a CUDA GPU.*On CPU use quantization='int8'"):
        quantization.resolve_backend(name, backend, "cpu")
    if not torch.cuda.is_available():  # this machine: pipeline_config refuses before importing anything heavy
        with pytest.raises(QuantizationUnavailableError, match="bitsandbytes"):
            quantization.pipeline_config(name, ["unet"], backend)


def test_a_backend_that_lacks_the_precision_is_refused():
    with pytest.raises(InvalidParameterError, match=r"the torchao backend offers int8"):
        quantization.resolve_backend("int4", "torchao", "cpu")


def test_a_missing_backend_and_a_too_old_one_are_told_apart(tmp_path, monkeypatch):
    """A distribution laid out as pip installs it, first on sys.path: importlib.metadata finds it there."""
    from importlib.util import find_spec

    if find_spec("bitsandbytes") is None:
        with pytest.raises(QuantizationUnavailableError, match=r"needs bitsandbytes, which is not installed.*"
                                                               r"pip install 'bitsandbytes==0\.50\.2'"):
            quantization.check_installed("nf4", "bitsandbytes", "cuda")
    quantization.check_installed("gguf:x.gguf")  # the pinned gguf is installed: no error
    old = tmp_path / "gguf-0.9.0.dist-info"
    old.mkdir()
    (old / "METADATA").write_text("Metadata-Version: 2.1\nName: gguf\nVersion: 0.9.0\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    with pytest.raises(QuantizationUnavailableError, match=r"needs gguf >= 0\.10\.0, but 0\.9\.0 is installed "
                                                           r"\(too old"):
        quantization.check_installed("gguf:x.gguf")


def test_importing_the_module_imports_no_backend():
    import subprocess
    import sys

    code = ("import sys, helpers.quantization, helpers.rules; "
            "print(sorted(m for m in sys.modules if m.split('.')[0] in ('torchao', 'optimum', 'bitsandbytes', 'gguf', "
            "'torch', 'diffusers')))")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert done.stdout.strip() == "[]" and "Failed to load" not in done.stderr


def test_gguf_is_not_a_pipeline_config():
    with pytest.raises(InvalidParameterError, match="gguf_component"):
        quantization.pipeline_config("gguf:x.gguf", ["unet"])


# --- generation with each CPU backend ---------------------------------------------------------------------

def _linear_weights(module):
    return [m.weight for m in module.modules() if isinstance(m, torch.nn.Linear)]


@pytest.mark.parametrize("name, backend, weight_type", [
    ("int8", "torchao", "AffineQuantizedTensor|Int8Tensor|TorchAOBaseTensor"),
    ("int8", "quanto", "WeightQBytesTensor|QBytesTensor"),
    ("int4", "quanto", "WeightQBitsTensor|QBitsTensor|TinyGemmWeightQBitsTensor"),
])
def test_tiny_sd_generates_quantized(tiny, tmp_path, reference, name, backend, weight_type):
    # the UNet through diffusers' config class, the text encoder through transformers' one
    config = quantization.pipeline_config(name, ["unet", "text_encoder"], backend, device="cpu", dtype=torch.float32)
    pipe = loading.load_pipeline(str(tiny["sd"]), dtype="float32", device_map="cpu", quantization_config=config)
    for component in (pipe.unet, pipe.text_encoder):
        kinds = {type(w).__name__ for w in _linear_weights(component)}
        assert kinds & set(weight_type.split("|")), kinds  # its Linear layers really are quantized
    assert not {type(w).__name__ for w in _linear_weights(pipe.vae)} - {"Parameter"}  # not named: left alone
    meta = architectures.build_from_config("diffusers", "UNet2DConditionModel", tiny["sd"] / "unet", "meta")
    predicted = quantized_bytes(meta, name, backend, torch.float32)
    assert predicted == pytest.approx(stored_bytes(pipe.unet), rel=0.01)
    image = _generate(pipe)
    difference = np.abs(image - reference).mean()
    assert 0 < difference < 20, difference  # the quantized UNet ran (not identical) and stays close to fp32
    path = outputs.save_image(Image.fromarray(image.astype(np.uint8)), tmp_path, f"{name}-{backend}")
    assert path.name == f"{name}-{backend}.png"


@pytest.mark.parametrize("quant_type", ["Q8_0", "Q4_0"])
def test_tiny_sd_generates_from_a_gguf_file_the_kit_writes(tiny, tmp_path, reference, quant_type):
    import gguf

    file = write_denoiser_gguf(tiny["sd"], tmp_path / f"unet-{quant_type}.gguf", quant_type)
    types = {t.tensor_type.name for t in gguf.GGUFReader(str(file)).tensors}
    assert {quant_type, "F32"} <= types  # Linear weights quantized, the rest kept in float
    components = quantization.gguf_component(str(tiny["sd"]), f"gguf:{file}", dtype=torch.float32)
    assert list(components) == ["unet"]
    pipe = loading.load_pipeline(str(tiny["sd"]), dtype="float32", device_map="cpu", **components)
    assert any(type(w).__name__ == "GGUFParameter" for w in _linear_weights(pipe.unet))
    difference = np.abs(_generate(pipe) - reference).mean()
    assert 0 < difference < 20, difference


def test_tiny_qwen_image_generates_from_a_gguf_transformer(tiny, tmp_path):
    from helpers import outputs

    file = write_denoiser_gguf(tiny["qwen-image"], tmp_path / "transformer-Q8_0.gguf")
    components = quantization.gguf_component(str(tiny["qwen-image"]), f"gguf:{file}", dtype=torch.float32)
    assert list(components) == ["transformer"]
    pipe = loading.load_pipeline(str(tiny["qwen-image"]), dtype="float32", device_map="cpu", **components)
    assert any(type(w).__name__ == "GGUFParameter" for w in _linear_weights(pipe.transformer))
    image = pipe(**generation.call_arguments(pipe, **CALL, negative_prompt="blurry")).images[0]
    assert outputs.image_problem(image) is None and np.asarray(image).std() > 1


def test_gguf_file_that_does_not_exist_is_named(tiny, tmp_path):
    with pytest.raises(FileNotFoundError, match=r"no GGUF file at .*missing\.gguf"):
        quantization.gguf_component(str(tiny["sd"]), f"gguf:{tmp_path / 'missing.gguf'}")


def test_quantized_bytes_match_what_torchao_stores():
    """The prediction against torchao's own quantize_ (Linear weights only, as diffusers' quantizer does)."""
    from torchao.quantization import Int8WeightOnlyConfig, quantize_

    def model():
        return torch.nn.Sequential(torch.nn.Linear(320, 640), torch.nn.Conv2d(4, 8, 3), torch.nn.LayerNorm(640))

    meta = model().to(torch.bfloat16)
    quantized = model().to(torch.bfloat16)
    quantize_(quantized, Int8WeightOnlyConfig())
    assert quantized_bytes(meta, "int8", "torchao") == stored_bytes(quantized)
    assert quantized_bytes(meta, "none", None) == stored_bytes(meta)
    assert stored_bytes(quantized) < 0.6 * stored_bytes(meta)


@pytest.mark.parametrize("choice, backend", [("int8", "torchao"), ("int4", "quanto"), ("gguf", "gguf")])
def test_notebook_02_loads_and_generates_quantized_through_its_literal_call(tiny, tmp_path, choice, backend):
    """The notebook path: the plan picks the backend, `quantization_config=` (or the GGUF denoiser) goes into the
    cell's own from_pretrained, the tiny SD generates, and the variants cell says why from_pipe is skipped."""
    import nbformat

    from tools import runner

    value = f"gguf:{write_denoiser_gguf(tiny['sd'], tmp_path / 'unet-Q8_0.gguf')}" if choice == "gguf" else choice
    notebook = runner.NOTEBOOKS / "02_load_and_generate.ipynb"
    runner.headless_environment()
    parameters = {**runner.headless_parameters(notebook, tiny, tmp_path / "images"), "model_id": str(tiny["sd"]),
                  "quantization": value}
    result = runner.execute(notebook, tmp_path / "executed.ipynb", parameters)
    assert result.error is None, result.error
    text = {c.id: "".join(o.get("text", "") for o in c.outputs) for c in nbformat.read(result.executed, 4).cells
            if c.cell_type == "code"}
    assert f"({backend})" in text["load-plan"]  # the plan names the backend it chose
    assert "skipped: image2image: unet loaded quantized, and from_pipe cannot share" in text["variants"]
    assert list((tmp_path / "images").glob("text2image-seed*.png"))
