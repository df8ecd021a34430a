"""Batch generation that survives disconnects and scales out with accelerate. In `output_dir`: `<id>.png`,
`manifest.jsonl` (one line per finished image), `runs.jsonl`, `.manifest.lock`. A manifest line counts only in the kit's
form with its PNG of the recorded size and sha256 (else it is rendered again); state files are not followed as links."""

from __future__ import annotations

import argparse
import dataclasses
import errno
import fcntl
import hashlib
import io
import json
import os
import re
import shutil
import socket
import stat
import tempfile
import threading
import time
import uuid
from contextlib import ExitStack, contextmanager, nullcontext
from pathlib import Path

from . import env, outputs, rules
from .errors import InvalidParameterError, OutputDirLockedError, UnsafeStateFileError
from .prompts_file import read_prompts

MANIFEST, REJECTED, RUNS, LOCK, PARTIAL = ("manifest.jsonl", "manifest.rejected.jsonl", "runs.jsonl",
                                          ".manifest.lock", ".partial")
ITEM_ID = re.compile(r"[0-9a-f]{24}")
MAX_PNG_BYTES = 1 << 30  # far above any image the kit renders (8192 x 8192 RGB is 192 MiB raw)
FIELDS = {"id": str, "file": str, "sha256": str, "bytes": int, "seconds": (int, float), "rank": int, "run": str,
          "prompt": str, "seed": int}


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
        return {k: v for k, v in dataclasses.asdict(self).items() if k not in ("id", "source")}


def plan_items(model_id: str, rows: list[dict], *, seeds_per_prompt: int, seed: int, height: int, width: int,
               num_inference_steps: int, guidance_scale: float, dtype: str, quantization: str = "none") -> list[Item]:
    """One item per row and seed (j < seeds_per_prompt: `row_seed + j`, else `seed + i * seeds_per_prompt + j`),
    duplicates dropped; a row's own values override the defaults. Too many items or seeds are refused here."""
    rules.batch_items("prompts", len(rows) * seeds_per_prompt)
    items: dict[str, Item] = {}
    for index, row in enumerate(rows):
        base = row["seed"] if "seed" in row else seed + index * seeds_per_prompt
        source = f"line {row['line']}" if "line" in row else f"prompts[{index}]"
        if base + seeds_per_prompt - 1 > rules.MAX_SEED:
            raise InvalidParameterError("seed", base, f"{source} would use seeds up to {base + seeds_per_prompt - 1}, "
                                        f"past 2**64 - 1 ({rules.MAX_SEED})", "Use a smaller seed or seeds_per_prompt.")
        for offset in range(seeds_per_prompt):
            parameters = {"prompt": row["prompt"], "negative_prompt": row.get("negative_prompt", ""),
                          "seed": base + offset, "height": height, "width": width,
                          "num_inference_steps": row.get("num_inference_steps", num_inference_steps),
                          "guidance_scale": float(row.get("guidance_scale", guidance_scale))}
            key = {"model_id": str(model_id), "dtype": dtype, "quantization": quantization, **parameters}
            identity = hashlib.sha256(json.dumps(key, sort_keys=True).encode()).hexdigest()[:24]  # all that decides it
            items.setdefault(identity, Item(id=identity, source=source, **parameters))
    return list(items.values())


def rows_from_list(prompts: list[str]) -> list[dict]:
    return [{"prompt": prompt} for prompt in prompts]


def shard(items: list[Item], rank: int, world: int) -> list[Item]:
    """This process's items: every `world`-th of the items sorted by id (disjoint, covering, order-free)."""
    return sorted(items, key=lambda item: item.id)[rank::world]


