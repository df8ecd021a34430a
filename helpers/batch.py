"""Batch generation that survives disconnects and scales out with accelerate (notebook 06).

A batch is a list of *items*: one prompt, one seed and the call parameters. An item's id is a hash of the
model, dtype, quantization, call parameters, prompt and seed, so the same request has the same id whoever
renders it and however many processes share the work.

What lands in `output_dir`:
- `<id>.png`: the image, with the kit's generation metadata (`helpers.outputs.save_image`). It is written
  under `.partial/`, fsync'd, then `os.replace`d into place: a PNG under its real name is always complete.
- `manifest.jsonl`: one line per finished image (id, file, sha256, seconds, rank...), appended and fsync'd
  only after its PNG is in place. A kill at any moment loses at most the images in flight.
- `runs.jsonl`: one summary line per run.  `.manifest.lock`: held (fcntl) by the run using the folder, so a
  second run refuses with a clear message instead of interleaving with the first. (The lock is a separate
  file because the manifest itself is replaced when it is compacted.)

Resume: an id is done when its manifest line names a PNG that exists with the recorded sha256. Anything
else (no line, a missing or changed PNG, leftovers in `.partial/`) is rendered again, its new line appended;
at the end of a run the lock holder compacts the manifest back to one line per id (atomic rewrite).

Scale: `run_process` is the one function every process runs. It reads its rank and the world size from
accelerate's `PartialState` and takes every `world`-th id of the sorted ids (`shard`), so processes and
machines never render the same item. `launch` runs it from a notebook through `accelerate.notebook_launcher`;
`accelerate launch -m helpers.batch ...` runs it from a shell, on one machine or several.

Importing this module is light (no torch, no diffusers): the notebook checks the prompts file and the output
folder with it before anything loads.
"""

from __future__ import annotations

import argparse
import dataclasses
import fcntl
import hashlib
import json
import os
import shutil
import socket
import threading
import time
import uuid
from pathlib import Path

from . import rules
from .errors import InvalidParameterError, KitError
from .prompts_file import COLUMNS, PromptsFileError, read_prompts  # noqa: F401 (part of this module's surface)

MANIFEST, RUNS, LOCK, PARTIAL = "manifest.jsonl", "runs.jsonl", ".manifest.lock", ".partial"


class OutputDirLockedError(KitError, RuntimeError):
    """Another run holds the lock on this output_dir."""


# ---------------------------------------------------------------- items

@dataclasses.dataclass(frozen=True)
class Item:
    """One image to render: the call parameters, where they came from, and the id they hash to."""

    id: str
    prompt: str
    negative_prompt: str
    seed: int
    height: int
    width: int
    num_inference_steps: int
    guidance_scale: float
    source: str  # "line 7" of the prompts file or "prompts[3]"

    @property
    def file(self) -> str:
        return f"{self.id}.png"

    def call_parameters(self) -> dict:
        """The parameters of `helpers.generation.call_arguments` (and of the PNG metadata)."""
        return {"prompt": self.prompt, "negative_prompt": self.negative_prompt, "seed": self.seed,
                "height": self.height, "width": self.width, "num_inference_steps": self.num_inference_steps,
                "guidance_scale": self.guidance_scale}


def item_id(model_id: str, dtype: str, quantization: str, parameters: dict) -> str:
    """sha256 of everything that decides the image (model, precision, call parameters, prompt, seed)."""
    key = {"model_id": str(model_id), "dtype": dtype, "quantization": quantization, **parameters}
    return hashlib.sha256(json.dumps(key, sort_keys=True).encode()).hexdigest()[:24]


