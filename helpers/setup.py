"""The setup cell (check the parameters, install the pins and the run's backend, restart if needed, apply the
import-time settings) and notebook 01's report. No torch, diffusers or backend at module level: runs pre-install."""

from __future__ import annotations

import os
import platform
import re
import shutil
import signal
import subprocess
import sys
import time
import warnings
from dataclasses import dataclass, field
from importlib import import_module, metadata
from pathlib import Path

from packaging.requirements import Requirement
from packaging.utils import canonicalize_name
from packaging.version import Version

from . import KIT_ROOT, env, rules, validate
from .diffusers_logs import quiet_backend_imports
from .errors import KitError, PipInstallError

REQUIREMENTS = KIT_ROOT / "requirements.txt"

# What a hosted runtime (Colab, Kaggle) gets from us, besides the backend a run quantizes with.
HOSTED_INSTALL = frozenset({"diffusers", "transformers", "accelerate", "huggingface-hub", "safetensors", "tokenizers",
                            "imageio", "imageio-ffmpeg", "ftfy"})  # the last three: video (notebook 07)
_SERVER = "the running notebook server's and front end's own: replacing it under a live kernel breaks the session"
_BUILT_AGAINST = "the runtime's preinstalled packages are built against its version, and the kit works with it"
_TOOLING = "test and headless-run tooling, not used inside a notebook"
# Why a hosted install keeps the runtime's own version of every other pin (notebook 01's report says it).
LEFT_AS_FOUND = {
    "torch": "the runtime's CUDA build, matched to its GPU driver: never reinstalled",
    **dict.fromkeys(("ipykernel", "ipywidgets", "jupyter-client", "nbformat"), _SERVER),
    **dict.fromkeys(("numpy", "pillow", "psutil", "packaging", "pyyaml"), _BUILT_AGAINST),
    **dict.fromkeys(("nbclient", "papermill", "nbval", "pytest", "pytest-xdist", "execnet", "ruff"), _TOOLING),
    **{spec["package"]: "a quantization backend: installed (or upgraded) only for a run that quantizes with it"
       for spec in rules.BACKENDS.values()},
}
IMPORT_NAMES = {"huggingface-hub": "huggingface_hub",
                **{spec["package"]: spec["module"].split(".")[0] for spec in rules.BACKENDS.values()}}
# They decide which quantization backends exist when imported: a backend installed later stays unseen.
BACKEND_READERS = ("diffusers", "transformers")


@dataclass(frozen=True)
class Mismatch:
    package: str
    pinned: str
    installed: str | None
    minimum: str | None = None  # a backend: the oldest version the pinned diffusers and transformers accept

    def __str__(self) -> str:
        found = self.installed or "not installed"
        if self.minimum and self.installed:
            return (f"{self.package}: found {found}, too old (the pinned diffusers and transformers need "
                    f">= {self.minimum}; the kit pins {self.pinned})")
        return f"{self.package}: pinned {self.pinned}, found {found}"


