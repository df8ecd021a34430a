"""The core tests on several Pythons: the unit tests that need only the standard library, packaging and pytest.

    python -m tools.colab.core_tests PYTHON [PYTHON ...]

For each interpreter (CI: 3.11 and Colab's 3.13) a small venv under .cache/core-<version> gets exactly
packaging and pytest at the kit's pins, nothing else, so a core test that imports torch, diffusers or
huggingface_hub fails there. CORE names each file with the number of tests it must pass at least: the
selection is explicit and cannot shrink silently (a test removed, skipped or no longer collected fails
the run; raise the number when you add tests). Runs without conftest.py (its fixtures need the stack).
"""

from __future__ import annotations

import subprocess
import sys
import xml.etree.ElementTree as ElementTree
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
CORE = {
    "tests/test_setup.py": 42,
    "tests/test_colab_freeze.py": 11,
    "tests/test_env.py": 15,
    "tests/test_install_torch.py": 6,
}
TOOLS = ("packaging", "pytest")


def pins(names=TOOLS) -> list[str]:
    found = {}
    for line in (ROOT / "requirements.txt").read_text().splitlines():
        name = line.split("==")[0].strip().lower()
        if name in names and "==" in line:
            found[name] = line.split("#")[0].strip()
    return [found[name] for name in names]


def venv_for(python: str) -> Path:
    version = subprocess.run([python, "-c", "import sys; print('%d.%d' % sys.version_info[:2])"], check=True,
                             capture_output=True, text=True).stdout.strip()
    venv = ROOT / ".cache" / f"core-{version}"
    if not (venv / "bin" / "python").exists():
        subprocess.run([python, "-m", "venv", str(venv)], check=True)
    subprocess.run([str(venv / "bin" / "python"), "-m", "pip", "install", "--quiet", "--disable-pip-version-check",
                    *pins()], check=True)
    return venv


def passed_per_file(report: Path) -> tuple[dict[str, int], int]:
    """{test file: passed tests} and the number of failures, errors and skips, from pytest's JUnit XML."""
    passed: dict[str, int] = {}
    bad = 0
    for case in ElementTree.parse(report).iter("testcase"):
        path = case.get("classname", "").split(".")
        file = "/".join(path[: path.index(next(p for p in path if p.startswith("test_"))) + 1]) + ".py"
        if any(child.tag in ("failure", "error", "skipped") for child in case):
            bad += 1
        else:
            passed[file] = passed.get(file, 0) + 1
    return passed, bad


def run(python: str) -> bool:
    venv = venv_for(python)
    report = venv / "core-tests.xml"
    command = [str(venv / "bin" / "python"), "-m", "pytest", "--noconftest", "-p", "no:cacheprovider", "-q",
               f"--junitxml={report}", *CORE]
    code = subprocess.run(command, cwd=ROOT, env={"PATH": "/usr/bin:/bin", "PYTHONPATH": str(ROOT),
                                                  "CI": "true", "KIT_QUIET": "1"}).returncode
    passed, bad = passed_per_file(report)
    short = {file: (passed.get(file, 0), least) for file, least in CORE.items() if passed.get(file, 0) < least}
    for file, (count, least) in short.items():
        print(f"core tests: {file} passed {count}, at least {least} expected")
    print(f"core tests on {venv.name}: {sum(passed.values())} passed, {bad} failed/errors/skipped")
    return code == 0 and not short and not bad


if __name__ == "__main__":
    if len(sys.argv) < 2:
        sys.exit(__doc__)
    results = [run(python) for python in sys.argv[1:]]
    sys.exit(0 if all(results) else 1)
