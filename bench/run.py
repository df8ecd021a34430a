"""`make bench`: the kit's benchmarks on CPU, each against a baseline run side by side, medians of repeats.

Writes bench/results/<date>.json, bench/results/<date>.png (a chart of the ratios) and bench/RESULTS.md.
"""

from __future__ import annotations

import json
import os
import statistics
import subprocess
import sys
import time
from datetime import date
from pathlib import Path

from helpers import KIT_ROOT

BENCH = Path(__file__).resolve().parent
ROOT = KIT_ROOT
sys.path.insert(0, str(BENCH))
PY = sys.executable
ENV = {**os.environ, "KIT_QUIET": "1", "HF_HUB_OFFLINE": "1", "PYTHONWARNINGS": "ignore"}


def python(code: str, *args: str, env: dict | None = None) -> dict:
    """Run `code` in a fresh interpreter; it prints one JSON line last."""
    result = subprocess.run([PY, "-c", code, *args], capture_output=True, text=True, env=env or ENV, cwd=ROOT)
    if result.returncode:
        raise RuntimeError(result.stderr[-3000:])
    return json.loads(result.stdout.strip().splitlines()[-1])


OVERHEAD = r"""
import gc, json, sys, time, statistics, torch
from diffusers import DiffusionPipeline
from helpers import generation, loading, planning
path, size, repeats = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
def raw():
    pipe = DiffusionPipeline.from_pretrained(path, dtype=torch.float32)
    pipe.set_progress_bar_config(disable=True)
    pipe("a photo of a cat", height=size, width=size, num_inference_steps=2, guidance_scale=7.5,
         generator=torch.Generator("cpu").manual_seed(0))
def kit():  # the notebooks' path: the plan, its from_pretrained kwargs, the call from the pipeline's signature
    load_plan = planning.plan_load(path, "cpu", dtype="float32", quantization="none", offload="none",
                                   height=size, width=size)
    pipe = DiffusionPipeline.from_pretrained(path, **loading.plan_kwargs(load_plan, path))
    loading.apply_offload(pipe, load_plan)
    pipe.set_progress_bar_config(disable=True)  # as on the raw side
    pipe(**generation.call_arguments(pipe, prompt="a photo of a cat", height=size, width=size,
                                     num_inference_steps=2, guidance_scale=7.5, seed=0))
times = {"raw": [], "kit": []}
raw(); kit()  # warm the page cache and lazy imports for both
for i in range(repeats):
    for name, fn in (("raw", raw), ("kit", kit)) if i % 2 == 0 else (("kit", kit), ("raw", raw)):
        gc.collect()  # the previous pipeline's reference cycles are freed here, not inside the next timed run
        start = time.perf_counter(); fn(); times[name].append(time.perf_counter() - start)
pairs = [kit_s / raw_s for kit_s, raw_s in zip(times["kit"], times["raw"])]
print(json.dumps({**{k: statistics.median(v) for k, v in times.items()}, "paired_ratio": statistics.median(pairs)}))
"""

LOAD = r"""
import json, sys, time, torch
import diffusers
from diffusers import DiffusionPipeline
path, dtype = sys.argv[1], sys.argv[2]
start = time.perf_counter()
pipe = DiffusionPipeline.from_pretrained(path, **({} if dtype == "none" else {"dtype": getattr(torch, dtype)}))
seconds = time.perf_counter() - start
import psutil
print(json.dumps({"seconds": seconds, "parallel": bool(diffusers.utils.constants.HF_ENABLE_PARALLEL_LOADING),
                  "rss_gb": psutil.Process().memory_info().rss / 1e9, "dtype": str(pipe.unet.dtype)}))
"""

IMPORTS = r"""
import json, time
start = time.perf_counter()
import diffusers
from diffusers import DiffusionPipeline  # what every notebook imports anyway (diffusers loads lazily)
middle = time.perf_counter()
import helpers.env, helpers.loading, helpers.generation, helpers.outputs, helpers.memory, helpers.validate
end = time.perf_counter()
print(json.dumps({"diffusers": middle - start, "helpers_on_top": end - middle}))
"""


def median_of(runs: list[dict], key: str) -> float:
    return statistics.median(run[key] for run in runs)


def bench_overhead(tiny: dict, sd15: Path) -> list[dict]:
    rows = []
    for label, path, size, repeats in (("tiny SD", tiny["sd"], 32, 25), ("tiny Qwen-Image", tiny["qwen-image"], 32, 25),
                                       ("SD-1.5-sized", sd15, 128, 3)):
        result = python(OVERHEAD, str(path), str(size), str(repeats))
        rows.append({"model": label, "raw_s": result["raw"], "kit_s": result["kit"], "repeats": repeats,
                     "ratio": result["paired_ratio"]})
    return rows


