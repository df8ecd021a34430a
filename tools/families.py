"""The family matrix (`make families`): every tiny family through plain diffusers, then through its notebook.

For each family: build the tiny pipeline (tools.tiny), load it back with `DiffusionPipeline.from_pretrained`,
run a 2-step call with plain diffusers ("plain-diffusers call works"), then run notebook 02 (image families)
or 07 (video families) headless on it with tools.runner, and write docs/FAMILIES.md: family, class, plain
diffusers ok, notebook run, sections skipped and why, and the first line of each failure.
"""

from __future__ import annotations

import argparse
import inspect
import json
import time
from pathlib import Path

from . import runner
from .tiny import FAMILY_BUILDERS, build_all, build_families

REPORT = runner.ROOT / "docs" / "FAMILIES.md"
# Families of the standard tiny set (tools.tiny.build_all) that the matrix covers too.
STANDARD = ("sd", "sdxl", "qwen-image", "wan-t2v", "wan-i2v")
# Call arguments a family needs at the matrix's tiny sizes that no notebook parameter covers.
EXTRA = {"pixart-sigma": {"use_resolution_binning": False}}
# The text-to-video partner of an image-to-video family, for notebook 07's first half.
T2V_PARTNER = {"ltx-i2v": "ltx-video", "wan-i2v": "wan-t2v"}


def frames_for(pipe) -> int:
    """The smallest frame count >= 5 the family's VAE accepts (k * t + 1)."""
    from helpers import generation

    factor = generation.temporal_factor(pipe) or 1
    return next(n for n in range(5, 200) if (n - 1) % factor == 0)


def plain_call(folder: Path) -> dict:
    """Load with plain diffusers and run 2 steps; what it made, or the first line of the error."""
    import numpy as np
    import torch
    from diffusers import DiffusionPipeline
    from PIL import Image

    from helpers import generation, video

    row = {}
    try:
        pipe = DiffusionPipeline.from_pretrained(folder)
        pipe.set_progress_bar_config(disable=True)
        row["class"] = type(pipe).__name__
        row["task"] = video.pipeline_task(type(pipe))
        size = max(32, generation.size_multiple(pipe))
        accepted = inspect.signature(type(pipe).__call__).parameters
        call = dict(prompt="a red fox in the forest", num_inference_steps=2, height=size, width=size,
                    generator=torch.Generator().manual_seed(0), **EXTRA.get(folder.name, {}))
        if "num_frames" in accepted:
            call["num_frames"] = row["num_frames"] = frames_for(pipe)
        if row["task"] == "image-to-video":
            call["image"] = Image.new("RGB", (size, size), "red")
        output = pipe(**call)
        result = output.frames[0] if hasattr(output, "frames") else output.images[0]
        array = video.as_array(result) if "num_frames" in accepted else np.asarray(result, dtype=np.float32)
        row["size"] = size
        row["plain"] = "ok" if np.isfinite(array).all() and array.std() > 0 else "blank or NaN output"
    except Exception as error:  # the matrix records every failure and goes on
        row["plain"] = f"{type(error).__name__}: {str(error).splitlines()[0][:160]}"
    return row


def skipped_sections(executed: Path) -> list[str]:
    """Lines a notebook printed that start with "skipped:" (its optional sections and why)."""
    import nbformat

    found = []
    for cell in nbformat.read(executed, as_version=4).cells:
        for output in cell.get("outputs", []):
            for line in output.get("text", "").splitlines():
                if "skipped" in line and ":" in line:  # paths relative to the checkout: the report is committed
                    found.append(f"{cell.id}: {line.strip().replace(str(runner.ROOT) + '/', '')[:140]}")
    return found


