"""Predicted vs measured weight memory of real-sized UNets, unquantized (bf16) and quantized, on CPU.

The SD-1.5 UNet (860M params) and the SDXL UNet (2.6B) are built once with random weights from the
shipped configs and saved in bf16 under .cache/bench/quant/. Each case then loads one in a fresh process
through diffusers' own path, `UNet2DConditionModel.from_pretrained(folder, dtype=torch.bfloat16,
quantization_config=...)` with the config `helpers.quantization` builds (torchao int8 weight-only, quanto
int8), and measures:
  stored  the bytes of every tensor the model holds (parameters and buffers; a quantized tensor subclass is
          unwrapped into the tensors it stores: data, scales, zero points): exact, what the prediction predicts;
  rss     the process's RSS growth over the load (`disable_mmap=True`, after gc and glibc's malloc_trim), a
          cross-check by the operating system; also the growth right after the load, before malloc_trim (what
          the load's freed temporaries still hold in the heap).
The prediction is `quantized_bytes` (below) on the model built on the meta device.
Run alone: `python bench/quant_memory.py`; `make bench` runs it as one section.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

BENCH = Path(__file__).resolve().parent
ROOT = BENCH.parent
CACHE = ROOT / ".cache" / "bench" / "quant"
MODELS = {"SD-1.5 UNet": "stable-diffusion-v1-5/stable-diffusion-v1-5",
          "SDXL UNet": "stabilityai/stable-diffusion-xl-base-1.0"}
CASES = [("bf16", "none", None), ("torchao int8 weight-only", "int8", "torchao"), ("quanto int8", "int8", "quanto")]

BUILD = r"""
import sys, torch
from helpers import architectures
model, folder = sys.argv[1], sys.argv[2]
architectures.build_component(model, "unet", device="cpu", dtype=torch.bfloat16).save_pretrained(folder)
"""

MEASURE = r"""
import ctypes, gc, json, sys, psutil, torch
from diffusers import UNet2DConditionModel
from bench.quant_memory import quantized_bytes, stored_bytes
from helpers import architectures, quantization
model, folder, name, backend = sys.argv[1:5]
backend = None if backend == "-" else backend
config = None
if name != "none":  # build the config (and import the backend) before the baseline RSS
    config = quantization.pipeline_config(name, ["unet"], backend, device="cpu", dtype=torch.bfloat16)
    config = config.quant_mapping["unet"]
meta = architectures.build_component(model, "unet", "meta", torch.bfloat16)
predicted = quantized_bytes(meta, name, backend, torch.bfloat16)
del meta
gc.collect()
process = psutil.Process()
before = process.memory_info().rss
# disable_mmap: every weight is then a copy in anonymous memory; with the default mmap, unquantized weights
# stay views of the file's pages and RSS counts what was read of the file, not what the model holds.
unet = UNet2DConditionModel.from_pretrained(folder, dtype=torch.bfloat16, quantization_config=config,
                                            disable_mmap=True)