def plan_items(model_id: str, rows: list[dict], *, seeds_per_prompt: int, seed: int, height: int, width: int,
               num_inference_steps: int, guidance_scale: float, dtype: str, quantization: str = "none") -> list[Item]:
    """One item per row and seed, duplicates (same id) dropped. Row i without a `seed` column uses seeds
    `seed + i * seeds_per_prompt + j` (j < seeds_per_prompt); with one, `row_seed + j`.
    A row's own `num_inference_steps`/`guidance_scale`/`negative_prompt` override the defaults."""
    items: dict[str, Item] = {}
    for index, row in enumerate(rows):
        base = row["seed"] if "seed" in row else seed + index * seeds_per_prompt
        for offset in range(seeds_per_prompt):
            parameters = {"prompt": row["prompt"], "negative_prompt": row.get("negative_prompt", ""),
                          "seed": base + offset, "height": height, "width": width,
                          "num_inference_steps": row.get("num_inference_steps", num_inference_steps),
                          "guidance_scale": float(row.get("guidance_scale", guidance_scale))}
            identity = item_id(model_id, dtype, quantization, parameters)
            source = f"line {row['line']}" if "line" in row else f"prompts[{index}]"
            items.setdefault(identity, Item(id=identity, source=source, **parameters))
    return list(items.values())


def rows_from_list(prompts: list[str]) -> list[dict]:
    return [{"prompt": prompt} for prompt in prompts]


def shard(items: list[Item], rank: int, world: int) -> list[Item]:
    """This process's items: every `world`-th of the items sorted by id (disjoint, covering, order-free)."""
    return sorted(items, key=lambda item: item.id)[rank::world]


# ---------------------------------------------------------------- the output folder

def check_output_dir(output_dir: str | Path) -> Path:
    """Create `output_dir` if needed and prove it is writable (before anything loads): `rules.output_folder`."""
    folder = rules.output_folder("output_dir", str(output_dir))
    folder.mkdir(parents=True, exist_ok=True)
    return folder


class ManifestLock:
    """An exclusive fcntl lock on `output_dir/.manifest.lock`, or `OutputDirLockedError` at once."""

    def __init__(self, output_dir: str | Path):
        self.path = Path(output_dir) / LOCK
        self.handle = None

    def __enter__(self):
        handle = open(self.path, "a+")
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            handle.seek(0)
            holder = handle.read().strip() or "another process"
            handle.close()
            raise OutputDirLockedError(
                f"Another batch run is writing to {str(self.path.parent)!r} ({holder}); two runs on one folder "
                "would corrupt its manifest. Wait for it to finish, or choose another output_dir.") from None
        handle.seek(0)
        handle.truncate()
        handle.write(f"pid {os.getpid()} on {socket.gethostname()} since {time.strftime('%Y-%m-%d %H:%M:%S')}\n")
        handle.flush()
        self.handle = handle
        return self

    def __exit__(self, *exc):
        self.handle.close()  # closing releases the lock
        self.handle = None


def _parse_lines(data: bytes) -> tuple[list[dict], int]:
    """Manifest entries, and how many lines were unusable (a torn last line, garbage)."""
    entries, bad = [], 0
    for line in data.split(b"\n"):
        if not line.strip():
            continue
        try:
            entry = json.loads(line)
            if not isinstance(entry, dict) or not {"id", "file", "sha256"} <= set(entry):
                raise ValueError
            entries.append(entry)
        except ValueError:
            bad += 1
    return entries, bad


def read_manifest(output_dir: str | Path) -> dict[str, dict]:
    """id -> its latest manifest entry (a later line for an id supersedes an earlier one)."""
    path = Path(output_dir) / MANIFEST
    entries, _ = _parse_lines(path.read_bytes() if path.exists() else b"")
    return {entry["id"]: entry for entry in entries}


def _write_atomic(path: Path, data: bytes) -> None:
    temp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    with open(temp, "wb") as file:
        file.write(data)
        file.flush()
        os.fsync(file.fileno())
    os.replace(temp, path)


