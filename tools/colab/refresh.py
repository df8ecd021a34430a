"""Refresh the vendored Colab package set from a checkout of googlecolab/backend-info.

    python -m tools.colab.refresh <path to a backend-info clone or bare git dir> [commit]

Copies pip-freeze.gpu.txt and os-info-gpu.txt at that commit (default HEAD) into tools/colab/ and
rewrites tools/colab/SOURCE (the commit, its date, where it came from). Nothing is downloaded.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
FILES = ("pip-freeze.gpu.txt", "os-info-gpu.txt")
REPOSITORY = "googlecolab/backend-info"


def git(checkout: Path, *args: str) -> str:
    return subprocess.run(["git", f"--git-dir={checkout}", *args], check=True, capture_output=True,
                          text=True).stdout


def git_dir(path: Path) -> Path:
    return path / ".git" if (path / ".git").exists() else path


def refresh(checkout: Path, commit: str = "HEAD", into: Path = HERE) -> str:
    """Write the freeze files and SOURCE from `commit` of `checkout`; return the full commit id."""
    checkout = git_dir(checkout)
    full, date = git(checkout, "log", "-1", "--format=%H %cI", commit).split()
    for name in FILES:
        text = git(checkout, "show", f"{full}:{name}")
        (into / f".{name}.tmp").write_text(text)
        (into / f".{name}.tmp").replace(into / name)
    (into / "SOURCE").write_text(f"repository {REPOSITORY}\ncommit {full}\ndate {date}\nfiles {' '.join(FILES)}\n")
    return full


if __name__ == "__main__":
    if len(sys.argv) not in (2, 3):
        sys.exit(__doc__)
    print(refresh(Path(sys.argv[1]), *sys.argv[2:]))
