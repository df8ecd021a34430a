"""Community pipelines and remote code, loaded only after the kit has shown what will run.

diffusers executes Python from three places: a `custom_pipeline` (a local file or folder, or a
community pipeline fetched by name), a repository's own pipeline class (`_class_name` as a list in
model_index.json), and custom components (`["module", "Class"]` entries, or `auto_map` in a component's
config). This module lists those files and their sha256 *before* anything runs, compares them with a
pinned manifest when you have one, and refuses the unsafe forms:

* a local path that does not exist (diffusers would treat it as a Hub repo or a community name);
* `trust_remote_code` for a Hub repo whose `revision` is not a full 40-hex commit (a branch can change
  under you), unless `i_accept_unpinned_remote_code=True`;
* a community pipeline by name while offline (diffusers asks PyPI with no timeout and would hang);
* a `custom_revision` like "v0.41.0" (diffusers wants "0.41.0" or "main");
* anything at all while DIFFUSERS_DISABLE_REMOTE_CODE is set.

Every load here ends in the real diffusers call with `trust_remote_code=True`; this module is the
only place in the kit that passes it.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path

from . import KIT_ROOT, loading, rules, sources
from .env import truthy
from .errors import InvalidParameterError, KitError, LocalPathNotFoundError, ModelNotCachedOfflineError

COMMUNITY = KIT_ROOT / "community"
KNOWN_LIBRARIES = {"diffusers", "transformers", None}
MIRROR = "diffusers/community-pipelines-mirror"


class RemoteCodeRefused(KitError, PermissionError):
    """The kit will not run this code: the message says why and what to do instead."""


class RemoteCodeChanged(KitError, RuntimeError):
    """The code files differ from the pinned manifest; carries what changed."""

    def __init__(self, changes: dict[str, tuple[str | None, str | None]]):
        self.changes = changes
        lines = [f"  {path}: pinned {pinned or 'absent'}, found {found or 'absent'}"
                 for path, (pinned, found) in sorted(changes.items())]
        super().__init__("Remote code differs from the pinned manifest; nothing was run:\n" + "\n".join(lines)
                         + "\nRead the new code, then pin the new hashes if you trust it.")


@dataclass(frozen=True)
class CodeFile:
    role: str  # what diffusers uses it for
    name: str  # path inside the repository (the manifest key)
    path: Path  # the file on disk that diffusers will execute
    sha256: str
    size: int


def remote_code_disabled() -> bool:
    from diffusers.utils import constants

    return truthy(os.environ.get("DIFFUSERS_DISABLE_REMOTE_CODE")) or bool(constants.DIFFUSERS_DISABLE_REMOTE_CODE)


def _refuse_if_disabled() -> None:
    if remote_code_disabled():
        raise RemoteCodeRefused(
            "DIFFUSERS_DISABLE_REMOTE_CODE is set: diffusers refuses every custom pipeline and custom component, "
            "and so does the kit. Unset it (it is read when diffusers is imported: restart the kernel) to load code."
        )


def resolve_custom_pipeline(path: str | os.PathLike) -> Path:
    """An existing `.py` file or folder with `pipeline.py` (the working folder first, then the kit's root).
    Never a Hub lookup: the rule is `rules.custom_pipeline_path`."""
    return rules.custom_pipeline_path("custom_pipeline", path)


def _sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _code_file(role: str, name: str, path: Path) -> CodeFile:
    return CodeFile(role, name, path, _sha256(path), path.stat().st_size)


def _fetch(source: str, name: str, revision: str | None) -> Path:
    """The repository file `name`: from the folder, or downloaded (exactly what diffusers would download)."""
    if Path(source).is_dir():
        return Path(source) / name
    from huggingface_hub import hf_hub_download

    return Path(hf_hub_download(source, name, revision=revision, local_files_only=loading.hub_offline()))


def code_files(source: str, custom_pipeline: str | os.PathLike | None = None,
               revision: str | None = None) -> list[CodeFile]:
    """Every Python file diffusers would execute to load `source` (a folder or Hub id) this way."""
    files = []
    if custom_pipeline is not None:
        resolved = resolve_custom_pipeline(custom_pipeline)
        script = resolved if resolved.is_file() else resolved / "pipeline.py"
        files.append(_code_file("custom_pipeline", script.name, script))
    index = loading.read_model_index(source, revision)
    if isinstance(index.get("_class_name"), list):
        module, class_name = index["_class_name"]
        script = _fetch(source, f"{module}.py", revision)
        files.append(_code_file(f"pipeline class {class_name}", f"{module}.py", script))
    for name, spec in index.items():
        if name.startswith("_") or not isinstance(spec, list) or spec[0] in KNOWN_LIBRARIES:
            continue
        import diffusers.pipelines

        if hasattr(diffusers.pipelines, spec[0]):
            continue  # a diffusers pipeline module, e.g. ["stable_diffusion", "StableDiffusionSafetyChecker"]
        file = f"{name}/{spec[0]}.py"
        files.append(_code_file(f"{name} component {spec[1]}", file, _fetch(source, file, revision)))
    return files


def component_code_files(source: str, subfolder: str, revision: str | None = None) -> list[CodeFile]:
    """The files an `AutoModel.from_pretrained(..., subfolder=...)` would execute (its config's auto_map)."""
    config = json.loads(_fetch(source, f"{subfolder}/config.json", revision).read_text())
    files = []
    for reference in sorted(set(config.get("auto_map", {}).values())):
        module = reference.rsplit(".", 1)[0]
        file = f"{subfolder}/{module}.py"
        files.append(_code_file(f"auto_map {reference}", file, _fetch(source, file, revision)))
    return files


def manifest(files: list[CodeFile]) -> dict[str, str]:
    """{path in repository: sha256}: pin this after reading the code once."""
    return {file.name: file.sha256 for file in files}


def report(files: list[CodeFile], runner: str = "diffusers will execute") -> str:
    lines = [f"{runner} {len(files)} code file(s):"]
    lines += [f"  {file.name:40s} sha256 {file.sha256}  {file.size:>7,d} bytes  ({file.role})" for file in files]
    return "\n".join(lines)


def verify(files: list[CodeFile], pinned: dict[str, str]) -> None:
    """Raise RemoteCodeChanged when any file was added, removed or changed against `pinned`."""
    found = manifest(files)
    changes = {name: (pinned.get(name), found.get(name))
               for name in pinned.keys() | found.keys() if pinned.get(name) != found.get(name)}
    if changes:
        raise RemoteCodeChanged(changes)


def check_revision(model_id: str, revision: str | None, i_accept_unpinned_remote_code: bool = False) -> None:
    """Remote code from the Hub runs only at a full commit hash: a branch or tag can be moved to new code."""
    if Path(model_id).is_dir() or i_accept_unpinned_remote_code:
        return
    try:
        rules.commit("revision", revision, allow_empty=False)
    except InvalidParameterError as error:
        raise RemoteCodeRefused(
            f"{error.rule}, so the code of {model_id!r} could change between the audit and a later load",
            name="revision", value=revision,
            fix=f"{error.fix} To accept moving code anyway: i_accept_unpinned_remote_code=True.",
        ) from None


def _audit(files: list[CodeFile], pinned: dict[str, str] | None, runner: str = "diffusers will execute") -> None:
    print(report(files, runner))
    if pinned is not None:
        verify(files, pinned)
        print("  all files match the pinned manifest")


@dataclass(frozen=True)
class Audit:
    """What an audit checked, and the exact values to pass to the diffusers call that follows it."""

    source: str | None  # the model to pass to from_pretrained: a resolved folder, or the Hub id
    revision: str | None  # the commit to pass (None for local folders, which diffusers ignores it for)
    custom_pipeline: str | None  # the resolved file or folder to pass as custom_pipeline=
    files: list[CodeFile]

    @property
    def manifest(self) -> dict[str, str]:
        return manifest(self.files)


def audit(model_id: str | None = None, *, custom_pipeline=None, revision: str | None = None,
          pinned: dict[str, str] | None = None, i_accept_unpinned_remote_code: bool = False) -> Audit:
    """Check and show every code file that `from_pretrained`/`from_pipe(..., trust_remote_code=True)` would run.

    Refuses the unsafe forms (see the module docstring), prints each file with its sha256, and compares them
    with `pinned` when given. Pass the returned `source`, `revision` and `custom_pipeline` to the diffusers
    call on the next line, so that what runs is exactly what was shown. `model_id=None` audits a
    `custom_pipeline` alone (for `from_pipe`).
    """
    _refuse_if_disabled()
    resolved = None if custom_pipeline is None else str(resolve_custom_pipeline(custom_pipeline))
    if model_id is None:
        if resolved is None:
            raise InvalidParameterError("custom_pipeline", None, "audit needs a model_id, a custom_pipeline or both")
        script = Path(resolved) if Path(resolved).is_file() else Path(resolved) / "pipeline.py"
        files = [_code_file("custom_pipeline", script.name, script)]
        source = None
    else:
        source = loading.resolve_model_source(model_id, revision)
        if Path(source).is_dir() and revision:
            print(f"note: revision={revision!r} is ignored for the local folder {source} (diffusers ignores it too)")
            revision = None
        check_revision(source, revision, i_accept_unpinned_remote_code)
        files = code_files(source, resolved, revision)
    _audit(files, pinned)
    return Audit(source, revision or None, resolved, files)


def load_remote_code_pipeline(model_id: str, *, revision: str | None = None, custom_pipeline=None,
                              pinned: dict[str, str] | None = None, i_accept_unpinned_remote_code: bool = False,
                              dtype="auto", device_map="auto", **kwargs):
    """`DiffusionPipeline.from_pretrained(..., trust_remote_code=True)` after `audit`."""
    audited = audit(model_id, custom_pipeline=custom_pipeline, revision=revision, pinned=pinned,
                    i_accept_unpinned_remote_code=i_accept_unpinned_remote_code)
    if audited.custom_pipeline is not None:
        kwargs["custom_pipeline"] = audited.custom_pipeline
    return loading.load_pipeline(audited.source, dtype=dtype, device_map=device_map, revision=audited.revision,
                                 trust_remote_code=True, **kwargs)


def load_remote_code_component(model_id: str, subfolder: str, *, revision: str | None = None,
                               pinned: dict[str, str] | None = None, i_accept_unpinned_remote_code: bool = False,
                               dtype="auto"):
    """`AutoModel.from_pretrained(<component folder>, trust_remote_code=True)` after the checks and the audit.

    diffusers 0.42.1's AutoModel reads a repository's model_index.json before the component's config, so
    `subfolder="unet"` never sees the component's `auto_map`; loading the component folder itself does.
    A Hub repository's component folder is downloaded alone, at the pinned revision.
    """
    _refuse_if_disabled()
    source = loading.resolve_model_source(model_id, revision, subfolder)
    if Path(source).is_dir():
        revision = None
    check_revision(source, revision, i_accept_unpinned_remote_code)
    _audit(component_code_files(source, subfolder, revision), pinned)
    if Path(source).is_dir():
        folder = Path(source) / subfolder
    else:
        from huggingface_hub import snapshot_download

        folder = Path(snapshot_download(source, allow_patterns=[f"{subfolder}/*"], revision=revision,
                                        local_files_only=loading.hub_offline())) / subfolder
    return loading.load_component(folder, dtype=dtype, trust_remote_code=True)


def from_pipe(pipe, custom_pipeline, *, pinned: dict[str, str] | None = None, dtype=None):
    """`DiffusionPipeline.from_pipe(pipe, custom_pipeline=...)` on the same weights, after `audit`."""
    from diffusers import DiffusionPipeline

    audited = audit(custom_pipeline=custom_pipeline, pinned=pinned)
    return loading.from_pipe(DiffusionPipeline, pipe, dtype=dtype, custom_pipeline=audited.custom_pipeline,
                             trust_remote_code=True)


def load_community_pipeline(model_id: str, name: str, *, custom_revision: str | None = None,
                            pinned: dict[str, str] | None = None, dtype="auto", device_map="auto", **kwargs):
    """A pipeline from diffusers' community mirror by name (e.g. "lpw_stable_diffusion"), audited first.

    The kit downloads the file itself (the same file diffusers would fetch), shows its hash, then passes
    the local copy as `custom_pipeline`, so what runs is exactly what was shown.
    """
    import diffusers
    from huggingface_hub import hf_hub_download

    _refuse_if_disabled()
    rules.community_name("name", name)
    if custom_revision is not None:
        rules.custom_revision("custom_revision", custom_revision)
    if loading.hub_offline() or not sources.reachable("pypi.org"):
        raise ModelNotCachedOfflineError(
            f"Community pipeline {name!r} needs the Hugging Face Hub and PyPI, and this machine is offline. "
            "(diffusers would ask PyPI for its release list with no timeout and hang.) Run this online, or "
            "download the file once and pass it as a local custom_pipeline."
        )
    version = custom_revision or "v" + ".".join(diffusers.__version__.split(".")[:3])
    folder = version if version == "main" or version.startswith("v") else f"v{version}"
    script = Path(hf_hub_download(MIRROR, f"{folder}/{name}.py", repo_type="dataset"))
    with tempfile.TemporaryDirectory(prefix="kit-community-") as private:  # 0700, removed after the load
        local = Path(private) / f"{name}.py"
        shutil.copyfile(script, local)
        return load_remote_code_pipeline(model_id, custom_pipeline=local, pinned=pinned, dtype=dtype,
                                         device_map=device_map, **kwargs)


def add_remote_code(repo_dir: str | os.PathLike, code_dir: str | os.PathLike, pipeline: tuple[str, str] | None = None,
                    components: dict[str, tuple[str, str]] | None = None) -> list[Path]:
    """Turn a saved pipeline folder into a community-components repository.

    `save_pretrained` writes weights and configs but drops the .py files. This copies them back from
    `code_dir` (same layout: `<module>.py` at the root, `<component>/<module>.py`), points model_index.json
    at them (`_class_name` = [module, Class]; `component` = [module, Class]) and adds an `auto_map` so the
    component also loads alone with AutoModel. Returns the files written.
    """
    repo, code = Path(repo_dir), Path(code_dir)
    index_path = repo / "model_index.json"
    index = json.loads(index_path.read_text())
    written = []
    if pipeline:
        module, class_name = pipeline
        written.append(Path(shutil.copyfile(code / f"{module}.py", repo / f"{module}.py")))
        index["_class_name"] = [module, class_name]
    for name, (module, class_name) in (components or {}).items():
        if name not in index:
            raise InvalidParameterError("components", name, f"the pipeline has no component {name!r}")
        written.append(Path(shutil.copyfile(code / name / f"{module}.py", repo / name / f"{module}.py")))
        index[name] = [module, class_name]
        config_path = repo / name / "config.json"
        config = json.loads(config_path.read_text())
        config["_class_name"] = class_name
        config["auto_map"] = {"AutoModel": f"{module}.{class_name}"}
        config_path.write_text(json.dumps(config, indent=2, sort_keys=True) + "\n")
    index_path.write_text(json.dumps(index, indent=2, sort_keys=True) + "\n")
    return written


def audit_imports(paths, root: str | os.PathLike | None = None, pinned: dict[str, str] | None = None) -> list[CodeFile]:
    """Show and hash local .py files before you import them yourself (`from my_unet import MyUNet`).

    Importing a file runs it, so it gets the same audit as the files diffusers executes for
    `trust_remote_code=True`: each file's sha256 is printed, and checked against `pinned` when given.
    """
    _refuse_if_disabled()
    files = []
    for path in map(Path, paths):
        if not path.is_file() or path.suffix != ".py":
            raise LocalPathNotFoundError(f"Code file {str(path)!r} not found or not a .py file; nothing was imported.")
        name = path.resolve().relative_to(Path(root).resolve()).as_posix() if root else path.name
        files.append(_code_file("direct import", name, path.resolve()))
    _audit(files, pinned, runner="importing runs")
    return files