def raw_read_seconds(files: list[Path]) -> float:
    start = time.perf_counter()
    subprocess.run(["cat", *map(str, files)], stdout=subprocess.DEVNULL, check=True)
    return time.perf_counter() - start


def bench_load(sd15: Path, files: list[Path], repeats: int = 3) -> list[dict]:
    total_bytes = sum(f.stat().st_size for f in files)
    raw_read_seconds(files)  # warm the page cache
    read = statistics.median(raw_read_seconds(files) for _ in range(repeats))
    rows = [{"case": "cat (raw read)", "seconds": read, "gb_per_s": total_bytes / read / 1e9, "x_raw_read": 1.0}]
    for case, dtype, parallel in (("from_pretrained fp16", "float16", "0"),
                                  ("from_pretrained fp16, parallel loading", "float16", "1"),
                                  ("from_pretrained, dtype forgotten (fp32)", "none", "0")):
        runs = [python(LOAD, str(sd15), dtype, env={**ENV, "HF_ENABLE_PARALLEL_LOADING": parallel})
                for _ in range(repeats)]
        seconds = median_of(runs, "seconds")
        rows.append({"case": case, "seconds": seconds, "gb_per_s": total_bytes / seconds / 1e9,
                     "x_raw_read": seconds / read, "rss_gb": median_of(runs, "rss_gb"), "dtype": runs[0]["dtype"]})
    return rows


def bench_from_pipe() -> list[dict]:
    from from_pipe_memory import run_case

    return [run_case(size, mode) for size in ("tiny", "sd15") for mode in ("raw", "kit")]


PHASES = {
    "imports": {"setup", "imports", "cache"},
    "model build/load": {"vae", "auto-class", "specific", "dtype-load", "local", "file", "publish", "repo-load",
                         "component", "trap", "sizes", "plan", "common", "reference", "balanced"},
    "generation": {"generate", "variants", "autopipe", "vae-compare", "scheduler", "pag", "img2img", "caveat",
                   "safety", "safety-off", "weights", "folder", "name", "tamper", "data-parallel", "device"},
}


def bench_notebooks(tiny: dict, run_folder: Path) -> list[dict]:
    import nbformat

    from tools import runner

    runner.headless_environment()
    rows = []
    for notebook in sorted(runner.NOTEBOOKS.glob("[0-9]*.ipynb")):
        result = runner.execute(notebook, run_folder / notebook.name,
                                runner.headless_parameters(notebook, tiny, run_folder / notebook.stem))
        phases = dict.fromkeys([*PHASES, "other"], 0.0)
        cells = nbformat.read(result.executed, as_version=4).cells
        for cell in cells:
            duration = cell.metadata.get("papermill", {}).get("duration") or 0.0
            phase = next((name for name, ids in PHASES.items() if cell.get("id") in ids), "other")
            phases[phase] += duration
        rows.append({"notebook": notebook.stem, "wall_s": result.seconds, "ok": result.error is None,
                     "kernel start and papermill": result.seconds - sum(phases.values()), **phases})
    return rows


BATCH_OVERHEAD = r"""
import gc, json, shutil, statistics, sys, tempfile, time
from pathlib import Path
import torch
from diffusers import DiffusionPipeline
from helpers import batch
path, size, count, repeats = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4])
pipe = DiffusionPipeline.from_pretrained(path, dtype=torch.float32)
pipe.set_progress_bar_config(disable=True)
prompts = [f"a photo of cat number {i}" for i in range(count)]
items = batch.plan_items(path, batch.rows_from_list(prompts), seeds_per_prompt=1, seed=0, height=size, width=size,
                         num_inference_steps=2, guidance_scale=7.5, dtype="float32")
def plain(folder):
    for item in items:
        pipe(item.prompt, height=size, width=size, num_inference_steps=2, guidance_scale=7.5,
             generator=torch.Generator("cpu").manual_seed(item.seed)).images[0].save(folder / item.file)
def kit(folder):
    job = batch.Job(path, str(folder), items)
    with batch.ManifestLock(folder):
        batch.repair(folder)
        batch.work(job, 0, 1, pipe=pipe)
times = {"plain": [], "kit": []}
for i in range(repeats + 1):
    for name, fn in (("plain", plain), ("kit", kit)) if i % 2 == 0 else (("kit", kit), ("plain", plain)):
        folder = Path(tempfile.mkdtemp(dir=sys.argv[5]))
        gc.collect()
        start = time.perf_counter(); fn(folder); seconds = time.perf_counter() - start
        if i:  # the first round warms caches
            times[name].append(seconds / count)
        shutil.rmtree(folder)
folder = Path(tempfile.mkdtemp(dir=sys.argv[5]))
kit(folder)
start = time.perf_counter(); kit(folder); resume_s = time.perf_counter() - start  # all skipped: hash checks only
shutil.rmtree(folder)
pairs = [k / p for k, p in zip(times["kit"], times["plain"])]
print(json.dumps({"plain_s": statistics.median(times["plain"]), "kit_s": statistics.median(times["kit"]),
                  "ratio": statistics.median(pairs), "resume_check_s": resume_s / count}))
"""

