"""A notebook's kernel died mid-run (the out-of-memory killer's SIGKILL, a crash): say where, why, what to try.

nbclient raises `DeadKernelError` ("Kernel died") and papermill leaves the executed notebook with every cell
marked completed and no error. This module records how the kernel process ended, marks the cell that was
running with an error output (written atomically), and words the cause and the parameters that use less memory.
"""

from __future__ import annotations

import signal
from pathlib import Path

import nbformat

from helpers.outputs import write_atomically

# Parameters of the notebooks that lower peak memory, in the order worth trying: the value to pass, and why.
MEMORY_LEVERS = {
    "plan_only": ("True", "print the load plan (peak RAM and VRAM) and stop before loading anything"),
    "hardware": ("<profile>", "plan for that machine"),
    "force": ("False", "let the plan refuse what does not fit instead of loading it anyway"),
    "quantization": ("<mode>", "smaller weights"),
    "offload": ("<mode>", "offload saves GPU memory and costs CPU RAM (the plan weighs both)"),
    "model_id": ("<smaller model>", "a smaller model"),
    "t2v_model_id": ("<smaller model>", "a smaller model"),
    "i2v_model_id": ("<smaller model>", "a smaller model"),
    "run_image_to_video": ("False", "skip the large image-to-video model"),
    "num_frames": ("<fewer>", "fewer frames"),
    "height": ("<smaller>", "smaller images"),
    "width": ("<smaller>", "smaller images"),
    "num_processes": ("1", "one process, one copy of the model"),
}


def watching(manager_class: type) -> type:
    """A subclass of an async KernelManager class that keeps its kernel's exit status when it finds it dead.

    nbclient notices a dead kernel through `km.is_alive()`; that is the moment the process status is known.
    A new class per run, so two runs never share the record.
    """

    class Watched(manager_class):
        exit_status: int | None = None

        async def is_alive(self) -> bool:
            alive = await super().is_alive()
            if not alive and self.has_kernel:
                type(self).exit_status = await self.provisioner.poll()
            return alive

    return Watched


def cause(status: int | None) -> str:
    """What the kernel's exit status says about why it died (negative: the signal that ended it)."""
    if status is None:
        return "the kernel process died; how it ended is unknown"
    if status < 0:
        try:
            name = signal.Signals(-status).name
        except ValueError:
            name = f"signal {-status}"
        if name == "SIGKILL":
            return ("the kernel process was killed by SIGKILL (signal 9): most likely out of memory (the Linux "
                    "OOM killer sends SIGKILL; `dmesg` or `journalctl -k` shows 'Out of memory' if so)")
        if name in ("SIGSEGV", "SIGBUS", "SIGABRT", "SIGILL", "SIGFPE"):
            return f"the kernel process crashed with {name} (signal {-status}), in native code, not a Python error"
        return f"the kernel process was killed by {name} (signal {-status})"
    return f"the kernel process exited with status {status} while a cell was running"


def likely_out_of_memory(status: int | None) -> bool:
    return status is None or status == -signal.SIGKILL


def advice(declared: dict) -> str:
    """The notebook's own parameters that use less memory, with their help text; a generic line without any."""
    lines = []
    for name, (value, why) in MEMORY_LEVERS.items():
        if name in declared:
            allowed = declared[name].get("help") if value.startswith("<") else ""
            lines.append(f"  -p {name} {value}: {why}" + (f" [{allowed}]" if allowed else ""))
    if not lines:
        return "To use less memory: free memory for the kernel, or run on a machine with more RAM / GPU memory."
    return ("To use less memory, rerun with one of this notebook's parameters (or on a machine with more memory):\n"
            + "\n".join(lines))


def cell_label(number: int, cell) -> str:
    """How reports name a code cell: its position among code cells, its id and its first source line."""
    first_line = next(iter(cell.source.strip().splitlines()), "")
    return f"code cell {number} (id {cell.get('id')}: {first_line[:60]!r})"


def mark_running_cell(executed: Path, source: Path, message: str) -> str:
    """Give the cell that was running an error output with `message`, rewrite `executed` atomically, name the cell.

    papermill stamps `start_time` on each cell it starts; the last code cell with one was running. If papermill
    never wrote `executed`, the source notebook is marked instead, so the run folder still shows the error.
    """
    notebook = nbformat.read(executed if executed.is_file() else source, as_version=4)
    code = [cell for cell in notebook.cells if cell.cell_type == "code"]
    started = [n for n, cell in enumerate(code) if cell.get("metadata", {}).get("papermill", {}).get("start_time")]
    lines = ["DeadKernelError: the kernel died while this cell was running.", *message.splitlines()]
    if started:
        running = code[started[-1]]
        running.outputs.append(nbformat.v4.new_output("error", ename="DeadKernelError", evalue=message.splitlines()[0],
                                                      traceback=lines))
        _mark_statuses(notebook, running)
        label = cell_label(started[-1] + 1, running)
    else:
        note = nbformat.v4.new_markdown_cell("**Kit: the kernel died before any cell ran.**\n\n" + "\n\n".join(lines))
        note.id = "kit-dead-kernel"
        notebook.cells.insert(0, note)
        label = "no cell (the kernel died before the first one ran)"
    write_atomically(executed, nbformat.writes(notebook))
    return label


def _mark_statuses(notebook, running) -> None:
    """papermill's own markers: the running cell failed, the ones after it never ran, the notebook has an error."""
    after = False
    for cell in notebook.cells:
        meta = cell.get("metadata", {}).get("papermill")
        if meta is None:
            continue
        if cell is running:
            meta.update(status="failed", exception=True)
            after = True
        elif after:
            meta["status"] = "pending"
    notebook.metadata.setdefault("papermill", {})["exception"] = True