def check_output_dir(output_dir: str | Path) -> Path:
    """Create `output_dir`, prove it writable and that none of the batch's own files is a link or of the wrong kind."""
    folder = rules.output_folder("output_dir", str(output_dir))
    folder.mkdir(parents=True, exist_ok=True)
    for path in (folder / name for name in (LOCK, MANIFEST, REJECTED, RUNS, PARTIAL)):
        if path.is_symlink() or (path.exists() and path.is_dir() != (path.name == PARTIAL)):
            raise UnsafeStateFileError(path, "is a symbolic link" if path.is_symlink() else "is of the wrong kind")
    return folder


def _open_state(path: Path, flags: int, mode: int = 0o644) -> int:
    """Open one of the batch's own files without following a link, and only if it is a regular file."""
    try:
        descriptor = os.open(path, flags | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC, mode)
    except OSError as error:
        if error.errno == errno.ELOOP:
            raise UnsafeStateFileError(path, "is a symbolic link") from None
        raise
    if not stat.S_ISREG(os.fstat(descriptor).st_mode):
        os.close(descriptor)
        raise UnsafeStateFileError(path, "is not a regular file")
    return descriptor


def _read_state(path: Path) -> bytes:
    """The bytes of a state file, or b"" when there is none."""
    try:
        descriptor = _open_state(path, os.O_RDONLY)
    except FileNotFoundError:
        return b""
    with os.fdopen(descriptor, "rb") as file:
        return file.read()


def _append_state(path: Path, data: bytes) -> None:
    """One write of whole lines, fsync'd: appends from several processes never interleave."""
    descriptor = _open_state(path, os.O_RDWR | os.O_APPEND | os.O_CREAT)
    try:
        torn = (size := os.fstat(descriptor).st_size) and os.pread(descriptor, 1, size - 1) != b"\n"
        os.write(descriptor, b"\n" + data if torn else data)  # a torn last line stays a line of its own
        os.fsync(descriptor)
    finally:
        os.close(descriptor)


@contextmanager
def ManifestLock(output_dir: str | Path):
    """An exclusive fcntl lock on `output_dir/.manifest.lock` (never a link), or `OutputDirLockedError` at once."""
    with os.fdopen(_open_state(Path(output_dir) / LOCK, os.O_RDWR | os.O_CREAT), "r+") as handle:
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = handle.read(200).strip() or "another process"
            raise OutputDirLockedError(
                f"Another batch run is writing to {str(Path(output_dir))!r} ({holder}); two runs on one folder would "
                "corrupt its manifest. Wait for it to finish, or choose another output_dir.") from None
        handle.truncate()
        handle.write(f"pid {os.getpid()} on {socket.gethostname()} since {time.strftime('%Y-%m-%d %H:%M:%S')}\n")
        handle.flush()
        yield  # closing the file releases the lock


def entry_problem(entry) -> str:
    """Why a parsed manifest line cannot be trusted ("" when its types and form are the kit's)."""
    if not isinstance(entry, dict):
        return f"is a JSON {type(entry).__name__}, not an object"
    for name, kind in FIELDS.items():
        value = entry.get(name)
        if name in ("id", "file", "sha256") and value is None:
            return f"has no {name!r}"
        if value is not None and (isinstance(value, bool) or not isinstance(value, kind)):
            return f"{name}={value!r} is not a JSON {'number' if name == 'seconds' else kind.__name__}"
    if not ITEM_ID.fullmatch(entry["id"]):
        return f"id={entry['id'][:60]!r} is not a kit item id (24 hex digits)"
    if entry["file"] != f"{entry['id']}.png":
        return f"file={entry['file'][:100]!r} is not exactly '<id>.png' ({entry['id']}.png)"
    if not re.fullmatch(r"[0-9a-f]{64}", entry["sha256"]):
        return "sha256 is not 64 hex digits"
    if not 0 < entry.get("bytes", 1) <= MAX_PNG_BYTES:
        return f"bytes={entry['bytes']} is not between 1 and {MAX_PNG_BYTES}"
    return ""