BATCH_SCALE = r"""
import json, sys
from helpers import batch
path, out, processes, count = sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4])
items = batch.plan_items(path, batch.rows_from_list([f"a photo of dog number {i}" for i in range(count)]),
                         seeds_per_prompt=1, seed=0, height=32, width=32, num_inference_steps=2, guidance_scale=7.5,
                         dtype="float32")
summary = batch.launch(batch.Job(path, out, items), processes)
busy = sum(e["seconds"] for e in batch.read_manifest(out).values())
print(json.dumps({**summary, "busy_s_per_image": busy / count}))
"""

BATCH_MACHINERY = r"""
import json, statistics, sys, tempfile, time
from pathlib import Path
import numpy as np
from PIL import Image
from helpers import batch, outputs
size, repeats = int(sys.argv[1]), int(sys.argv[2])
rng = np.random.default_rng(0)
items = batch.plan_items("m", batch.rows_from_list([f"p{i}" for i in range(repeats)]), seeds_per_prompt=1, seed=0,
                         height=size, width=size, num_inference_steps=2, guidance_scale=7.5, dtype="float32")
images = [Image.fromarray(rng.integers(0, 256, (size, size, 3), dtype=np.uint8)) for _ in range(repeats)]
folder = Path(tempfile.mkdtemp(dir=sys.argv[3]))
plain, kit, check = [], [], []
for item, image in zip(items, images):
    start = time.perf_counter(); image.save(folder / f"plain-{item.id}.png"); plain.append(time.perf_counter() - start)
    start = time.perf_counter()
    metadata = {"model_id": "m", "parameters": item.call_parameters()}
    entry = batch.save_item(folder, image, metadata, item, 0, 0.0, "bench")
    kit.append(time.perf_counter() - start)
    start = time.perf_counter(); assert batch.is_done(folder, entry); check.append(time.perf_counter() - start)
print(json.dumps({"size": size, "plain_save_ms": 1000 * statistics.median(plain),
                  "batch_save_ms": 1000 * statistics.median(kit), "resume_check_ms": 1000 * statistics.median(check),
                  "png_kb": (folder / entry["file"]).stat().st_size / 1024}))
"""


def bench_batch(tiny: dict, run_folder: Path) -> dict:
    """helpers.batch: per-image cost of manifest + resume against a plain loop on one pipeline; images/s."""
    run_folder.mkdir(parents=True, exist_ok=True)
    overhead = []
    for size, count, repeats in ((32, 12, 3), (128, 4, 2)):
        result = python(BATCH_OVERHEAD, str(tiny["sd"]), str(size), str(count), str(repeats), str(run_folder))
        overhead.append({"size": size, "images": count, "repeats": repeats, **result})
    scale = []
    for processes in (1, 2):
        result = python(BATCH_SCALE, str(tiny["sd"]), str(run_folder / f"batch-{processes}"), str(processes), "24")
        scale.append({"processes": processes, "images": result["images"], "seconds": result["seconds"],
                      "images_per_s": result["images_per_s"], "busy_s_per_image": result["busy_s_per_image"]})
    machinery = [python(BATCH_MACHINERY, str(size), str(count), str(run_folder))
                 for size, count in ((32, 40), (1024, 15))]
    return {"machinery": machinery, "overhead": overhead, "scale": scale}


