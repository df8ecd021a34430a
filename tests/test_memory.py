from types import SimpleNamespace

import pytest
import torch
from diffusers import StableDiffusionXLImg2ImgPipeline

from helpers import loading, memory


class Tied(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.embed = torch.nn.Embedding(10, 4)
        self.head = torch.nn.Linear(4, 10, bias=False)
        self.head.weight = self.embed.weight


def test_component_table_counts_bytes_by_dtype_and_tied_weights_once():
    pipe = SimpleNamespace(components={
        "text_encoder": Tied().to(torch.bfloat16), "unet": torch.nn.Linear(3, 5), "tokenizer": object(),
    })
    rows = {row.name: row for row in memory.component_table(pipe)}
    assert set(rows) == {"text_encoder", "unet"}
    assert (rows["text_encoder"].params, rows["text_encoder"].bytes, rows["text_encoder"].dtype) == (40, 80, "bfloat16")
    assert (rows["unet"].params, rows["unet"].bytes, rows["unet"].dtype) == (20, 80, "float32")
    table = memory.format_table(pipe)
    assert "text_encoder" in table and table.splitlines()[-1].split()[:2] == ["total", "60"]


def test_shares_weights_after_from_pipe_but_not_after_two_loads(tiny):
    pipe = loading.load_pipeline(str(tiny["sdxl"]), device_map=None)
    variant = loading.from_pipe(StableDiffusionXLImg2ImgPipeline, pipe)
    other = loading.load_pipeline(str(tiny["sdxl"]), device_map=None)
    shared = memory.shared_components(pipe, variant)
    assert shared == dict.fromkeys(["text_encoder", "text_encoder_2", "unet", "vae"], True)
    assert not any(memory.shared_components(pipe, other).values())


def test_shared_components_needs_pipelines():
    with pytest.raises(TypeError, match="needs diffusers pipelines; got a str"):
        memory.shared_components("pipe", "other")


def test_measure_sees_a_new_allocation_and_not_an_empty_block():
    with memory.measure() as grew:
        block = torch.ones(256 * 2**20 // 4)  # 256 MB, touched so it is resident
    assert grew.ram_mb > 192  # RSS moves by ~20 MB on its own in a busy test worker (file pages reclaimed)
    del block
    with memory.measure() as idle:
        pass
    assert abs(idle.ram_mb) < 16
    assert "RAM" in str(idle)


def test_module_dtypes_and_quantized_components_read_the_loaded_modules():
    unet = torch.nn.Linear(2, 2).to(torch.bfloat16)
    vae = torch.nn.Linear(2, 2)
    vae.is_quantized = True  # what diffusers sets on a quantized model
    pipe = SimpleNamespace(components={"unet": unet, "vae": vae, "scheduler": object(), "empty": torch.nn.Module()})
    assert memory.module_dtypes(pipe) == {"unet": torch.bfloat16, "vae": torch.float32}
    assert memory.quantized_components(pipe) == ["vae"]