def parse_lines(data: bytes, problem=entry_problem) -> tuple[list, list[tuple[int, bytes, str]]]:
    """(the JSON lines `problem` finds nothing wrong with, [(line number, raw line, why)] for every other line)."""
    good, bad = [], []
    for number, line in enumerate(data.split(b"\n"), 1):
        if line.strip():
            try:
                why = problem(value := json.loads(line))
            except ValueError as error:
                why = f"is not JSON ({getattr(error, 'msg', error)}): a torn or garbage line"
            bad.append((number, line, why)) if why else good.append(value)
    return good, bad


def read_manifest(output_dir: str | Path) -> dict[str, dict]:
    """id -> its latest trusted manifest entry (a later line for an id supersedes an earlier one)."""
    return {entry["id"]: entry for entry in parse_lines(_read_state(Path(output_dir) / MANIFEST))[0]}


def repair(output_dir: str | Path) -> list[str]:
    """Under the lock: empty `.partial/`, set untrusted manifest lines aside in `manifest.rejected.jsonl` and rewrite
    the manifest atomically with one line per id. Returns one report per line set aside."""
    folder, partial = Path(output_dir), Path(output_dir) / PARTIAL
    if partial.is_symlink() or (partial.exists() and not partial.is_dir()):
        raise UnsafeStateFileError(partial, "is a symbolic link" if partial.is_symlink() else "is not a folder")
    shutil.rmtree(partial, ignore_errors=True)
    partial.mkdir()
    entries, rejected = parse_lines(data := _read_state(folder / MANIFEST))
    if rejected:
        _append_state(folder / REJECTED, b"".join(json.dumps(
            {"line": n, "problem": why, "text": raw.decode(errors="replace")[:4000]}).encode() + b"\n"
            for n, raw, why in rejected))
    latest = {entry["id"]: entry for entry in entries}
    if rejected or len(latest) < len(entries) or (data and not data.endswith(b"\n")):
        outputs.write_atomically(folder / MANIFEST,
                                 b"".join(json.dumps(e, sort_keys=True).encode() + b"\n" for e in latest.values()))
    return [f"{MANIFEST} line {n} set aside in {REJECTED}: {why}; its item is rendered again" for n, _, why in rejected]


def is_done(output_dir: str | Path, entry: dict | None) -> bool:
    """A trusted manifest entry whose PNG is a regular file (not a link) with the recorded size and sha256."""
    if not entry or entry_problem(entry):
        return False
    try:
        info = os.lstat(path := Path(output_dir) / entry["file"])
        return (stat.S_ISREG(info.st_mode) and info.st_size <= MAX_PNG_BYTES and entry.get("bytes", info.st_size)
                == info.st_size and outputs.sha256_file(path) == entry["sha256"])
    except OSError:
        return False


def save_item(output_dir: str | Path, image, metadata: dict, item: Item, rank: int, seconds: float,
              run_id: str) -> dict:
    """Stage the PNG fsync'd in `.partial/`, rename it into place, then append its manifest line (returned)."""
    from PIL import PngImagePlugin
    folder = Path(output_dir)
    if not stat.S_ISDIR(os.lstat(folder / PARTIAL).st_mode):
        raise UnsafeStateFileError(folder / PARTIAL, "is not a folder (a link?)")
    info = PngImagePlugin.PngInfo()
    info.add_text(outputs.METADATA_KEY, json.dumps(metadata, default=str, sort_keys=True))
    image.save(buffer := io.BytesIO(), format="PNG", pnginfo=info)
    outputs.write_atomically(staged := folder / PARTIAL / f"{rank}-{item.file}", data := buffer.getvalue())
    os.replace(staged, folder / item.file)  # replaces a link or stray file there, never what it points to
    entry = {"id": item.id, "file": item.file, "sha256": hashlib.sha256(data).hexdigest(), "bytes": len(data),
             "seconds": round(seconds, 4), "rank": rank, "run": run_id, "prompt": item.prompt, "seed": item.seed}
    _append_state(folder / MANIFEST, (json.dumps(entry, sort_keys=True) + "\n").encode())
    return entry