def batch_markdown(results: dict) -> list[str]:
    lines = ["", "## Batch generation (helpers.batch): manifest + resume overhead, and scale-out (target <= 1.05)", "",
             "Per image, tiny SD, 2 steps, one pipeline: a plain loop (`pipe(...)`, `image.save`) against `batch.work`",
             "(ids, resume check, PNG with metadata written under `.partial/`, fsync, rename, manifest line fsync'd).",
             "Alternating order, median of the per-repeat ratios. `resume check` is a second run where every image",
             "is already done (sha256 of each PNG).", "",
             "| size | images | repeats | plain s/image | batch s/image | batch / plain | resume check s/image |",
             "|---:|---:|---:|---:|---:|---:|---:|"]
    lines += [f"| {r['size']} px | {r['images']} | {r['repeats']} | {r['plain_s']:.4f} | {r['kit_s']:.4f} | "
              f"{r['ratio']:.3f} | {r['resume_check_s']:.5f} |" for r in results["overhead"]]
    lines += ["", "The saving machinery alone, on a fixed random image (no pipeline, so machine load matters less):",
              "`image.save` vs `batch.save_item` (PNG with metadata, fsync, rename, manifest line, fsync),",
              "median ms.", "",
              "| size | PNG KiB | image.save ms | batch.save_item ms | added ms/image | resume check ms/image |",
              "|---:|---:|---:|---:|---:|---:|"]
    lines += [f"| {r['size']} px | {r['png_kb']:.0f} | {r['plain_save_ms']:.2f} | {r['batch_save_ms']:.2f} | "
              f"{r['batch_save_ms'] - r['plain_save_ms']:.2f} | {r['resume_check_ms']:.2f} |"
              for r in results.get("machinery", [])]
    lines += ["", "24 images at 32 px through `batch.launch` (notebook_launcher; CPU processes over gloo). The run's",
              "wall time includes starting the processes and loading one pipeline per process.", "",
              "| processes | images | run s | images/s | busy s/image |", "|---:|---:|---:|---:|---:|"]
    lines += [f"| {r['processes']} | {r['images']} | {r['seconds']:.1f} | {r['images_per_s']:.2f} | "
              f"{r['busy_s_per_image']:.3f} |" for r in results["scale"]]
    return lines


def bench_imports(repeats: int = 5) -> dict:
    """Imports in a fresh interpreter, with the venv byte-compiled as `make install` leaves it, and without .pyc
    (what every kernel paid when nothing wrote them: PYTHONDONTWRITEBYTECODE=1, pip --no-compile).

    Both read .pyc from a private PYTHONPYCACHEPREFIX (a compiled one, an empty one), so the venv is not changed.
    """
    import sysconfig
    import tempfile

    venv_lib = Path(sysconfig.get_paths()["purelib"]).parent.parent
    with tempfile.TemporaryDirectory() as compiled, tempfile.TemporaryDirectory() as empty:
        start = time.perf_counter()
        subprocess.run([PY, "-m", "compileall", "-q", "-j", "0", str(venv_lib)], capture_output=True,
                       env={**ENV, "PYTHONPYCACHEPREFIX": compiled})
        compile_s = time.perf_counter() - start
        runs = {label: [python(IMPORTS, env={**ENV, "PYTHONPYCACHEPREFIX": prefix, "PYTHONDONTWRITEBYTECODE": "1"})
                        for _ in range(repeats)] for label, prefix in (("compiled", compiled), ("no_pyc", empty))}
    return {"diffusers_s": median_of(runs["compiled"], "diffusers"),
            "helpers_on_top_s": median_of(runs["compiled"], "helpers_on_top"),
            "diffusers_no_pyc_s": median_of(runs["no_pyc"], "diffusers"), "compileall_s": compile_s,
            "repeats": repeats}


def bench_quant_memory() -> list[dict]:
    import quant_memory

    return quant_memory.run()


def chart(results: dict, path: Path) -> None:
    """Horizontal bars of each ratio against its baseline (1.0 = same as the baseline)."""
    from PIL import Image, ImageDraw

    bars = [(f"overhead {r['model']}", r["ratio"]) for r in results["overhead"]]
    bars += [(r["case"], r["x_raw_read"]) for r in results["load"][1:]]
    width, row, left, scale = 900, 28, 330, 120
    image = Image.new("RGB", (width, row * (len(bars) + 2)), "white")
    draw = ImageDraw.Draw(image)
    draw.text((10, 6), "ratio to baseline (kit / raw diffusers; load time / raw file read)", fill="black")
    for i, (label, value) in enumerate(bars, start=1):
        y = i * row + 6
        draw.text((10, y + 4), label[:48], fill="black")
        draw.rectangle([left, y, left + int(min(value, 4.5) * scale), y + row - 10], fill=(70, 110, 180))
        draw.text((left + int(min(value, 4.5) * scale) + 6, y + 4), f"{value:.2f}", fill="black")
    draw.line([left + scale, row, left + scale, row * (len(bars) + 1)], fill="red")
    image.save(path)