def notebook_run(name: str, folder: Path, row: dict, tiny: dict, paths: dict, run_folder: Path) -> dict:
    """Run 02 (image) or 07 (video) headless on the family; the failing cell and first error line, if any."""
    video = row.get("task") in ("text-to-video", "image-to-video")
    notebook = runner.NOTEBOOKS / ("07_video_pipelines.ipynb" if video else "02_load_and_generate.ipynb")
    parameters = runner.headless_parameters(notebook, tiny, run_folder / name)
    parameters["height"] = parameters["width"] = row.get("size", 32)
    if video:
        parameters["num_frames"] = row.get("num_frames", 5)
        if row["task"] == "image-to-video":
            parameters["i2v_model_id"] = str(folder)
            parameters["t2v_model_id"] = str(paths[T2V_PARTNER.get(name, "wan-t2v")])
        else:
            parameters["t2v_model_id"] = str(folder)
            parameters["run_image_to_video"] = False
    else:
        parameters["model_id"] = str(folder)
    if name in EXTRA:
        parameters["pipeline_kwargs"] = EXTRA[name]
    result = runner.execute(notebook, run_folder / f"{name}.ipynb", parameters)
    error = result.error
    failure = None if error is None else f"{error.cell.split(' (')[0]}: {error.error.splitlines()[0][:160]}"
    return {"notebook": notebook.stem[:2], "seconds": round(result.seconds, 1), "notebook_result": failure or "ok",
            "skipped": skipped_sections(result.executed) if result.executed.is_file() else []}


def write_report(rows: dict, path: Path = REPORT) -> None:
    lines = ["# Family matrix", "",
             "`make families` (tools/families.py) builds a tiny random-weight pipeline for each family (tools/tiny),",
             "loads it back with `DiffusionPipeline.from_pretrained`, runs a 2-step call with plain diffusers,",
             "then runs notebook 02 (image) or 07 (video) headless on it. Tiny sizes: 32 px (64 for Kandinsky 3),",
             "2 steps, CPU, float32. A notebook failure is the first line of the error and the cell it happened in.",
             "The runs are the branch's own notebooks: rerun after a merge.", "",
             "| family | class | plain diffusers | notebook | result | skipped sections |",
             "|---|---|---|---|---|---|"]
    for name, row in rows.items():
        skipped = "<br>".join(row.get("skipped", [])) or "-"
        lines.append(f"| {name} | {row.get('class', '?')} | {row['plain']} | {row.get('notebook', '-')} | "
                     f"{row.get('notebook_result', 'not run')} | {skipped} |".replace("\n", " "))
    ok = sum(row.get("notebook_result") == "ok" for row in rows.values())
    lines += ["", f"Notebook runs ok: {ok} of {len(rows)}; plain diffusers ok: "
              f"{sum(row['plain'] == 'ok' for row in rows.values())} of {len(rows)}.", ""]
    path.write_text("\n".join(lines))


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("families", nargs="*", help=f"default: all ({', '.join(STANDARD + tuple(FAMILY_BUILDERS))})")
    parser.add_argument("--no-notebooks", action="store_true", help="only the plain-diffusers call")
    parser.add_argument("--report", type=Path, default=REPORT)
    args = parser.parse_args(argv)
    runner.headless_environment()
    tiny = build_all(runner.TINY_DIR)
    names = args.families or list(STANDARD + tuple(FAMILY_BUILDERS))
    paths = {**tiny, **build_families(runner.TINY_DIR / "families", [n for n in names if n in FAMILY_BUILDERS])}
    if any(n in FAMILY_BUILDERS for n in T2V_PARTNER.values()):
        paths.update(build_families(runner.TINY_DIR / "families", ["ltx-video"]))
    run_folder = runner.new_run_folder(runner.RUNS / "families")
    rows = {}
    for name in names:
        start = time.perf_counter()
        rows[name] = plain_call(paths[name])
        if not args.no_notebooks and "class" in rows[name]:
            rows[name].update(notebook_run(name, paths[name], rows[name], tiny, paths, run_folder))
        print(f"{name}: {json.dumps(rows[name])} ({time.perf_counter() - start:.0f} s)", flush=True)
    write_report(rows, args.report)
    print(f"wrote {args.report}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