def repair(output_dir: str | Path) -> int:
    """Under the lock, before any process appends: drop `.partial/` leftovers, and rewrite the manifest
    without torn or superseded lines (atomically). Returns how many lines were dropped."""
    folder = Path(output_dir)
    shutil.rmtree(folder / PARTIAL, ignore_errors=True)
    path = folder / MANIFEST
    if not path.exists():
        return 0
    data = path.read_bytes()
    entries, bad = _parse_lines(data)
    latest = {entry["id"]: entry for entry in entries}
    dropped = bad + len(entries) - len(latest)
    if dropped or (data and not data.endswith(b"\n")):
        _write_atomic(path, b"".join(json.dumps(e, sort_keys=True).encode() + b"\n" for e in latest.values()))
    return dropped


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as file:
        for block in iter(lambda: file.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def is_done(output_dir: str | Path, entry: dict | None) -> bool:
    """A manifest entry whose PNG exists with the recorded size and sha256."""
    if not entry:
        return False
    path = Path(output_dir) / entry["file"]
    try:
        if "bytes" in entry and path.stat().st_size != entry["bytes"]:
            return False
        return _sha256(path) == entry["sha256"]
    except OSError:
        return False


def save_item(output_dir: str | Path, image, metadata: dict, item: Item, rank: int, seconds: float,
              run_id: str) -> dict:
    """Save one finished image and record it: PNG complete and fsync'd under its real name, then its
    manifest line appended and fsync'd. Returns the manifest entry."""
    from . import outputs

    folder = Path(output_dir)
    staged = outputs.save_image(image, folder / PARTIAL, f"{rank}-{item.id}", metadata)
    data = staged.read_bytes()
    with open(staged, "rb") as file:
        os.fsync(file.fileno())
    os.replace(staged, folder / item.file)
    entry = {"id": item.id, "file": item.file, "sha256": hashlib.sha256(data).hexdigest(), "bytes": len(data),
             "seconds": round(seconds, 4), "rank": rank, "run": run_id, "prompt": item.prompt, "seed": item.seed}
    line = (json.dumps(entry, sort_keys=True) + "\n").encode()
    descriptor = os.open(folder / MANIFEST, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    try:
        os.write(descriptor, line)  # one write of one line: appends from several processes never interleave
        os.fsync(descriptor)
    finally:
        os.close(descriptor)
    return entry


# ---------------------------------------------------------------- one process's work

@dataclasses.dataclass
class Job:
    """Everything a process needs: the items and how to load the model. Plain data (picklable)."""

    model_id: str
    output_dir: str
    items: list[Item]
    dtype: str = "float32"
    quantization: str = "none"
    offload: str = "none"
    run_id: str = dataclasses.field(default_factory=lambda: uuid.uuid4().hex[:12])


def _load(job: Job, device):
    from . import loading

    pipe = loading.load_pipeline(job.model_id, dtype=job.dtype, device_map=None).to(device)
    pipe.set_progress_bar_config(disable=True)  # one bar for the whole batch, not one per image
    return pipe


def render(pipe, job: Job, item: Item, rank: int) -> dict:
    """Render one item and save it. Wraps `pipe(**call)`: `generation.call_arguments` builds the call from the
    same parameters the metadata records, so a PNG's metadata always matches the call that made it."""
    from . import generation, outputs

    start = time.perf_counter()
    parameters = item.call_parameters()
    call = generation.call_arguments(pipe, **parameters)
    image = pipe(**call).images[0]
    bands = image.getextrema()
    if all(low == high for low, high in (bands if isinstance(bands[0], tuple) else [bands])):
        raise RuntimeError(f"Item {item.id} ({item.source}) came out as one flat colour: the model produced NaN "
                           f"or nothing. Not saved. Try dtype='float32' or 'bfloat16' instead of {job.dtype!r}.")
    metadata = outputs.generation_metadata(pipe, job.model_id, call, item_id=item.id, dtype=job.dtype,
                                           quantization=job.quantization)
    return save_item(job.output_dir, image, metadata, item, rank, time.perf_counter() - start, job.run_id)


def work(job: Job, rank: int, world: int, device="cpu", pipe=None) -> dict:
    """Render this process's share: skip what is done, render the rest. Returns this rank's counts."""
    mine = shard(job.items, rank, world)
    manifest = read_manifest(job.output_dir)
    todo, skipped, regenerated = [], 0, 0
    for item in mine:
        entry = manifest.get(item.id)
        if is_done(job.output_dir, entry):
            skipped += 1
            continue
        regenerated += bool(entry) or (Path(job.output_dir) / item.file).exists()
        todo.append(item)
    busy = 0.0
    if todo:
        pipe = pipe if pipe is not None else _load(job, device)
        for item in todo:
            busy += render(pipe, job, item, rank)["seconds"]
    return {"rank": rank, "assigned": len(mine), "generated": len(todo), "skipped": skipped,
            "regenerated": regenerated, "busy_s": round(busy, 3)}


# ---------------------------------------------------------------- progress and summary

class Progress:
    """A tqdm.auto bar over the whole batch, fed by the manifest (so it counts every process's images)."""

    def __init__(self, job: Job, enabled: bool = True, interval: float = 0.5):
        from tqdm.auto import tqdm

        self.path, self.ids, self.interval = Path(job.output_dir) / MANIFEST, {i.id for i in job.items}, interval
        self.seen = set(read_manifest(job.output_dir)) & self.ids
        self.offset = self.path.stat().st_size if self.path.exists() else 0
        self.bar = tqdm(total=len(self.ids), initial=len(self.seen), unit="img", disable=not enabled,
                        desc="batch", dynamic_ncols=True)
        self.stop_event = threading.Event()
        self.thread = threading.Thread(target=self._poll, daemon=True)

    def _poll(self):
        while not self.stop_event.wait(self.interval):
            self.update()

    def update(self):
        if not self.path.exists():
            return
        with open(self.path, "rb") as file:
            file.seek(self.offset)
            data = file.read()
        complete = data[: data.rfind(b"\n") + 1]
        self.offset += len(complete)
        entries, _ = _parse_lines(complete)
        new = {e["id"] for e in entries} & self.ids - self.seen
        self.seen |= new
        self.bar.update(len(new))

    def __enter__(self):
        self.thread.start()
        return self

    def __exit__(self, *exc):
        self.stop_event.set()
        self.thread.join()
        self.update()
        self.bar.close()


def summarize(job: Job, ranks: list[dict], seconds: float) -> dict:
    """One run's summary; appended to `output_dir/runs.jsonl`."""
    generated = sum(r["generated"] for r in ranks)
    summary = {"run": job.run_id, "model_id": job.model_id, "items": len(job.items), "images": generated,
               "seconds": round(seconds, 3), "images_per_s": round(generated / seconds, 3) if seconds else 0.0,
               "per_rank": {r["rank"]: r["generated"] for r in sorted(ranks, key=lambda r: r["rank"])},
               "skipped": sum(r["skipped"] for r in ranks), "regenerated": sum(r["regenerated"] for r in ranks),
               "processes": len(ranks), "finished": time.strftime("%Y-%m-%d %H:%M:%S")}
    with open(Path(job.output_dir) / RUNS, "a") as file:
        file.write(json.dumps(summary, sort_keys=True) + "\n")
    return summary


def format_summary(summary: dict) -> str:
    per_rank = ", ".join(f"rank {rank}: {count}" for rank, count in summary["per_rank"].items())
    return (f"{summary['images']} images in {summary['seconds']:.1f} s ({summary['images_per_s']:.2f} images/s) "
            f"from {summary['processes']} process(es) [{per_rank}]; skipped {summary['skipped']} already done, "
            f"regenerated {summary['regenerated']}; {summary['items']} items in the batch")


# ---------------------------------------------------------------- the entry points

def run_process(job: Job, locked_by_caller: bool = False, progress: bool | None = None, pipe=None) -> dict | None:
    """The function every process runs (`notebook_launcher` or `accelerate launch`).

    Rank and world size come from accelerate's `PartialState`. Unless the caller already holds the lock
    (`launch` does), the main process takes it, repairs the folder and shares the run id; then every process
    renders its shard; the main process shows the bar, gathers the counts and returns the summary.
    """
    import torch
    from accelerate import PartialState
    from accelerate.utils import broadcast_object_list, gather_object

    from . import env

    state = PartialState(cpu=not torch.cuda.is_available())
    start = time.perf_counter()
    lock, message = None, [None, job.run_id]
    if state.is_main_process and not locked_by_caller:
        try:
            lock = ManifestLock(job.output_dir).__enter__()
            repair(job.output_dir)
        except OutputDirLockedError as error:
            message[0] = str(error)
    if state.num_processes > 1:
        broadcast_object_list(message)  # also the barrier: nobody reads the manifest before it is repaired
    if message[0]:
        raise OutputDirLockedError(message[0])
    job.run_id = message[1]
    try:
        show = not env.quiet_mode() if progress is None else progress
        with Progress(job, enabled=show) if state.is_main_process and progress is not False else _Nothing():
            counts = work(job, state.process_index, state.num_processes, state.device, pipe)
            ranks = gather_object([counts]) if state.num_processes > 1 else [counts]
        if lock is not None:
            repair(job.output_dir)  # every process is done: drop the lines that re-rendered items superseded
        return summarize(job, ranks, time.perf_counter() - start) if state.is_main_process else None
    finally:
        if lock is not None:
            lock.__exit__(None, None, None)


class _Nothing:
    def __enter__(self):
        return None

    def __exit__(self, *exc):
        return False


def prepare(job: Job, resume: bool) -> None:
    """Checks before any process starts: the folder is writable, and `resume=False` never overwrites a batch."""
    check_output_dir(job.output_dir)
    done = read_manifest(job.output_dir)
    if not resume and done:
        raise InvalidParameterError("resume", resume, f"{job.output_dir!r} already holds a batch ({len(done)} "
                                    "images in its manifest) and resume=False would render over it",
                                    "Set resume=True to continue it, or choose a new output_dir.")


def launch(job: Job, num_processes: int, resume: bool = True, pipe=None) -> dict:
    """Run the batch from a notebook: lock the folder here, then `run_process` in `num_processes` processes
    (`accelerate.notebook_launcher`: GPUs if present, else CPU processes over gloo; with 1, in this process,
    reusing `pipe` if given). Returns the summary (also appended to `output_dir/runs.jsonl`)."""
    from . import env

    if isinstance(num_processes, bool) or not isinstance(num_processes, int) or num_processes < 1:
        raise InvalidParameterError("num_processes", num_processes, "needs a whole number >= 1")
    prepare(job, resume)
    job = dataclasses.replace(job, run_id=uuid.uuid4().hex[:12])  # each launch is its own run
    with ManifestLock(job.output_dir):
        repair(job.output_dir)
        if num_processes == 1:
            run_process(job, locked_by_caller=True, pipe=pipe)
        else:
            from . import data_parallel

            with Progress(job, enabled=not env.quiet_mode()):
                data_parallel.launch_processes(run_process, (job, True, False), num_processes)
        repair(job.output_dir)  # one line per id again: drop the lines that re-rendered items superseded
    runs = [json.loads(line) for line in (Path(job.output_dir) / RUNS).read_text().splitlines() if line.strip()]
    return next(summary for summary in reversed(runs) if summary["run"] == job.run_id)


def main(argv: list[str] | None = None) -> int:
    """`accelerate launch [--num_machines N --machine_rank R --main_process_ip IP ...] -m helpers.batch ...`"""
    parser = argparse.ArgumentParser(prog="python -m helpers.batch", description=main.__doc__)
    parser.add_argument("--model_id", required=True)
    parser.add_argument("--output_dir", required=True)
    parser.add_argument("--prompts_file", default="")
    parser.add_argument("--prompt", action="append", default=[], help="a prompt (repeatable) without a file")
    parser.add_argument("--seeds_per_prompt", type=int, default=1)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--height", type=int, default=1024)
    parser.add_argument("--width", type=int, default=1024)
    parser.add_argument("--num_inference_steps", type=int, default=30)
    parser.add_argument("--guidance_scale", type=float, default=5.0)
    parser.add_argument("--dtype", default="bfloat16")
    parser.add_argument("--quantization", default="none")
    parser.add_argument("--offload", default="none")
    parser.add_argument("--no_resume", action="store_true", help="refuse a folder that already holds a batch")
    args = parser.parse_args(argv)
    from . import validate

    if not args.prompts_file and not args.prompt:
        parser.error("give --prompts_file or at least one --prompt")
    validate.check({k: v for k, v in vars(args).items() if k not in ("prompt", "no_resume")})
    rows = read_prompts(args.prompts_file) if args.prompts_file else rows_from_list(args.prompt)
    items = plan_items(args.model_id, rows, seeds_per_prompt=args.seeds_per_prompt, seed=args.seed,
                       height=args.height, width=args.width, num_inference_steps=args.num_inference_steps,
                       guidance_scale=args.guidance_scale, dtype=args.dtype, quantization=args.quantization)
    job = Job(args.model_id, args.output_dir, items, args.dtype, args.quantization, args.offload)
    prepare(job, not args.no_resume)
    summary = run_process(job)
    if summary is not None:
        print(format_summary(summary), flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
