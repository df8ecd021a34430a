"""`make bench-gpu`: time to first image, steady-state seconds per image and peak VRAM on a CUDA GPU.

For an SD-1.5-sized (512 px) and an SDXL-sized (1024 px) pipeline with random weights built from the
shipped configs, 30 steps, three ways in fresh processes:
  plain  the usual code: DiffusionPipeline.from_pretrained(path, dtype=torch.bfloat16, device_map="cuda"), then calls;
  kit    helpers.loading.load_pipeline(path) (dtype and device "auto") and helpers.generation.call_arguments;
  fast   kit + channels_last UNet/VAE, fused QKV projections, torch.compile(unet, fullgraph=True),
         and VAE tiling at 1024 px and above.
Writes bench/results/gpu-<date>.json and prints a table. Skips (exit 0) without a CUDA GPU.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from datetime import date
from pathlib import Path

from helpers import KIT_ROOT

BENCH = Path(__file__).resolve().parent
ROOT = KIT_ROOT
CACHE = ROOT / ".cache" / "bench"
MODELS = {"sd15": ("stable-diffusion-v1-5/stable-diffusion-v1-5", 512),
          "sdxl": ("stabilityai/stable-diffusion-xl-base-1.0", 1024)}

BUILD = r"""
import sys, torch
from diffusers import DiffusionPipeline
from helpers import architectures
from tools.tiny.tokenizers import build_clip_tokenizer
model, folder = sys.argv[1], sys.argv[2]
index = architectures.model_index(model)
parts = {}
for name, (library, class_name) in index.items():
    if name.startswith("_") or library is None:
        continue
    if "tokenizer" in name:
        parts[name] = build_clip_tokenizer()
    elif name == "scheduler":
        import diffusers
        parts[name] = getattr(diffusers, class_name).from_pretrained(architectures.folder(model), subfolder="scheduler")
    elif name in ("safety_checker", "feature_extractor"):
        parts[name] = None
    else:
        parts[name] = architectures.build_component(model, name, device="cuda", dtype=torch.bfloat16)
cls = getattr(__import__("diffusers"), index["_class_name"])
extra = {"requires_safety_checker": False} if "safety_checker" in parts else {}
cls(**parts, **extra).save_pretrained(folder)
"""

CASE = r"""
import json, sys, time, torch
path, size, mode = sys.argv[1], int(sys.argv[2]), sys.argv[3]
prompt, steps = "a photo of an astronaut riding a horse", 30
torch.cuda.reset_peak_memory_stats()
start = time.perf_counter()
if mode == "plain":
    from diffusers import DiffusionPipeline
    pipe = DiffusionPipeline.from_pretrained(path, dtype=torch.bfloat16, device_map="cuda")
    call = dict(prompt=prompt, height=size, width=size, num_inference_steps=steps)
else:
    from helpers import generation, loading
    pipe = loading.load_pipeline(path)
    call = generation.call_arguments(pipe, prompt=prompt, height=size, width=size, num_inference_steps=steps,
                                     guidance_scale=7.5, seed=0)
    if mode == "fast":
        pipe.unet.to(memory_format=torch.channels_last)
        pipe.vae.to(memory_format=torch.channels_last)
        pipe.fuse_qkv_projections()
        pipe.unet = torch.compile(pipe.unet, fullgraph=True)
        if size >= 1024:
            pipe.vae.enable_tiling()
pipe.set_progress_bar_config(disable=True)
pipe(**call); torch.cuda.synchronize()
first = time.perf_counter() - start
times = []
for _ in range(3):
    start = time.perf_counter(); pipe(**call); torch.cuda.synchronize(); times.append(time.perf_counter() - start)
print(json.dumps({"first_image_s": first, "s_per_image": sorted(times)[1],
                  "peak_vram_gib": torch.cuda.max_memory_allocated() / 2**30}))
"""


def main() -> int:
    import torch

    if not torch.cuda.is_available():
        print("make bench-gpu: skipped, no CUDA GPU on this machine.")
        return 0
    env = {**os.environ, "KIT_QUIET": "1"}
    rows = []
    for label, (model, size) in MODELS.items():
        folder = CACHE / f"{label}-bf16"
        if not (folder / "model_index.json").is_file():
            subprocess.run([sys.executable, "-c", BUILD, model, str(folder)], check=True, env=env, cwd=ROOT)
        for mode in ("plain", "kit", "fast"):
            out = subprocess.run([sys.executable, "-c", CASE, str(folder), str(size), mode], capture_output=True,
                                 text=True, env=env, cwd=ROOT)
            if out.returncode:
                rows.append({"model": label, "size": size, "mode": mode, "error": out.stderr[-500:]})
                continue
            rows.append({"model": label, "size": size, "mode": mode, **json.loads(out.stdout.strip().splitlines()[-1])})
    (BENCH / "results").mkdir(exist_ok=True)
    path = BENCH / "results" / f"gpu-{date.today().isoformat()}.json"
    path.write_text(json.dumps({"gpu": torch.cuda.get_device_name(0), "rows": rows}, indent=2))
    print(f"{'model':6s} {'px':>5s} {'mode':6s} {'first image s':>14s} {'s/image':>8s} {'peak VRAM GiB':>14s}")
    for row in rows:
        if "error" in row:
            print(f"{row['model']:6s} {row['size']:>5d} {row['mode']:6s} failed: {row['error'].splitlines()[-1]}")
        else:
            print(f"{row['model']:6s} {row['size']:>5d} {row['mode']:6s} {row['first_image_s']:>14.1f} "
                  f"{row['s_per_image']:>8.2f} {row['peak_vram_gib']:>14.1f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