gc.collect()
rss_after_load = process.memory_info().rss - before
ctypes.CDLL("libc.so.6").malloc_trim(0)  # hand back the heap pages the load's temporaries left behind
rss = process.memory_info().rss - before
stored = stored_bytes(unet)
print(json.dumps({"predicted": predicted, "stored": stored, "rss": rss, "rss_after_load": rss_after_load}))
"""


def _tensor_bytes(tensor, seen: set) -> int:
    """Bytes a tensor stores, unwrapping quantized subclasses (`__tensor_flatten__`) into their inner tensors."""
    import torch

    if hasattr(tensor, "__tensor_flatten__") and type(tensor) not in (torch.Tensor, torch.nn.Parameter):
        names, _ = tensor.__tensor_flatten__()
        return sum(_tensor_bytes(getattr(tensor, name), seen) for name in names)
    data = tensor.data if isinstance(tensor, torch.nn.Parameter) else tensor
    if type(data) not in (torch.Tensor, torch.nn.Parameter) and hasattr(data, "__tensor_flatten__"):
        return _tensor_bytes(data, seen)
    storage = data.untyped_storage()
    key = (storage.data_ptr(), storage.nbytes())
    if key in seen or data.device.type == "meta":
        return 0 if key in seen else data.numel() * data.element_size()
    seen.add(key)
    return storage.nbytes()


def stored_bytes(module) -> int:
    """Measured bytes of every parameter and buffer `module` holds (shared storage once): the weight memory."""
    seen: set = set()
    tensors = {id(t): t for t in [*module.parameters(), *module.buffers()]}
    return sum(_tensor_bytes(t, seen) for t in tensors.values())


# The exact layout each backend stores (a finer model than the planner's weight_bytes_per_param), checked here
# and in tests/test_quantization.py against what the loaded modules really hold.
def linear_weight_bytes(rows: int, cols: int, quantization: str, backend: str, dtype_bytes: int = 2) -> int:
    """Bytes one quantized `nn.Linear(cols, rows)` weight stores, with its scales, as each backend lays it out."""
    import math

    from helpers.planning import weight_bytes_per_param
    from helpers.rules import parse_quantization

    name, _ = parse_quantization(quantization)
    numel = rows * cols
    if backend == "torchao":  # int8 data, a float32 scale and an int8 zero point per row
        return numel + rows * 5
    if backend == "quanto" and name == "int8":  # a scale per row, and input/output scale buffers
        return numel + rows * dtype_bytes + 2 * dtype_bytes
    if backend == "quanto" and name == "int4":  # a scale and a shift per group (per row without groups)
        # optimum-quanto's group size (QModuleMixin.__init__): 128, lowered by 32 until it divides in_features
        group = next((g for g in (128, 96, 64, 32) if cols % g == 0), None) if cols > 128 else None
        groups = numel // group if group else rows
        return math.ceil(numel / 2) + groups * 2 * dtype_bytes + 2 * dtype_bytes
    if backend == "bitsandbytes" and name == "nf4":  # a float32 absmax per block of 64
        return math.ceil(numel / 2) + math.ceil(numel / 64) * 4
    if backend == "bitsandbytes" and name == "int8":  # LLM.int8: a float32 scale per row
        return numel + rows * 4
    return math.ceil(numel * weight_bytes_per_param(quantization, backend))


def quantized_bytes(module, quantization: str, backend: str | None, dtype=None) -> int:
    """Predicted weight bytes of `module` (meta is enough) after quantized loading; non-Linear weights keep `dtype`
    (default bfloat16)."""
    import torch

    from helpers.rules import parse_quantization

    dtype = torch.bfloat16 if dtype is None else dtype
    dtype_bytes = torch.empty((), dtype=dtype).element_size()
    name, _ = parse_quantization(quantization)
    return sum(linear_weight_bytes(p.shape[0], p.shape[1], name, backend, dtype_bytes)
               if name != "none" and backend and n.rpartition(".")[2] == "weight"
               and isinstance(module.get_submodule(n.rpartition(".")[0]), torch.nn.Linear) else p.numel() * dtype_bytes
               for n, p in module.named_parameters())


def _python(code: str, *args: str) -> dict:
    env = {**os.environ, "KIT_QUIET": "1", "HF_HUB_OFFLINE": "1", "PYTHONWARNINGS": "ignore"}
    result = subprocess.run([sys.executable, "-c", code, *args], capture_output=True, text=True, env=env, cwd=ROOT)
    if result.returncode:
        raise RuntimeError(result.stderr[-3000:])
    lines = result.stdout.strip().splitlines()
    return json.loads(lines[-1]) if lines else {}


def build(model_id: str) -> Path:
    folder = CACHE / model_id.split("/")[-1]
    if not (folder / "config.json").is_file():
        _python(BUILD, model_id, str(folder))
    return folder


def run() -> list[dict]:
    rows = []
    for label, model_id in MODELS.items():
        folder = build(model_id)
        for case, name, backend in CASES:
            result = _python(MEASURE, model_id, str(folder), name, backend or "-")
            rows.append({"model": label, "case": case, **result,
                         "error_stored": result["predicted"] / result["stored"] - 1,
                         "error_rss": result["predicted"] / result["rss"] - 1})
            print(f"  {label}, {case}: {rows[-1]}", flush=True)
    return rows


def markdown(rows: list[dict]) -> list[str]:
    gib = 2**30
    lines = ["## Quantized weight memory: predicted vs measured (CPU, random weights at real size)", "",
             "`bench/quant_memory.quantized_bytes` (Linear weights quantized, everything else bf16) against the",
             "UNet loaded by `UNet2DConditionModel.from_pretrained(..., quantization_config=...)` in a fresh process.",
             "stored = bytes of every tensor the model holds (quantized tensors unwrapped into data + scales):",
             "what the prediction predicts. RSS = the process's RSS growth over the load with `disable_mmap=True`,",
             "after gc and malloc_trim (a cross-check by the OS); 'before trim' is the same right after the load.",
             "Only `nn.Linear` weights are quantized; convolutions stay bf16. By parameters the SD-1.5 UNet is 31%",
             "Linear (int8 saves 16%), the SDXL UNet 87% (saves 43%), Qwen-Image's and FLUX's transformers 100%.", "",
             "| model | weights | predicted GiB | stored GiB | error | RSS growth GiB | error vs RSS "
             "| before trim GiB |",
             "|---|---|---:|---:|---:|---:|---:|---:|"]
    lines += [f"| {r['model']} | {r['case']} | {r['predicted'] / gib:.3f} | {r['stored'] / gib:.3f} | "
              f"{r['error_stored']:+.1%} | {r['rss'] / gib:.3f} | {r['error_rss']:+.1%} | "
              f"{r['rss_after_load'] / gib:.3f} |" for r in rows]
    return lines + [""]


if __name__ == "__main__":
    from datetime import date

    table = run()
    (BENCH / "results").mkdir(exist_ok=True)
    (BENCH / "results" / f"quant-{date.today().isoformat()}.json").write_text(json.dumps(table, indent=2))
    print("\n".join(markdown(table)))