def read_runs(output_dir: str | Path) -> tuple[list[dict], list[str]]:
    """The run summaries in `runs.jsonl`, and a note for each line that is not one (a torn last line)."""
    runs, bad = parse_lines(_read_state(Path(output_dir) / RUNS),
                            lambda run: not isinstance(run, dict) or not isinstance(run.get("run"), str))
    return runs, [f"{RUNS} line {number} is not a run summary (torn or damaged); skipped" for number, _, _ in bad]


_LAUNCH_LOCK = threading.Lock()  # $TMPDIR is process-wide: one launch at a time changes it


def launch_processes(function, args: tuple, num_processes: int) -> None:
    """`function(*args)` in `num_processes` processes (accelerate's notebook_launcher: GPUs, else CPU); with 1, here."""
    rules.whole("num_processes", num_processes, 1)
    if num_processes == 1:
        function(*args)
        return
    from accelerate import notebook_launcher
    from accelerate.utils import patch_environment
    from accelerate.utils.other import get_free_port  # accelerate's fixed 29500 fails when two runs share a machine
    with _LAUNCH_LOCK, tempfile.TemporaryDirectory(prefix="kit-launch-") as private, patch_environment(TMPDIR=private):
        saved, tempfile.tempdir = tempfile.tempdir, private
        try:
            notebook_launcher(function, args, num_processes=num_processes, use_port=str(get_free_port()))
        finally:
            tempfile.tempdir = saved


@dataclasses.dataclass
class Job:
    """Everything a process needs: the items, and the load plan every process loads by. Plain data."""
    model_id: str
    output_dir: str
    items: list[Item]
    load_plan: object  # a helpers.planning.LoadPlan
    run_id: str = dataclasses.field(default_factory=lambda: uuid.uuid4().hex[:12])


def load(job: Job, device) -> tuple[object, dict]:
    """The plan's load in this process: the pipeline, and a record of what was loaded (for the run summary)."""
    import torch
    from diffusers import DiffusionPipeline

    from . import hub, loading, memory
    plan, source = job.load_plan, hub.resolve_model_source(job.model_id)
    load_kwargs = loading.plan_kwargs(plan, source)
    pipe = DiffusionPipeline.from_pretrained(source, **load_kwargs)
    offload = loading.apply_offload(pipe, plan)
    if plan.device == "cuda" and plan.offload == "none" and not plan.quantized():
        pipe.to(device)  # this process's own GPU (device_map "cuda" means the current one)
    pipe.set_progress_bar_config(disable=True)  # one bar for the whole batch, not one per image
    return pipe, {"dtype": plan.dtype, "device_map": load_kwargs["device_map"], "offload": offload,
                  "quantization_config": type(load_kwargs.get("quantization_config")).__name__
                  if "quantization_config" in load_kwargs else None,
                  "quantized": memory.quantized_components(pipe), "cpu_threads": torch.get_num_threads()}


def work(job: Job, rank: int, world: int, device="cpu", pipe=None) -> dict:
    """Render and save this process's share but what is done; returns this rank's counts and what it loaded."""
    from . import generation
    mine = shard(job.items, rank, world)
    manifest = read_manifest(job.output_dir)
    todo = [item for item in mine if not is_done(job.output_dir, manifest.get(item.id))]
    regenerated = sum(item.id in manifest or os.path.lexists(Path(job.output_dir) / item.file) for item in todo)
    pipe, loaded = load(job, device) if todo and pipe is None else (pipe, None)
    for item in todo:
        start = time.perf_counter()
        image = pipe(**(call := generation.call_arguments(pipe, **item.call_parameters()))).images[0]
        bands = image.getextrema()
        if all(low == high for low, high in (bands if isinstance(bands[0], tuple) else [bands])):
            raise RuntimeError(f"Item {item.id} ({item.source}) is one flat colour (the model made NaN or nothing). "
                               f"Not saved. Try dtype='float32' or 'bfloat16' instead of {job.load_plan.dtype!r}.")
        metadata = outputs.generation_metadata(pipe, job.model_id, call, item_id=item.id, dtype=job.load_plan.dtype,
                                               quantization=job.load_plan.quantization)
        save_item(job.output_dir, image, metadata, item, rank, time.perf_counter() - start, job.run_id)
    return {"rank": rank, "generated": len(todo), "skipped": len(mine) - len(todo), "regenerated": regenerated,
            "loaded": loaded}