def markdown(results: dict) -> str:
    lines = [f"# Benchmark results ({results['date']}, {results['machine']})", "",
             "Medians of repeated runs, each measured beside its baseline in the same invocation. "
             "Produced by `make bench` (`python bench/run.py`).", "",
             "## Kit overhead: load + generate through helpers vs the same raw diffusers calls (target <= 1.02)", "",
             "Each repeat runs both, in alternating order; the ratio is the median of the per-repeat kit/raw",
             "ratios.", "",
             "| model | repeats | raw s (median) | kit s (median) | kit / raw |", "|---|---:|---:|---:|---:|"]
    lines += [f"| {r['model']} | {r['repeats']} | {r['raw_s']:.3f} | {r['kit_s']:.3f} | {r['ratio']:.3f} |"
              for r in results["overhead"]]
    lines += ["", "## Loading the SD-1.5-sized fp16 checkpoint (page cache warm)", "",
              "| case | s | GB/s | x raw read | RSS GB | dtype |", "|---|---:|---:|---:|---:|---|"]
    lines += [f"| {r['case']} | {r['seconds']:.2f} | {r['gb_per_s']:.2f} | {r['x_raw_read']:.2f} | "
              f"{r.get('rss_gb', 0):.2f} | {r.get('dtype', '')} |" for r in results["load"]]
    lines += ["", "## from_pipe memory: RSS growth creating an img2img pipeline from a bf16 pipeline", "",
              "| model | from_pipe | weights MB | RSS growth MB | x weights |", "|---|---|---:|---:|---:|"]
    lines += [f"| {r['size']} | {r['mode']} | {r['weights_mb']:.1f} | {r['rss_growth_mb']:.1f} | "
              f"{r['fraction_of_weights']:.2f} |" for r in results["from_pipe"]]
    phases = [*PHASES, "other"]
    lines += ["", "## Notebook suite on the tiny models (seconds)", "",
              "| notebook | wall | kernel start + papermill | " + " | ".join(phases) + " |",
              "|---|" + "---:|" * (len(phases) + 2)]
    lines += [f"| {r['notebook']} | {r['wall_s']:.1f} | {r['kernel start and papermill']:.1f} | "
              + " | ".join(f"{r[p]:.1f}" for p in phases) + " |" for r in results["notebooks"]]
    imports = results["imports"]
    lines += ["", "## Import cost", "", f"`import diffusers` and `from diffusers import DiffusionPipeline`, median of "
              f"{imports['repeats']}: {imports['diffusers_s']:.2f} s with the venv byte-compiled (`make install` runs "
              f"`compileall -j 0` once: {imports['compileall_s']:.0f} s), {imports['diffusers_no_pyc_s']:.2f} s "
              f"without .pyc (every kernel start before); the helpers modules on top of it: "
              f"{imports['helpers_on_top_s']:.3f} s.", ""]
    if "batch" in results:
        lines += batch_markdown(results["batch"])
    if "quant_memory" in results:
        import quant_memory

        lines += quant_memory.markdown(results["quant_memory"])
    return "\n".join(lines)


def main() -> None:
    import platform

    from sd15 import build, weight_files

    from tools.tiny import build_all

    start = time.perf_counter()
    tiny = build_all(ROOT / ".cache" / "tiny")
    sd15 = build()
    stamp = date.today().isoformat()
    results_dir = BENCH / "results"
    results_dir.mkdir(exist_ok=True)
    run_folder = ROOT / "runs" / f"bench-{stamp}-{os.getpid()}"
    results = {"date": stamp, "machine": f"{platform.machine()}, {os.cpu_count()} cores, {platform.python_version()}"}
    for name, step in (("overhead", lambda: bench_overhead(tiny, sd15)),
                       ("load", lambda: bench_load(sd15, weight_files())),
                       ("from_pipe", bench_from_pipe),
                       ("notebooks", lambda: bench_notebooks(tiny, run_folder)),
                       ("imports", bench_imports),
                       ("batch", lambda: bench_batch(tiny, run_folder / "batch")),
                       ("quant_memory", bench_quant_memory)):
        step_start = time.perf_counter()
        results[name] = step()
        print(f"{name}: {time.perf_counter() - step_start:.0f} s", flush=True)
    results["total_s"] = time.perf_counter() - start
    (results_dir / f"{stamp}.json").write_text(json.dumps(results, indent=2))
    chart(results, results_dir / f"{stamp}.png")
    footer = f"\nChart: results/{stamp}.png. Total {results['total_s']:.0f} s.\n"
    (BENCH / "RESULTS.md").write_text(markdown(results) + footer)
    print((BENCH / "RESULTS.md").read_text())


if __name__ == "__main__":
    main()
