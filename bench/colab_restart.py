"""Stress the forced-restart path N times in the Colab simulation; count the runs whose saved notebook shows why.

Each run: a fresh simulated runtime (tools/colab_sim), a first cell that imports the old diffusers, then
notebook 02's setup cell. The kit installs the pins (fake pip), sees the stale import, prints its reason
and kills the kernel. Issue 11 found the reason missing from the saved notebook in 3 of 3 such runs.
Usage: python bench/colab_restart.py [--runs 20]   (make bench-colab)
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from tools import colab_sim, runner  # noqa: E402

REASON = "Restarting the runtime: diffusers, huggingface-hub were imported before the upgrade"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--runs", type=int, default=20)
    args = parser.parse_args()
    notebook = runner.NOTEBOOKS / "02_load_and_generate.ipynb"
    shown, killed, seconds = 0, 0, []
    for number in range(1, args.runs + 1):
        with tempfile.TemporaryDirectory() as tmp:
            sim = colab_sim.build(Path(tmp) / "sim")
            sim.cache_model("Qwen/Qwen-Image")
            start = time.perf_counter()
            run = colab_sim.execute(sim, notebook, Path(tmp) / "02.ipynb", {}, before="import diffusers", upto="setup")
            seconds.append(time.perf_counter() - start)
        killed += run.error.startswith("DeadKernelError")
        shown += REASON in run.text
        print(f"run {number:2d}: kernel {'killed' if run.error.startswith('DeadKernelError') else 'alive'}, "
              f"reason {'shown' if REASON in run.text else 'MISSING'} ({seconds[-1]:.1f} s)", flush=True)
    print(f"reason in the saved notebook: {shown}/{args.runs} runs (kernel killed in {killed}); "
          f"median run {sorted(seconds)[len(seconds) // 2]:.1f} s")
    return 0 if shown == killed == args.runs else 1


if __name__ == "__main__":
    sys.exit(main())