@contextmanager
def progress_bar(job: Job, enabled: bool = True, interval: float = 0.5):
    """A tqdm.auto bar over the whole batch, fed by the manifest (so it counts every process's images)."""
    from tqdm.auto import tqdm
    ids, stop = {item.id for item in job.items}, threading.Event()
    seen = set(read_manifest(job.output_dir)) & ids
    bar = tqdm(total=len(ids), initial=len(seen), unit="img", disable=not enabled, desc="batch", dynamic_ncols=True)

    def update():
        seen.update(new := set(read_manifest(job.output_dir)) & ids - seen)
        bar.update(len(new))
    thread = threading.Thread(target=lambda: [update() for _ in iter(lambda: stop.wait(interval), True)], daemon=True)
    thread.start()
    try:
        yield bar
    finally:
        stop.set()
        thread.join()
        update()
        bar.close()


def format_summary(summary: dict) -> str:
    per_rank = ", ".join(f"rank {rank}: {count}" for rank, count in summary["per_rank"].items())
    return (f"{summary['images']} images in {summary['seconds']:.1f} s ({summary['images_per_s']:.2f} images/s) "
            f"from {summary['processes']} process(es) [{per_rank}]; skipped {summary['skipped']} already done, "
            f"regenerated {summary['regenerated']}; {summary['items']} items in the batch")


def run_process(job: Job, locked_by_caller: bool = False, progress: bool | None = None, pipe=None) -> dict | None:
    """What every process runs (`notebook_launcher` or `accelerate launch`): the main process locks and repairs the
    folder (unless the caller did) and shares the run id; every process renders its shard; the main one sums up."""
    import torch
    from accelerate import PartialState
    from accelerate.utils import broadcast_object_list, gather_object
    state = PartialState(cpu=not torch.cuda.is_available())
    start, locking, message = time.perf_counter(), state.is_main_process and not locked_by_caller, [None, job.run_id]
    with ExitStack() as held:
        if locking:
            try:
                held.enter_context(ManifestLock(job.output_dir))
                for report in repair(job.output_dir):
                    print(report, flush=True)
            except (OutputDirLockedError, UnsafeStateFileError) as error:
                message[0] = error
        if state.num_processes > 1:
            broadcast_object_list(message)  # also the barrier: nobody reads the manifest before it is repaired
        if message[0]:
            raise message[0]
        job.run_id = message[1]
        show = not env.quiet_mode() if progress is None else progress
        with progress_bar(job, enabled=show) if state.is_main_process and progress is not False else nullcontext():
            counts = work(job, state.process_index, state.num_processes, state.device, pipe)
            ranks = gather_object([counts]) if state.num_processes > 1 else [counts]
        if locking:
            repair(job.output_dir)  # every process is done: drop the lines that re-rendered items superseded
        if not state.is_main_process:
            return None
        ranks, seconds = sorted(ranks, key=lambda r: r["rank"]), time.perf_counter() - start
        generated = sum(r["generated"] for r in ranks)
        summary = {"run": job.run_id, "model_id": job.model_id, "items": len(job.items), "images": generated,
                   "seconds": round(seconds, 3), "images_per_s": round(generated / seconds, 3) if seconds else 0.0,
                   "per_rank": {r["rank"]: r["generated"] for r in ranks}, "processes": len(ranks),
                   "skipped": sum(r["skipped"] for r in ranks), "regenerated": sum(r["regenerated"] for r in ranks),
                   "loaded": {r["rank"]: r["loaded"] for r in ranks}, "finished": time.strftime("%Y-%m-%d %H:%M:%S")}
        _append_state(Path(job.output_dir) / RUNS, (json.dumps(summary, sort_keys=True) + "\n").encode())
        return summary


