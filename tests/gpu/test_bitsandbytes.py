"""bitsandbytes nf4 and LLM.int8 on the tiny SD pipeline: CUDA only, run by `make test-gpu`.

On a machine without CUDA these skip (the CPU side, the decision and the refusal, is in
tests/test_quantization.py). Same path as the notebooks: quantization.pipeline_config ->
loading.load_pipeline(..., quantization_config=...) -> generation.call_arguments -> pipe(**call).
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

from helpers import generation, loading, outputs, quantization

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="bitsandbytes needs a CUDA GPU")

CALL = dict(prompt="a photo of a cat", height=32, width=32, num_inference_steps=2, guidance_scale=4.0, seed=3)


@pytest.mark.parametrize("name, weight_class", [("nf4", "Params4bit"), ("int8", "Int8Params")])
def test_tiny_sd_generates_with_bitsandbytes(tiny, name, weight_class):
    assert quantization.resolve_backend(name) == "bitsandbytes"  # auto on CUDA
    config = quantization.pipeline_config(name, ["unet"], dtype=torch.float16)
    pipe = loading.load_pipeline(str(tiny["sd"]), dtype="float16", device_map="cuda", quantization_config=config)
    kinds = {type(m.weight).__name__ for m in pipe.unet.modules() if isinstance(m, torch.nn.Linear)}
    assert weight_class in kinds, kinds
    image = pipe(**generation.call_arguments(pipe, **CALL)).images[0]
    assert outputs.image_problem(image) is None
    assert np.asarray(image).std() > 0
