"""Does the kit's hosted install leave Colab's published package set consistent? A metadata check, offline.

Colab's package set (tools/colab/colab-packages.txt) says what is installed; tools/colab/requires-dist.txt (vendored,
written by `collect`) holds the Requires-Dist lines that matter: those of Colab's packages that name a package
the kit installs, and those of the kit's hosted pins and backends themselves. `conflicts` replays what pip's
own check would say after the install: every requirement that the new set of versions breaks.

    python -m tools.colab.requires collect <python of a Colab-minus-GPU venv> <python of a venv with the pins>
        [wheel of a backend that venv lacks ...]
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

from packaging.markers import default_environment
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

HERE = Path(__file__).resolve().parent
REQUIRES = HERE / "requires-dist.txt"
# Colab's Python and platform, for the markers of Requires-Dist (the freeze is Linux x86_64, CPython 3.13).
COLAB_MARKERS = {**default_environment(), "python_version": "3.13", "python_full_version": "3.13.15",
                 "sys_platform": "linux", "platform_system": "Linux", "platform_machine": "x86_64",
                 "implementation_name": "cpython", "platform_python_implementation": "CPython",
                 "os_name": "posix", "extra": ""}

READ_METADATA = r"""
import json, sys
from importlib import metadata
out = {}
for dist in metadata.distributions():
    name = dist.metadata["Name"]
    out[name] = [dist.version, dist.requires or []]
print(json.dumps(out))
"""


def parse(path: Path = REQUIRES) -> dict[tuple[str, str], list[Requirement]]:
    """{(canonical name, version): [requirements that apply in Colab]} from the vendored file."""
    found: dict[tuple[str, str], list[Requirement]] = {}
    for line in path.read_text().splitlines():
        if not line.strip() or line.startswith("#"):
            continue
        who, _, requirement = line.partition(" requires ")
        name, version = who.split("==")
        entry = found.setdefault((canonicalize_name(name), version), [])
        if requirement:
            entry.append(Requirement(requirement))
    return found


def applies(requirement: Requirement) -> bool:
    return requirement.marker is None or requirement.marker.evaluate(COLAB_MARKERS)


def conflicts(installed: dict[str, str], changed: dict[str, str], requires) -> list[str]:
    """What `pip check` would report after `changed` ({name: version}) replaces those of `installed` (the freeze):
    each requirement of an installed package (as recorded in `requires`) that the resulting versions break."""
    after = {**installed, **changed}
    found = []
    for (name, version), requirements in sorted(requires.items()):
        if after.get(name) != version:
            continue  # that version is not the one installed after the install
        for requirement in requirements:
            target = canonicalize_name(requirement.name)
            if target not in changed and name not in changed:
                continue  # untouched on both sides: Colab's own business
            have = after.get(target)  # None: a new dependency, which pip installs to fit (not checked here)
            if have is not None and not requirement.specifier.contains(have, prereleases=True):
                found.append(f"{name} {version} requires {requirement}, but {target} {have} would be installed")
    return found


def _metadata(python: str) -> dict[str, list]:
    out = subprocess.run([python, "-c", READ_METADATA], check=True, capture_output=True, text=True).stdout
    return {canonicalize_name(name): entry for name, entry in json.loads(out).items()}


def _wheel_metadata(wheel: Path) -> tuple[str, list]:
    import zipfile
    from email.parser import Parser

    with zipfile.ZipFile(wheel) as archive:
        name = next(n for n in archive.namelist() if n.endswith(".dist-info/METADATA"))
        message = Parser().parsestr(archive.read(name).decode())
    return message["Name"], [message["Version"], message.get_all("Requires-Dist") or []]


def collect(colab_python: str, pins_python: str, wheels: list[str], into: Path = REQUIRES) -> None:
    """Write `into`: the kit's hosted pins and backends with their requirements (from `pins_python` and the
    given wheels), and every package of the Colab venv whose requirements name one of them."""
    sys.path.insert(0, str(HERE.parent.parent))
    from helpers import rules, setup

    kit = {name: str(req.specifier).removeprefix("==") for name, req in setup.load_pins().items()
           if name in setup.HOSTED_INSTALL}
    kit.update({canonicalize_name(spec["package"]): spec["pin"] for spec in rules.BACKENDS.values()})
    pinned_side = _metadata(pins_python)
    for wheel in wheels:
        name, entry = _wheel_metadata(Path(wheel))
        pinned_side[canonicalize_name(name)] = entry
    lines = ["# Requires-Dist that decide whether the kit's hosted install keeps Colab consistent (requires.py)",
             "# Colab side: from a venv built from the vendored freeze; kit side: the pinned versions' metadata."]
    for name, version in sorted(kit.items()):
        found_version, requirements = pinned_side[name]
        assert found_version == version, f"{name}: {found_version} in {pins_python}, pinned {version}"
        kept = [r for r in requirements if applies(Requirement(r))]
        lines += [f"{name}=={version} requires {r}" for r in kept] or [f"{name}=={version}"]
    for name, (version, requirements) in sorted(_metadata(colab_python).items()):
        kept = [r for r in requirements if applies(Requirement(r)) and canonicalize_name(Requirement(r).name) in kit]
        lines += [f"{name}=={version} requires {r}" for r in kept]
    into.write_text("\n".join(lines) + "\n")


if __name__ == "__main__":
    if len(sys.argv) < 4 or sys.argv[1] != "collect":
        sys.exit(__doc__)
    collect(sys.argv[2], sys.argv[3], sys.argv[4:])
