"""Refresh the vendored Colab package set from a checkout of googlecolab/backend-info.

    python -m tools.colab.refresh <path to a backend-info clone or bare git dir> [commit]

Writes tools/colab/colab-packages.txt: the lines of pip-freeze.gpu.txt at that commit (default HEAD) for the
packages that matter to the kit (runtime.KIT_RELEVANT, requirements.txt, the packages in requires-dist.txt), and
tools/colab/SOURCE (the commit, its date, Colab's Python from os-info-gpu.txt). Only that extract is kept: the
published files themselves stay in their repository. Nothing is downloaded.
"""

from __future__ import annotations

import re
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


def relevant() -> set[str]:
    """The canonical names the extract keeps."""
    from packaging.requirements import Requirement

    from .runtime import KIT_RELEVANT, canonical

    names = set(KIT_RELEVANT)
    for line in (HERE.parent.parent / "requirements.txt").read_text().splitlines():
        if (line := line.split("#")[0].strip()) and not line.startswith("-"):
            names.add(canonical(Requirement(line).name))
    for line in (HERE / "requires-dist.txt").read_text().splitlines():
        if " requires " in line and not line.startswith("#"):
            package, requirement = line.split(" requires ", 1)
            names |= {canonical(package.split("==")[0]), canonical(Requirement(requirement).name)}
    return names


def refresh(checkout: Path, commit: str = "HEAD", into: Path = HERE) -> str:
    """Write colab-packages.txt and SOURCE from `commit` of `checkout`; return the full commit id."""
    from .runtime import canonical

    checkout = git_dir(checkout)
    full, date = git(checkout, "log", "-1", "--format=%H %cI", commit).split()
    freeze, os_info = (git(checkout, "show", f"{full}:{name}") for name in FILES)
    keep = relevant()
    lines = [line for line in freeze.splitlines() if "==" in line and canonical(line.split("==")[0]) in keep]
    python = re.search(r"^Python (\S+)", os_info, re.M).group(1)
    target = into / "colab-packages.txt"
    header = target.read_text().split("\n", 2)[:2] if target.exists() else []
    (into / ".colab-packages.txt.tmp").write_text("\n".join([*header, *lines]) + "\n")
    (into / ".colab-packages.txt.tmp").replace(into / "colab-packages.txt")
    (into / "SOURCE").write_text(f"repository {REPOSITORY}\ncommit {full}\ndate {date}\npython {python}\n"
                                 "files colab-packages.txt (the kit's packages from pip-freeze.gpu.txt; the Python "
                                 "from os-info-gpu.txt)\n")
    return full


if __name__ == "__main__":
    if len(sys.argv) not in (2, 3):
        sys.exit(__doc__)
    print(refresh(Path(sys.argv[1]), *sys.argv[2:]))
