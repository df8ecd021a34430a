"""The kit's version pins, read from `requirements.txt`, and the check against what is installed."""

from __future__ import annotations

import re
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path

from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

from . import KIT_ROOT
from .errors import VersionMismatchError

REQUIREMENTS = KIT_ROOT / "requirements.txt"

# What a hosted runtime (Colab, Kaggle) gets from us. Everything else there is the host's own:
# replacing its CUDA torch, numpy, pillow or notebook server would break it or force a restart.
HOSTED_INSTALL = frozenset({"diffusers", "transformers", "accelerate", "huggingface-hub", "safetensors", "tokenizers",
                            "imageio", "imageio-ffmpeg", "ftfy"})  # the last three: video (notebook 07)


@dataclass(frozen=True)
class Mismatch:
    package: str
    pinned: str
    installed: str | None

    def __str__(self) -> str:
        found = self.installed or "not installed"
        return f"{self.package}: pinned {self.pinned}, found {found}"


def load_pins(path: str | Path = REQUIREMENTS) -> dict[str, Requirement]:
    """Parse a requirements file into {canonical name: Requirement}, skipping comments."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(
            f"Pins file {str(path)!r} not found. Run from a clone of the kit (it ships requirements.txt), "
            "or pass the path of one."
        )
    pins = {}
    for line in path.read_text().splitlines():
        line = re.sub(r"\s+#.*$", "", line).strip()
        if line and not line.startswith(("#", "-")):
            requirement = Requirement(line)
            pins[canonicalize_name(requirement.name)] = requirement
    return pins


def installed_version(package: str) -> str | None:
    try:
        return metadata.version(package)
    except metadata.PackageNotFoundError:
        return None


def find_mismatches(pins: dict[str, Requirement], installed: dict[str, str | None]) -> list[Mismatch]:
    """Pure comparison: every pinned package whose installed version is missing or outside its pin."""
    mismatches = []
    for name, requirement in pins.items():
        version = installed.get(name)
        if version is None or not requirement.specifier.contains(version, prereleases=True):
            mismatches.append(Mismatch(name, str(requirement.specifier), version))
    return mismatches


def check_pins(pins: dict[str, Requirement] | None = None, strict: bool = False) -> list[Mismatch]:
    """Compare installed versions with the pins; raise (strict) or return the mismatches."""
    pins = load_pins() if pins is None else pins
    mismatches = find_mismatches(pins, {name: installed_version(name) for name in pins})
    if mismatches and strict:
        lines = "\n".join(f"  - {m}" for m in mismatches)
        raise VersionMismatchError(
            f"{len(mismatches)} package(s) differ from the kit's pins:\n{lines}\n"
            f"Fix: pip install -r {REQUIREMENTS.name} (in Colab run notebooks/01_setup.ipynb), then restart the kernel."
        )
    return mismatches
