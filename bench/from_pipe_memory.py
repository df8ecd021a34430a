"""RSS growth of creating an img2img pipeline with from_pipe: raw diffusers vs the kit's guard.

Each case runs in a fresh process: a bf16 StableDiffusionPipeline (tiny, or SD-1.5-sized with random
weights built from the shipped configs), then `StableDiffusionImg2ImgPipeline.from_pipe(pipe)` (raw,
which upcasts the shared modules to fp32) or `helpers.loading.from_pipe` (keeps bf16).

    python bench/from_pipe_memory.py [--sizes tiny sd15] [--json out.json]
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys

CASE = r"""
import gc, json, sys, torch
from helpers import architectures, loading, memory
from tools.tiny.pipelines import tiny_stable_diffusion
from tools.tiny.tokenizers import build_clip_tokenizer
from diffusers import PNDMScheduler, StableDiffusionImg2ImgPipeline, StableDiffusionPipeline

size, mode = sys.argv[1], sys.argv[2]
if size == "tiny":
    pipe = tiny_stable_diffusion().to(torch.bfloat16)
else:
    model = "stable-diffusion-v1-5/stable-diffusion-v1-5"
    build = lambda name: architectures.build_component(model, name, device="cpu", dtype=torch.bfloat16)
    pipe = StableDiffusionPipeline(
        vae=build("vae"), text_encoder=build("text_encoder"), tokenizer=build_clip_tokenizer(), unet=build("unet"),
        scheduler=PNDMScheduler.from_pretrained(architectures.folder(model), subfolder="scheduler"),
        safety_checker=None, feature_extractor=None, requires_safety_checker=False,
    )
weights_mb = sum(row.bytes for row in memory.component_table(pipe)) / 2**20
with memory.measure() as grew:
    if mode == "raw":
        variant = StableDiffusionImg2ImgPipeline.from_pipe(pipe)
    else:
        variant = loading.from_pipe(StableDiffusionImg2ImgPipeline, pipe)
dtypes = sorted({str(d) for d in memory.module_dtypes(pipe).values()})
print(json.dumps({"size": size, "mode": mode, "weights_mb": weights_mb, "rss_growth_mb": grew.ram_mb,
                  "fraction_of_weights": grew.ram_mb / weights_mb, "source_dtypes_after": dtypes}))
"""


def run_case(size: str, mode: str) -> dict:
    result = subprocess.run([sys.executable, "-c", CASE, size, mode], capture_output=True, text=True, check=True)
    return json.loads(result.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes", nargs="+", default=["tiny", "sd15"], choices=["tiny", "sd15"])
    parser.add_argument("--json", help="also write the rows to this file")
    args = parser.parse_args()
    rows = [run_case(size, mode) for size in args.sizes for mode in ("raw", "kit")]
    print(f"{'model':6s} {'from_pipe':10s} {'weights MB':>11s} {'RSS growth MB':>14s} {'x weights':>10s}  source after")
    for row in rows:
        print(f"{row['size']:6s} {row['mode']:10s} {row['weights_mb']:>11.1f} {row['rss_growth_mb']:>14.1f} "
              f"{row['fraction_of_weights']:>10.2f}  {', '.join(row['source_dtypes_after'])}")
    if args.json:
        with open(args.json, "w") as file:
            json.dump(rows, file, indent=2)


if __name__ == "__main__":
    main()
