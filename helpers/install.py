"""Install the pinned stack in a hosted runtime (Colab, Kaggle) and decide whether to restart.

Deciding is pure (`plan`, tested with fake environments); acting (`pip_install`, `restart`,
`ensure_pinned`) is kept apart. torch is never installed here: Colab's CUDA build stays.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from dataclasses import dataclass, field

from . import pins
from .env import Runtime, detect_runtime
from .errors import KitError

IMPORT_NAMES = {"huggingface-hub": "huggingface_hub"}


class PipInstallError(KitError, RuntimeError):
    """pip exited with an error; carries its exit status and the end of its output."""

    def __init__(self, args: list[str], returncode: int, output: str):
        self.args_, self.returncode, self.output = args, returncode, output
        super().__init__(f"`pip install {' '.join(args)}` failed (exit {returncode}):\n{output[-2000:]}")


@dataclass
class Plan:
    install: list[str] = field(default_factory=list)  # requirement strings for pip
    restart_for: list[str] = field(default_factory=list)  # imported modules that pip will replace
    advice: str = ""

    @property
    def restart_needed(self) -> bool:
        return bool(self.restart_for)


def plan(runtime: Runtime, pinned: dict, installed: dict, imported: set[str]) -> Plan:
    """What to install and whether a restart is needed, from facts alone.

    Hosted: install the hosted subset that differs from the pins; a restart is needed only when one
    of those packages is already imported (Python keeps the old module until the process restarts).
    Elsewhere: install nothing; advise the command that fixes the mismatches.
    """
    if runtime.hosted:
        pinned = {name: req for name, req in pinned.items() if name in pins.HOSTED_INSTALL}
    mismatches = pins.find_mismatches(pinned, installed)
    if not mismatches:
        return Plan(advice="All pinned packages are installed at their pinned versions.")
    if not runtime.hosted:
        listing = "; ".join(map(str, mismatches))
        return Plan(advice=f"Version mismatch ({listing}). Fix: `make install` (or `pip install -r requirements.txt`), "
                           "then restart the kernel.")
    specs = [str(pinned[m.package]) for m in mismatches]
    stale = [m.package for m in mismatches if m.installed and IMPORT_NAMES.get(m.package, m.package) in imported]
    return Plan(install=specs, restart_for=stale, advice=f"Installing {', '.join(specs)}.")


def pip_install(requirements: list[str], echo=print) -> None:
    """Run pip in this kernel's Python, showing its progress lines; raise with pip's own error when it fails."""
    args = ["--no-input", "--progress-bar", "off", *requirements]
    process = subprocess.Popen([sys.executable, "-m", "pip", "install", *args], stdout=subprocess.PIPE,
                               stderr=subprocess.STDOUT, text=True)
    lines = []
    for line in process.stdout:
        lines.append(line)
        if line.startswith(("Collecting", "Downloading", "Installing", "Successfully", "ERROR")):
            echo(f"  pip: {line.rstrip()}")
    if process.wait() != 0:
        raise PipInstallError(args, process.returncode, "".join(lines))


def announce(message: str, wait: float = 1.0) -> None:
    """Print `message` and return only once the kernel has handed it to the front end.

    In ipykernel, print() only buffers: the IOPub thread sends later, and zmq's own I/O thread
    writes to the socket after that. Killing the process too early loses the message. flush() waits
    until the IOPub thread has sent it; the short sleep lets zmq write it out. In the Colab simulation
    (bench/colab_restart.py) the reason reached the saved notebook in 0/10 runs with print alone, 9/10
    with print and flush, 20/20 with flush and this wait. Outside a kernel the wait is skipped.
    """
    print(message, flush=True)
    sys.stderr.flush()
    if "ipykernel" in sys.modules:
        time.sleep(wait)


def restart(runtime: Runtime, reason: str, kill=os.kill) -> None:
    """In Colab, end the kernel so the runtime restarts it; elsewhere say what to do (a headless run must live)."""
    if runtime.name == "colab":
        announce(f"Restarting the runtime: {reason}. Python keeps the old modules until it restarts. "
                 "When the runtime is back, run the notebook again from the top; the install is done.")
        kill(os.getpid(), signal.SIGKILL)
        return
    print(f"Restart the kernel before going on: {reason}.")


def ensure_pinned(install: bool = True) -> Plan:
    """Check the pins; in a hosted runtime also install what differs (never torch) and restart if needed."""
    runtime = detect_runtime()
    names = pins.load_pins()
    installed = {name: pins.installed_version(name) for name in names}
    imported = {name.split(".")[0] for name in sys.modules}
    decided = plan(runtime, names, installed, imported)
    if decided.install and install:
        reason = f"{', '.join(decided.restart_for)} were imported before the upgrade"
        later = f" A restart follows ({reason})." if decided.restart_needed else " No restart needed."
        announce(f"{decided.advice}{later}", wait=0)  # said before pip runs, so it is seen even if pip is slow
        pip_install(decided.install)
        if decided.restart_needed:
            restart(runtime, reason)
    elif decided.install:
        print(f"Not installing (install=False): {', '.join(decided.install)} differ from what is installed.")
    else:
        print(decided.advice)
    return decided
