"""`make install`'s torch step: a CPU torch where there is no NVIDIA GPU, and say what will be fetched first.

PyPI's Linux torch wheel is a CUDA build: it pulls cuda-toolkit, nvidia-cudnn, nvidia-nccl and triton
(several GB) even on a machine without a GPU. So without a GPU this tries, in order: TORCH_INDEX (when
set), the PyTorch CPU index, then pip's own configuration (PyPI, or a local wheel folder set in pip.conf).
For each it asks pip what it would install (`pip install --dry-run --report`, metadata only) and takes the
first source whose answer has no CUDA packages. It prints that answer before installing. When every
reachable source would bring CUDA packages it says so, lists them, and installs from the first one.
With a GPU it does nothing: requirements.txt's torch (PyPI's CUDA build) is the right one.

Deciding (`decide`) is pure and tested offline; probing and installing are kept apart.
Usage: python tools/install_torch.py "torch==2.13.0" [TORCH_INDEX]
"""

from __future__ import annotations

import json
import shutil
import socket
import subprocess
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlparse

CPU_INDEX = "https://download.pytorch.org/whl/cpu"
CUDA_PREFIXES = ("nvidia-", "cuda-", "triton")


@dataclass
class Source:
    label: str
    pip_args: list[str]  # index options for pip
    resolved: list[tuple[str, str]] | None = None  # (name, version) pip would install; None: unreachable/failed


@dataclass
class Decision:
    source: Source | None  # None: no torch step (GPU machine, or nothing resolved)
    message: str


def cuda_packages(resolved: list[tuple[str, str]]) -> list[str]:
    return [f"{name}=={version}" for name, version in resolved if name.lower().startswith(CUDA_PREFIXES)]


def candidate_sources(torch_index: str) -> list[Source]:
    """TORCH_INDEX first when set, then the PyTorch CPU index, then pip's configured indexes."""
    sources = []
    if torch_index.strip():
        sources.append(Source(f"TORCH_INDEX={torch_index.strip()}", ["--index-url", torch_index.strip()]))
    if torch_index.strip() != CPU_INDEX:
        sources.append(Source(f"the PyTorch CPU index ({CPU_INDEX})", ["--index-url", CPU_INDEX]))
    sources.append(Source("pip's configured indexes (PyPI, or pip.conf's)", []))
    return sources


def decide(has_gpu: bool, sources: list[Source]) -> Decision:
    """Which source to install torch from, and what to tell the user before any download."""
    if has_gpu:
        return Decision(None, "NVIDIA GPU found: torch comes from requirements.txt (PyPI's CUDA build).")
    reachable = [source for source in sources if source.resolved is not None]
    for source in reachable:
        if not cuda_packages(source.resolved):
            listing = ", ".join(f"{n}=={v}" for n, v in source.resolved) or "nothing (already installed)"
            return Decision(source, f"No NVIDIA GPU: installing a CPU torch from {source.label}: {listing}.")
    if not reachable:
        return Decision(None, "No NVIDIA GPU, and no torch source answered (offline?): torch is left to "
                              "requirements.txt, which will fail without a network. Set TORCH_INDEX to a reachable "
                              "CPU wheel index, or configure pip's find-links.")
    source = reachable[0]
    cuda = cuda_packages(source.resolved)
    return Decision(source, f"WARNING: no NVIDIA GPU, and no CPU build of torch was reachable. {source.label} "
                            f"would install a CUDA torch with {len(cuda)} CUDA packages (several GB): "
                            f"{', '.join(cuda)}. Installing it anyway; to avoid this, stop now (Ctrl-C) and "
                            f"set TORCH_INDEX to a CPU wheel index.")


def has_nvidia_gpu() -> bool:
    if not shutil.which("nvidia-smi"):
        return False
    return subprocess.run(["nvidia-smi", "-L"], capture_output=True).returncode == 0


def _host_reachable(url: str, timeout: float = 3.0) -> bool:
    parsed = urlparse(url)
    if parsed.scheme not in ("http", "https"):
        return True  # file:// and the like: let pip answer
    try:
        socket.create_connection((parsed.hostname, parsed.port or 443), timeout=timeout).close()
        return True
    except OSError:
        return False


def resolve(source: Source, requirement: str) -> list[tuple[str, str]] | None:
    """What pip would install from `source` (dry run, metadata only), or None when it cannot answer."""
    index = source.pip_args[1] if source.pip_args[:1] == ["--index-url"] else ""
    if index and not _host_reachable(index):
        return None
    with tempfile.TemporaryDirectory() as tmp:
        report = Path(tmp) / "report.json"
        result = subprocess.run(
            [sys.executable, "-m", "pip", "install", "--dry-run", "--quiet", "--timeout", "15", "--retries", "1",
             "--report", str(report), *source.pip_args, requirement], capture_output=True, text=True)
        if result.returncode != 0 or not report.is_file():
            return None
        items = json.loads(report.read_text()).get("install", [])
    return [(item["metadata"]["name"], item["metadata"]["version"]) for item in items]


def main(argv: list[str]) -> int:
    requirement, torch_index = argv[0], (argv[1] if len(argv) > 1 else "")
    gpu = has_nvidia_gpu()
    sources = [] if gpu else candidate_sources(torch_index)
    for source in sources:
        print(f"torch: asking pip what {source.label} would install (dry run) ...", flush=True)
        source.resolved = resolve(source, requirement)
        if source.resolved is not None and not cuda_packages(source.resolved):
            break  # the first CPU-only answer wins; later sources need not be asked
    decision = decide(gpu, sources)
    print(f"torch: {decision.message}", flush=True)
    if decision.source is None or not decision.source.resolved:
        return 0
    return subprocess.run([sys.executable, "-m", "pip", "install", "--progress-bar", "on", "--no-compile",
                           *decision.source.pip_args, requirement]).returncode


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