def load_pins(path: str | Path = REQUIREMENTS) -> dict[str, Requirement]:
    """Parse a requirements file into {canonical name: Requirement}, skipping comments."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"Pins file {str(path)!r} not found. Run from a clone of the kit (it ships "
                                "requirements.txt), or pass the path of one.")
    lines = (re.sub(r"\s+#.*$", "", line).strip() for line in path.read_text().splitlines())
    requirements = [Requirement(line) for line in lines if line and not line.startswith(("#", "-"))]
    return {canonicalize_name(requirement.name): requirement for requirement in requirements}


def installed_version(package: str) -> str | None:
    try:
        return metadata.version(package)
    except metadata.PackageNotFoundError:
        return None


def find_mismatches(pins: dict[str, Requirement], installed: dict[str, str | None]) -> list[Mismatch]:
    """Every pinned package whose installed version is missing or outside its pin."""
    return [Mismatch(name, str(req.specifier), installed.get(name)) for name, req in pins.items()
            if installed.get(name) is None or not req.specifier.contains(installed[name], prereleases=True)]


def check_pins(pins: dict[str, Requirement] | None = None) -> list[Mismatch]:
    """The pinned packages whose installed version differs (all the kit's pins when `pins` is None)."""
    pins = load_pins() if pins is None else pins
    return find_mismatches(pins, {name: installed_version(name) for name in pins})


def gpu_present(run=subprocess.run) -> bool:
    """Whether `nvidia-smi -L` lists a GPU: asked without torch, which must not be imported before the install."""
    if shutil.which("nvidia-smi") is None:
        return False
    try:
        listed = run(["nvidia-smi", "-L"], capture_output=True, text=True, timeout=30)
    except (OSError, subprocess.SubprocessError):
        return False
    return listed.returncode == 0 and "GPU" in listed.stdout


def backends_needed(namespace: dict, gpu: bool) -> list[str]:
    """The backends (keys of `rules.BACKENDS`) a run with these parameters can quantize with: `rules.backend_for`,
    or for "auto" those of the planner's choices. A plan-only run loads nothing; nf4 without a GPU is refused later."""
    quantization = namespace.get("quantization", "none")
    if not isinstance(quantization, str) or namespace.get("plan_only") is True:
        return []
    on_gpu = gpu and "cpu" not in (namespace.get("hardware"), namespace.get("device_map"))
    if quantization == "auto":
        return ["bitsandbytes"] if on_gpu else ["torchao", "quanto"]
    backend = rules.backend_for(quantization, on_gpu)
    return [backend] if backend and (on_gpu or backend != "bitsandbytes") else []


def backend_mismatches(backends, installed: dict[str, str | None]) -> list[Mismatch]:
    """The needed backends that are missing or older than the pinned libraries accept (a newer one is kept)."""
    specs = [(spec, installed.get(spec["package"])) for spec in (rules.BACKENDS[name] for name in backends)]
    return [Mismatch(spec["package"], f"=={spec['pin']}", version, spec["min"] if version else None)
            for spec, version in specs if version is None or Version(version) < Version(spec["min"])]


@dataclass
class Plan:
    install: list[str] = field(default_factory=list)  # requirement strings for pip
    restart_for: list[str] = field(default_factory=list)  # imported modules that the install leaves stale
    advice: str = ""
    reason: str = ""  # why a restart is needed, in words

    @property
    def restart_needed(self) -> bool:
        return bool(self.restart_for)


def plan(runtime: env.Runtime, pinned: dict, installed: dict, imported: set[str], backends=()) -> Plan:
    """What to install and whether to restart, from facts alone. Hosted: the differing hosted subset and each missing
    or too old backend; restart when an upgraded module or a backend reader is already imported. Elsewhere: advise."""
    if runtime.hosted:
        pinned = {name: req for name, req in pinned.items() if name in HOSTED_INSTALL}
    mismatches = find_mismatches(pinned, installed)
    backend = [m for m in backend_mismatches(backends, installed) if m.package not in pinned]
    if not mismatches and not backend:
        return Plan(advice="All pinned packages are installed at their pinned versions.")
    listing = "; ".join(map(str, mismatches + backend))
    if not runtime.hosted:
        return Plan(advice=f"Version mismatch ({listing}). Fix: `make install` (or `pip install -r requirements.txt`"
                           f"{''.join(f' {m.package}{m.pinned}' for m in backend)}), then restart the kernel.")
    specs = [str(pinned[m.package]) for m in mismatches] + [f"{m.package}{m.pinned}" for m in backend]
    stale = [m.package for m in mismatches + backend
             if m.installed and IMPORT_NAMES.get(m.package, m.package) in imported]
    stale += [name for name in BACKEND_READERS if backend and name in imported and name not in stale]
    reasons = [f"{', '.join(stale)} were imported before the upgrade"] if stale else []
    if backend and any(name in imported for name in BACKEND_READERS):
        reasons.append("diffusers and transformers look for quantization backends "
                       f"({', '.join(m.package for m in backend)}) only when imported")
    return Plan(install=specs, restart_for=stale, advice=f"Installing {', '.join(specs)} ({listing}).",
                reason="; ".join(reasons))


PIP_PROGRESS = ("Collecting", "Downloading", "Installing", "Successfully", "ERROR")
PIP_CONFLICT = re.compile(r"dependency conflicts|\brequires\b.*(but you have|which is not installed)|incompatible")


def pip_install(requirements: list[str], echo=print) -> list[str]:
    """Run pip in this kernel's Python, echoing progress and conflict lines; return the conflicts, raise on failure."""
    args = ["--no-input", "--progress-bar", "off", *requirements]
    process = subprocess.Popen([sys.executable, "-m", "pip", "install", *args], stdout=subprocess.PIPE,
                               stderr=subprocess.STDOUT, text=True)
    lines, conflicts = [], []
    for line in process.stdout:
        lines.append(line)
        conflict = PIP_CONFLICT.search(line)
        conflicts += [line.rstrip()] if conflict else []
        if conflict or line.startswith(PIP_PROGRESS):
            echo(f"  pip: {line.rstrip()}")
    if process.wait() != 0:
        raise PipInstallError(args, process.returncode, "".join(lines))
    return conflicts


def announce(message: str, wait: float = 1.0) -> None:
    """Print `message` and return once ipykernel's IOPub thread has it (flush), with time for zmq to send it (wait)."""
    print(message, flush=True)
    sys.stderr.flush()
    if "ipykernel" in sys.modules:
        time.sleep(wait)


def restart(runtime: env.Runtime, reason: str, kill=os.kill) -> None:
    """In Colab, end the kernel so the runtime restarts it; elsewhere say what to do (a headless run must live)."""
    if runtime.name == "colab":
        announce(f"Restarting the runtime: {reason}. Python keeps the old modules until it restarts. "
                 "When the runtime is back, run the notebook again from the top; the install is done.")
        kill(os.getpid(), signal.SIGKILL)
    else:
        print(f"Restart the kernel before going on: {reason}.")


def ensure_pinned(install: bool = True, backends=()) -> Plan:
    """Check the pins and `backends`; hosted, also install what differs (never torch) and restart if needed."""
    runtime, names = env.detect_runtime(), load_pins()
    installed = {name: installed_version(name) for name in [*names, *(rules.BACKENDS[b]["package"] for b in backends)]}
    decided = plan(runtime, names, installed, {name.split(".")[0] for name in sys.modules}, backends)
    if decided.install and install:
        later = f" A restart follows ({decided.reason})." if decided.restart_needed else " No restart needed."
        announce(f"{decided.advice}{later}", wait=0)  # said before pip runs, so it is seen even if pip is slow
        pip_install(decided.install)
        if decided.restart_needed:
            restart(runtime, decided.reason)
    elif decided.install:
        print(f"Not installing (install=False): {', '.join(decided.install)} differ from what is installed.")
    else:
        print(decided.advice)
    return decided


def _set_before_import(variable: str, value: str, module: str, read_back) -> None:
    """Set an env variable that `module` reads at import; warn when the module already read another value."""
    os.environ[variable] = value
    if module in sys.modules and read_back() != value:
        warnings.warn(f"{variable}={value!r} was set after `import {module}`, which reads it only once at import: "
                      f"this setting has no effect in this kernel. Fix: restart the kernel and call helpers.setup."
                      f"configure(...) before importing {module} (or anything that imports it).", stacklevel=3)


def _import_time_settings(parallel_loading: bool = False, hf_home: str = "") -> None:
    if hf_home:
        hf_home = os.path.abspath(os.path.expanduser(hf_home))
        _set_before_import("HF_HOME", hf_home, "huggingface_hub", lambda: _hub_constant("HF_HOME"))
    _set_before_import("HF_ENABLE_PARALLEL_LOADING", "1" if parallel_loading else "0", "diffusers",
                       lambda: "1" if _diffusers_parallel_loading() else "0")


def configure(parallel_loading: bool = False, hf_home: str = "", quiet: bool | None = None) -> None:
    """Apply the import-time settings, then the progress-bar policy; call before `import diffusers`. parallel_loading:
    HF_ENABLE_PARALLEL_LOADING; hf_home: HF_HOME, the Hub cache root ("" keeps it); quiet: None reads KIT_QUIET/CI."""
    _import_time_settings(parallel_loading, hf_home)
    set_progress_bars(not (env.quiet_mode() if quiet is None else quiet))


# Read lazily: huggingface_hub and diffusers are imported only after the install.
_hub_constant = lambda name: getattr(import_module("huggingface_hub.constants"), name)
_diffusers_parallel_loading = lambda: bool(import_module("diffusers.utils.constants").HF_ENABLE_PARALLEL_LOADING)


def set_progress_bars(enabled: bool) -> None:
    """Turn the Hub download and diffusers loading bars on or off (TQDM_DISABLE reaches neither)."""
    os.environ["HF_HUB_DISABLE_PROGRESS_BARS"] = "0" if enabled else "1"
    from diffusers.utils import logging as diffusers_logging
    from huggingface_hub.utils import disable_progress_bars, enable_progress_bars
    (enable_progress_bars if enabled else disable_progress_bars)()
    (diffusers_logging.enable_progress_bar if enabled else diffusers_logging.disable_progress_bar)()


def hf_token_found() -> bool:
    """Whether huggingface_hub finds a token (env HF_TOKEN, token file, Colab secret). Never returns it."""
    return import_module("huggingface_hub").get_token() is not None


def brief_kit_errors() -> None:
    """In IPython, show a KitError as its one-line message (it says the fix), not a traceback; the cell still fails."""
    ipython = sys.modules.get("IPython")
    shell = ipython.get_ipython() if ipython else None
    if shell is not None:
        shell.set_custom_exc((KitError,), lambda shell, etype, value, tb, tb_offset=None: shell._showtraceback(
            etype, value, [f"{etype.__name__}: {value}"]))


def prepare(namespace: dict, install: bool = True, pipeline_classes: tuple[str, ...] = (), *,
            parallel_loading: bool = False, hf_home: str = "", quiet: bool | None = None, gpu=None) -> None:
    """Check `namespace` (the notebook's `globals()`), install what differs and the run's backend, then apply the
    import-time settings and progress-bar policy. install=False only checks; gpu=None asks nvidia-smi."""
    brief_kit_errors()
    validate.check(namespace, stage="before_install", pipeline_classes=pipeline_classes)
    backends = backends_needed(namespace, gpu_present() if gpu is None else gpu)
    ensure_pinned(install=install, backends=backends)
    quiet_backend_imports()  # before anything imports diffusers, which imports torchao whenever it is installed
    _import_time_settings(parallel_loading, hf_home)  # before the checks below import huggingface_hub
    validate.check(namespace, stage="after_install", pipeline_classes=pipeline_classes)
    set_progress_bars(not (env.quiet_mode() if quiet is None else quiet))


@dataclass
class Report:
    runtime: env.Runtime
    python: str
    versions: dict[str, str | None]
    mismatches: list[Mismatch]  # pins the kit installs (all of them outside a hosted runtime) that differ
    left: list[tuple[Mismatch, str]]  # hosted: pins deliberately left at the runtime's version, and why
    device: str
    dtype: str
    gpus: list[env.Accelerator]
    ram_gib: float
    hf_token_found: bool
    hf_cache: str
    parallel_loading: bool

    def __str__(self) -> str:
        installed = "installed by the kit" if self.runtime.hosted else "all"
        return "\n".join([
            f"runtime        {self.runtime.name}{' (CI)' if self.runtime.ci else ''}", f"python         {self.python}",
            *(f"{name:14s} {version or 'not installed'}" for name, version in self.versions.items()),
            f"pins           {installed} match" if not self.mismatches else
            f"pins           differ: {'; '.join(map(str, self.mismatches))}",
            *(f"kept as found  {m}: {why}" for m, why in self.left),
            f"device         {self.device} (dtype {self.dtype})",
            *(f"gpu {g.index}          {g.name}, {g.memory_gib:.1f} GiB, sm_{g.compute_capability[0]}"
              f"{g.compute_capability[1]}, bf16 {'yes' if g.bf16 else 'no'}" for g in self.gpus),
            f"ram            {self.ram_gib:.1f} GiB",
            f"HF token       {'found' if self.hf_token_found else 'not found (public models only)'}",
            f"HF cache       {self.hf_cache}", f"parallel load  {'on' if self.parallel_loading else 'off'}",
        ])


def report() -> Report:
    """Everything a user needs to know before loading a model: versions, pins, hardware, token, cache."""
    runtime, pinned = env.detect_runtime(), load_pins()
    hosted = {name: req for name, req in pinned.items() if name in HOSTED_INSTALL or not runtime.hosted}
    others = {name: req for name, req in pinned.items() if name not in hosted}
    gpus, device = env.accelerators(), env.recommended_device()
    versions = {name: installed_version(name) for name in ("torch", "diffusers", "transformers", "accelerate",
                                                           "huggingface-hub")}
    left = [(m, LEFT_AS_FOUND.get(m.package, "not part of the hosted install")) for m in check_pins(others)]
    return Report(runtime, platform.python_version(), versions, check_pins(hosted), left, device,
                  env.recommended_dtype(device, gpus), gpus, import_module("psutil").virtual_memory().total / 2**30,
                  hf_token_found(), _hub_constant("HF_HUB_CACHE"), _diffusers_parallel_loading())