def prepare(job: Job, resume: bool) -> None:
    """Checks before any process starts: the folder is writable, and `resume=False` never overwrites a batch."""
    check_output_dir(job.output_dir)
    if (done := read_manifest(job.output_dir)) and not resume:
        raise InvalidParameterError("resume", resume, f"{job.output_dir!r} already holds a batch ({len(done)} "
                                    "images in its manifest) and resume=False would render over it",
                                    "Set resume=True to continue it, or choose a new output_dir.")


def launch(job: Job, num_processes: int, resume: bool = True, pipe=None) -> dict:
    """Run the batch from a notebook (the folder locked here) in `num_processes` processes; returns the summary."""
    rules.whole("num_processes", num_processes, 1)
    prepare(job, resume)
    job = dataclasses.replace(job, run_id=uuid.uuid4().hex[:12])  # each launch is its own run
    with ManifestLock(job.output_dir):
        for report in repair(job.output_dir):
            print(report, flush=True)
        if num_processes == 1:
            run_process(job, locked_by_caller=True, pipe=pipe)
        else:
            with progress_bar(job, enabled=not env.quiet_mode()):
                launch_processes(run_process, (job, True, False), num_processes)
        repair(job.output_dir)  # one line per id again: drop the lines that re-rendered items superseded
    runs, notes = read_runs(job.output_dir)
    for note in notes:
        print(note, flush=True)
    return next(summary for summary in reversed(runs) if summary["run"] == job.run_id)


def main(argv: list[str] | None = None) -> int:
    """`accelerate launch [--num_machines N --machine_rank R --main_process_ip IP ...] -m helpers.batch ...`"""
    parser = argparse.ArgumentParser(prog="python -m helpers.batch", description=main.__doc__)
    parser.add_argument("--model_id", required=True)
    parser.add_argument("--output_dir", required=True)
    parser.add_argument("--prompt", action="append", default=[], help="a prompt (repeatable) without a file")
    for name, default in (("prompts_file", ""), ("seeds_per_prompt", 1), ("seed", 0), ("height", 1024),
                          ("width", 1024), ("num_inference_steps", 30), ("guidance_scale", 5.0), ("dtype", "auto"),
                          ("quantization", "auto"), ("offload", "auto")):
        parser.add_argument(f"--{name}", type=type(default), default=default)
    parser.add_argument("--force", action="store_true", help="run although the load plan does not fit")
    parser.add_argument("--no_resume", action="store_true", help="refuse a folder that already holds a batch")
    given = vars(args := parser.parse_args(argv))
    import torch

    from . import planning, validate
    if not args.prompts_file and not args.prompt:
        parser.error("give --prompts_file or at least one --prompt")
    validate.check({k: v for k, v in given.items() if k not in ("prompt", "no_resume")})
    rows = read_prompts(args.prompts_file) if args.prompts_file else rows_from_list(args.prompt)
    gpu = torch.cuda.is_available()  # each process: the whole pipeline on its GPU, or the CPU
    load_plan = planning.plan_load(args.model_id, dtype=args.dtype if gpu else "float32", device_map="cuda" if gpu
                                   else "cpu", **{k: given[k] for k in ("quantization", "offload", "height", "width")})
    planning.enforce(load_plan, force=args.force)
    items = plan_items(args.model_id, rows, dtype=load_plan.dtype, quantization=load_plan.quantization, **{
        k: given[k] for k in ("seeds_per_prompt", "seed", "height", "width", "num_inference_steps", "guidance_scale")})
    job = Job(args.model_id, args.output_dir, items, load_plan)
    prepare(job, not args.no_resume)
    if (summary := run_process(job)) is not None:
        print(format_summary(summary), flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
