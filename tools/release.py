"""`make release VERSION=x.y.z`: set the kit version everywhere it appears, in one step.

Places: helpers.__version__, every notebook's metadata (kit.version), its Colab badge (blob/v<version>/),
its title line ("kit version **x.y.z**") and setup cell (KIT_VERSION), the README's badge table, and a new
CHANGELOG heading. `mismatches()` lists every place that disagrees (a test runs it).
"""

from __future__ import annotations

import argparse
import re
import sys
from datetime import date
from pathlib import Path

import nbformat

from helpers import KIT_ROOT

ROOT = KIT_ROOT
VERSION = re.compile(r"^\d+\.\d+\.\d+$")
INIT_VERSION = re.compile(r'__version__ = "([^"]+)"')
BADGE = re.compile(r"(https://colab\.research\.google\.com/github/[\w.-]+/[\w.-]+/blob/v)([\w.]+)(/notebooks/)")
TITLE = re.compile(r"(kit version \*\*)([\w.]+)(\*\*)")
SETUP = re.compile(r'(KIT_VERSION = ")([\w.]+)(")')


def current_version(root: Path = ROOT) -> str:
    return INIT_VERSION.search((root / "helpers" / "__init__.py").read_text()).group(1)


def _notebooks(root: Path) -> list[Path]:
    return sorted((root / "notebooks").glob("*.ipynb"))


def mismatches(root: Path = ROOT) -> list[str]:
    """Every place whose version differs from helpers.__version__."""
    version, found = current_version(root), []
    for path in _notebooks(root):
        notebook = nbformat.read(path, as_version=4)
        if notebook.metadata.get("kit", {}).get("version") != version:
            found.append(f"{path.name}: metadata kit.version")
        text = "\n".join(cell.source for cell in notebook.cells)
        for label, pattern in (("Colab badge", BADGE), ("title", TITLE), ("KIT_VERSION", SETUP)):
            values = {match.group(2) for match in pattern.finditer(text)}
            if values != {version}:
                found.append(f"{path.name}: {label} has {sorted(values) or 'none'}")
    readme = {match.group(2) for match in BADGE.finditer((root / "README.md").read_text())}
    if readme != {version}:
        found.append(f"README.md: badges have {sorted(readme)}")
    if not re.search(rf"^## {re.escape(version)}\b", (root / "CHANGELOG.md").read_text(), re.MULTILINE):
        found.append(f"CHANGELOG.md: no '## {version}' heading")
    return found


def release(version: str, root: Path = ROOT) -> None:
    if not VERSION.match(version):
        raise ValueError(f"VERSION={version!r} is not valid: use three numbers like 0.2.0.")
    old = current_version(root)
    init = root / "helpers" / "__init__.py"
    init.write_text(INIT_VERSION.sub(f'__version__ = "{version}"', init.read_text()))
    for path in _notebooks(root):
        notebook = nbformat.read(path, as_version=4)
        notebook.metadata.setdefault("kit", {})["version"] = version
        for cell in notebook.cells:
            for pattern in (BADGE, TITLE, SETUP):
                cell.source = pattern.sub(lambda m: f"{m.group(1)}{version}{m.group(3)}", cell.source)
        path.write_text(nbformat.writes(notebook) + "\n")
    readme = root / "README.md"
    readme.write_text(BADGE.sub(lambda m: f"{m.group(1)}{version}{m.group(3)}", readme.read_text())
                      .replace(f"tag `v{old}`", f"tag `v{version}`"))
    changelog = root / "CHANGELOG.md"
    text = changelog.read_text()
    text = text.replace(f"## {old} (unreleased)", f"## {old}", 1)
    head, _, rest = text.partition("\n## ")
    changelog.write_text(f"{head}\n## {version} ({date.today().isoformat()})\n- Release {version}.\n\n## {rest}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m tools.release", description=__doc__)
    parser.add_argument("version", help="the new kit version, e.g. 0.2.0")
    args = parser.parse_args(argv)
    release(args.version)
    problems = mismatches()
    for problem in problems:
        print("still differs:", problem)
    print(f"kit version is now {current_version()}; tag the release v{current_version()}")
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
