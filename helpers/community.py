"""Community pipelines and remote code, loaded only after the kit has shown what will run.

diffusers executes Python from three places: a `custom_pipeline` (a local file or folder, a Hub
repository holding `pipeline.py`, or a community pipeline fetched by name), a repository's own pipeline
class (`_class_name` as a list in model_index.json), and custom components (`["module", "Class"]`
entries, or `auto_map` in a component's config). This module lists those files and their sha256
*before* anything runs, compares them with a pinned manifest when you have one, and refuses the unsafe
forms:

* a local path that does not exist (diffusers would treat it as a Hub repo or a community name);
* `trust_remote_code` for a Hub repo whose `revision` is not a full 40-hex commit (a branch can change
  under you), unless `i_accept_unpinned_remote_code=True`; the same for a Hub-repo `custom_pipeline`
  and its `custom_revision` (a Hub model repo holding no code is pinned at its current commit for you);
* a community pipeline by name that is neither reachable nor cached (the kit fetches it from the
  mirror itself: diffusers' own by-name path first asks PyPI with no timeout and can hang);
* a `custom_revision` like "v0.41.0" (diffusers wants "0.41.0" or "main");
* anything at all while DIFFUSERS_DISABLE_REMOTE_CODE is set.

Every load here ends in the real diffusers call with `trust_remote_code=True`; this module is the
only place in the kit that passes it.
"""

from __future__ import annotations

import hashlib
import json
import os
import posixpath
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path

from . import KIT_ROOT, hub, loading, rules
from .errors import InvalidParameterError, KitError, LocalPathNotFoundError, ModelNotCachedOfflineError
from .rules import truthy

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


def check_modules_cache() -> None:
    """diffusers copies each code file into HF_MODULES_CACHE (HF_HOME/modules) before running it; a folder it
    cannot write fails deep inside from_pretrained. Checked before any code is listed or run."""
    from diffusers.utils.constants import HF_MODULES_CACHE
    from huggingface_hub import constants

    from .errors import FolderNotWritableError

    reason = rules.unwritable(Path(HF_MODULES_CACHE))
    if reason:
        name = "HF_MODULES_CACHE" if os.environ.get("HF_MODULES_CACHE") else "HF_HOME"
        raise FolderNotWritableError(
            f"cannot be written ({reason}): diffusers copies custom code into {HF_MODULES_CACHE} before running it",
            name=name, value=os.environ.get(name, constants.HF_HOME),
            fix=f"Set {name} to a folder you can write to, then restart the kernel (notebook 01's hf_home sets "
                "HF_HOME).",
        )


def resolve_custom_pipeline(path: str | os.PathLike) -> Path:
    """An existing `.py` file or folder with `pipeline.py` (the working folder first, then the kit's root).
    Never a Hub lookup: the rule is `rules.custom_pipeline_path`; a Hub repo id needs `custom_revision`."""
    try:
        return rules.custom_pipeline_path("custom_pipeline", path)
    except LocalPathNotFoundError as error:
        if not hub_repo_id(path):
            raise
        raise LocalPathNotFoundError(
            error.rule, name=error.name, value=error.value,
            fix=f"{error.fix} If you meant the Hub repository {str(path)!r} (holding pipeline.py), pass "
                "custom_revision='<40-hex commit>' to pin the code you read.",
        ) from None


def hub_repo_id(custom_pipeline) -> str | None:
    """`custom_pipeline` as a Hub repo id ("user/repo") when it is one and no local path by that name exists."""
    if not isinstance(custom_pipeline, str) or custom_pipeline.count("/") != 1:
        return None
    if any(c.exists() for c in rules.find_local(custom_pipeline)) or hub._looks_like_local_path(custom_pipeline):
        return None
    from huggingface_hub.utils import HFValidationError, validate_repo_id

    try:
        validate_repo_id(custom_pipeline)
    except HFValidationError:
        return None
    return custom_pipeline


def _sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _code_file(role: str, name: str, path: Path) -> CodeFile:
    return CodeFile(role, name, path, _sha256(path), path.stat().st_size)


def _fetch(source: str, name: str, revision: str | None) -> Path:
    """The repository file `name`: from the folder, or downloaded (exactly what diffusers would download)."""
    if Path(source).is_dir():
        return Path(source) / name
    from huggingface_hub import hf_hub_download

    with hub.hub_access(source):
        return Path(hf_hub_download(source, name, revision=revision, local_files_only=loading.hub_offline()))


def _with_relative_imports(role: str, name: str, fetch, local: bool) -> list[CodeFile]:
    """`name` (a path in its folder or repository) and every file it imports relatively, recursively.

    diffusers copies or downloads those next to the module, and they run when it is imported, so a
    `from .helper import x` in pipeline.py makes helper.py part of what is shown, hashed and pinned.
    `fetch(path)` gives the file on disk (from the folder, or downloaded at the audited revision).
    From a `local` folder diffusers 0.42.1 copies only the files `name` imports directly, into one shared
    folder (HF_MODULES_CACHE/diffusers_modules/local): a deeper import would run whatever another
    pipeline left there, unaudited, so it is refused.
    """
    files, queue, seen = [], [(name, None)], set()
    while queue:
        current, importer = queue.pop(0)
        if current in seen:
            continue
        seen.add(current)
        path = fetch(current)
        if not Path(path).is_file():
            raise LocalPathNotFoundError(
                f"{importer} imports {current!r}, which does not exist ({path}); nothing was run. Add the file, or "
                "remove the import." if importer else f"code file {current!r} not found ({path}); nothing was run."
            )
        if local and importer is not None and importer != name:
            raise RemoteCodeRefused(
                f"{importer} imports {current!r} relatively, but from a local folder diffusers copies only the "
                f"files {name} imports directly: it would import whatever another pipeline left in "
                "HF_MODULES_CACHE/diffusers_modules/local (code nobody audited), or fail. Nothing was run. Fix: "
                f"import {current!r} directly in {name}, or merge it into {importer}."
            )
        files.append(_code_file(role if importer is None else f"{role}: imported by {importer}", current, Path(path)))
        folder = posixpath.dirname(current)
        queue += [(posixpath.join(folder, module.replace(".", "/") + ".py"), current)
                  for module in sorted(_relative_imports(Path(path), current))]
    return files


def _relative_imports(path: Path, name: str) -> list[str]:
    """The modules `path` imports relatively, as diffusers finds them (a regex over its lines); a relative
    import diffusers would not see, and so not copy (`from . import x`, `from .. import x`, `from.x import y`),
    is refused: Python would import whatever another pipeline left in the shared modules folder."""
    import ast

    from diffusers.utils.dynamic_modules_utils import get_relative_imports

    seen = set(get_relative_imports(str(path)))
    try:
        tree = ast.parse(path.read_bytes(), filename=str(path))
    except (SyntaxError, ValueError) as error:
        raise RemoteCodeRefused(f"{name} is not valid Python ({error}); nothing was run. Fix the file.") from None
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and node.level and (node.level > 1 or node.module not in seen):
            written = f"from {'.' * node.level}{node.module or ''} import {', '.join(a.name for a in node.names)}"
            raise RemoteCodeRefused(
                f"{name} line {node.lineno}: `{written}` is a relative import diffusers does not copy with the "
                "file, so Python would import whatever another pipeline left in HF_MODULES_CACHE/diffusers_modules"
                "/local (code nobody audited), or fail. Nothing was run. Fix: write it as `from .module import "
                "name` on its own line, with module.py next to the file.")
    return sorted(seen)


def hub_pipeline_files(repo_id: str, custom_revision: str | None) -> list[CodeFile]:
    """What `custom_pipeline="<repo_id>", custom_revision=...` executes: the repo's pipeline.py and every file
    it imports relatively (diffusers fetches those too), downloaded at that revision."""
    return _with_relative_imports(f"custom_pipeline {repo_id}", "pipeline.py",
                                  lambda name: _fetch(repo_id, name, custom_revision), local=False)


def custom_pipeline_files(resolved: Path) -> list[CodeFile]:
    """A local `.py` file or folder given as custom_pipeline: its script and what that imports relatively."""
    folder, script = (resolved.parent, resolved.name) if resolved.is_file() else (resolved, "pipeline.py")
    return _with_relative_imports("custom_pipeline", script, lambda name: folder / name, local=True)


def code_files(source: str, custom_pipeline: str | os.PathLike | None = None,
               revision: str | None = None) -> list[CodeFile]:
    """Every Python file diffusers would execute to load `source` (a folder or Hub id) this way."""
    files = []
    if custom_pipeline is not None:
        files += custom_pipeline_files(resolve_custom_pipeline(custom_pipeline))
    index = loading.read_model_index(source, revision)
    fetch = lambda name: _fetch(source, name, revision)  # noqa: E731 - one source and revision for every file
    local = True  # a Hub repo's own code is loaded from its snapshot folder too, as local files
    if isinstance(index.get("_class_name"), list):
        module, class_name = index["_class_name"]
        files += _with_relative_imports(f"pipeline class {class_name}", f"{module}.py", fetch, local)
    for name, spec in index.items():
        if name.startswith("_") or not isinstance(spec, list) or spec[0] in KNOWN_LIBRARIES:
            continue
        import diffusers.pipelines

        if hasattr(diffusers.pipelines, spec[0]):
            continue  # a diffusers pipeline module, e.g. ["stable_diffusion", "StableDiffusionSafetyChecker"]
        files += _with_relative_imports(f"{name} component {spec[1]}", f"{name}/{spec[0]}.py", fetch, local)
    return files


def component_code_files(source: str, subfolder: str, revision: str | None = None) -> list[CodeFile]:
    """The files an `AutoModel.from_pretrained(..., subfolder=...)` would execute (its config's auto_map)."""
    config = json.loads(_fetch(source, f"{subfolder}/config.json", revision).read_text())
    files = []
    for reference in sorted(set(config.get("auto_map", {}).values())):
        module = reference.rsplit(".", 1)[0]
        files += _with_relative_imports(f"auto_map {reference}", f"{subfolder}/{module}.py",
                                        lambda name: _fetch(source, name, revision), True)
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


def check_revision(model_id: str, revision: str | None, i_accept_unpinned_remote_code: bool = False,
                   name: str = "revision") -> None:
    """Remote code from the Hub runs only at a full commit hash: a branch or tag can be moved to new code."""
    if Path(model_id).is_dir() or i_accept_unpinned_remote_code:
        return
    try:
        rules.commit(name, revision, allow_empty=False)
    except InvalidParameterError as error:
        raise RemoteCodeRefused(
            f"{error.rule}, so the code of {model_id!r} could change between the audit and a later load",
            name=name, value=revision,
            fix=f"{error.fix} To accept moving code anyway: i_accept_unpinned_remote_code=True.",
        ) from None


def _pin_if_codeless(model_id: str) -> str | None:
    """The current commit of a Hub model repo that holds no code of its own, else None (the caller must pin).

    With trust_remote_code=True, diffusers would also run any code the repo gained later: loading at the
    commit just checked keeps a plain model repo (weights only) from changing under a custom pipeline.
    """
    if loading.hub_offline():
        return None
    from huggingface_hub import model_info

    with hub.hub_access(model_id):
        commit = model_info(model_id).sha
    if code_files(model_id, None, commit):
        return None
    print(f"note: {model_id} holds no code; loading it at its current commit {commit}")
    return commit


def _hub_custom_pipeline(custom_pipeline, custom_revision, i_accept_unpinned_remote_code) -> str | None:
    """The Hub repo id when `custom_pipeline` is one the caller chose knowingly (a custom_revision, or the
    explicit acceptance of moving code); its revision checked like any remote code."""
    repo_id = hub_repo_id(custom_pipeline) if custom_pipeline is not None else None
    if repo_id is None or (custom_revision is None and not i_accept_unpinned_remote_code):
        return None  # a local path (or the clear "not found" error from resolve_custom_pipeline)
    check_revision(repo_id, custom_revision, i_accept_unpinned_remote_code, name="custom_revision")
    return repo_id


def _audit(files: list[CodeFile], pinned: dict[str, str] | None, runner: str = "diffusers will execute") -> None:
    print(report(files, runner))
    if pinned is not None:
        verify(files, pinned)
        print("  all files match the pinned manifest")


def forget_stale_module(script: Path) -> bool:
    """Drop this kernel's `diffusers_modules.local.<file stem>`, so diffusers imports the audited file afresh;
    says so when the module came from a different file (returns True then).

    diffusers imports every local custom pipeline under that name and re-executes a later file of the same
    name into the same module, so the old classes stay beside the new ones ("Multiple classes ... found", or
    the old class). A folder's file is always pipeline.py. Pipelines already loaded keep their class.
    """
    import sys

    from diffusers.utils.constants import HF_MODULES_CACHE

    name = f"diffusers_modules.local.{script.stem}"
    copy = Path(HF_MODULES_CACHE) / "diffusers_modules" / "local" / script.name
    if name not in sys.modules:
        return False
    del sys.modules[name]  # always: another kernel sharing HF_HOME may have rewritten the copy since
    if copy.is_file() and copy.read_bytes() == script.read_bytes():
        return False
    print(f"note: another {script.name} was loaded in this kernel; the kit drops that module so diffusers "
          f"imports {script} afresh (pipelines already loaded keep their class)")
    return True


@dataclass(frozen=True)
class Audit:
    """What an audit checked, and the exact values to pass to the diffusers call that follows it."""

    source: str | None  # the model to pass to from_pretrained: a resolved folder, or the Hub id
    revision: str | None  # the commit to pass (None for local folders, which diffusers ignores it for)
    custom_pipeline: str | None  # the resolved file or folder, or the Hub repo id, to pass as custom_pipeline=
    files: list[CodeFile]
    custom_revision: str | None = None  # the commit to pass as custom_revision= (a Hub repo custom_pipeline)

    @property
    def manifest(self) -> dict[str, str]:
        return manifest(self.files)


def audit(model_id: str | None = None, *, custom_pipeline=None, revision: str | None = None,
          custom_revision: str | None = None, pinned: dict[str, str] | None = None,
          i_accept_unpinned_remote_code: bool = False) -> Audit:
    """Check and show every code file that `from_pretrained`/`from_pipe(..., trust_remote_code=True)` would run.

    Refuses the unsafe forms (see the module docstring), prints each file with its sha256, and compares them
    with `pinned` when given. Pass the returned `source`, `revision` and `custom_pipeline` to the diffusers
    call on the next line, so that what runs is exactly what was shown. `model_id=None` audits a
    `custom_pipeline` alone (for `from_pipe`).

    `custom_pipeline` may be a Hub repo id holding pipeline.py ("user/repo"), pinned by
    `custom_revision="<40-hex commit>"` as `revision` pins a Hub model's own code. A Hub model given
    without `revision` that holds no code is pinned at its current commit (the returned `revision`).
    """
    _refuse_if_disabled()
    hub_pipeline = _hub_custom_pipeline(custom_pipeline, custom_revision, i_accept_unpinned_remote_code)
    if hub_pipeline is not None:
        resolved, pipeline_files = hub_pipeline, hub_pipeline_files(hub_pipeline, custom_revision)
    else:
        resolved = None if custom_pipeline is None else str(resolve_custom_pipeline(custom_pipeline))
        custom_revision = pipeline_files = None
    if model_id is None:
        if resolved is None:
            raise InvalidParameterError("custom_pipeline", None, "audit needs a model_id, a custom_pipeline or both")
        if pipeline_files is not None:
            files = pipeline_files
        else:
            files = custom_pipeline_files(Path(resolved))
        source = None
    else:
        source = loading.resolve_model_source(model_id, revision)
        if Path(source).is_dir() and revision:
            print(f"note: revision={revision!r} is ignored for the local folder {source} (diffusers ignores it too)")
            revision = None
        if revision is None and not Path(source).is_dir() and not i_accept_unpinned_remote_code:
            revision = _pin_if_codeless(source)
        check_revision(source, revision, i_accept_unpinned_remote_code)
        if hub_pipeline is not None:
            files = pipeline_files + code_files(source, None, revision)
        else:
            files = code_files(source, resolved, revision)
    if files:
        check_modules_cache()
    _audit(files, pinned)
    for file in files:  # the custom pipeline and every local module it imports
        if file.role.startswith("custom_pipeline") and hub_pipeline is None:
            forget_stale_module(file.path)
    return Audit(source, revision or None, resolved, files, custom_revision)


def load_remote_code_pipeline(model_id: str, *, revision: str | None = None, custom_pipeline=None,
                              custom_revision: str | None = None, pinned: dict[str, str] | None = None,
                              i_accept_unpinned_remote_code: bool = False, dtype="auto", device_map="auto",
                              **kwargs):
    """`DiffusionPipeline.from_pretrained(..., trust_remote_code=True)` after `audit`."""
    audited = audit(model_id, custom_pipeline=custom_pipeline, revision=revision, custom_revision=custom_revision,
                    pinned=pinned, i_accept_unpinned_remote_code=i_accept_unpinned_remote_code)
    if audited.custom_pipeline is not None:
        kwargs["custom_pipeline"] = audited.custom_pipeline
    if audited.custom_revision is not None:
        kwargs["custom_revision"] = audited.custom_revision
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
    files = component_code_files(source, subfolder, revision)
    if files:
        check_modules_cache()
    _audit(files, pinned)
    if Path(source).is_dir():
        folder = Path(source) / subfolder
    else:
        from huggingface_hub import snapshot_download

        folder = Path(snapshot_download(source, allow_patterns=[f"{subfolder}/*"], revision=revision,
                                        local_files_only=loading.hub_offline())) / subfolder
    return loading.load_component(folder, dtype=dtype, trust_remote_code=True)


def from_pipe(pipe, custom_pipeline, *, custom_revision: str | None = None, pinned: dict[str, str] | None = None,
              dtype=None, i_accept_unpinned_remote_code: bool = False):
    """`DiffusionPipeline.from_pipe(pipe, custom_pipeline=...)` on the same weights, after `audit`.

    A Hub repo id as `custom_pipeline` needs `custom_revision="<40-hex commit>"`, as in `audit`.
    """
    from diffusers import DiffusionPipeline

    audited = audit(custom_pipeline=custom_pipeline, custom_revision=custom_revision, pinned=pinned,
                    i_accept_unpinned_remote_code=i_accept_unpinned_remote_code)
    extra = {"custom_revision": audited.custom_revision} if audited.custom_revision else {}
    return loading.from_pipe(DiffusionPipeline, pipe, dtype=dtype, custom_pipeline=audited.custom_pipeline,
                             trust_remote_code=True, **extra)


def community_file(name: str, custom_revision: str | None = None) -> str:
    """The mirror path diffusers fetches for `custom_pipeline=name, custom_revision=...`: "v0.42.1/name.py"
    for a release (the installed one by default), "main/name.py" for "main"."""
    import diffusers

    rules.community_name("name", name)
    if custom_revision is not None:
        rules.custom_revision("custom_revision", custom_revision)
    if custom_revision == "main":
        return f"main/{name}.py"
    return f"v{custom_revision or '.'.join(diffusers.__version__.split('.')[:3])}/{name}.py"


def download_community_pipeline(name: str, custom_revision: str | None = None,
                                mirror_revision: str | None = None) -> Path:
    """`name` from the dataset diffusers/community-pipelines-mirror, in the Hugging Face cache (fetched through
    HF_ENDPOINT with the Hub client's timeouts; the cached copy when offline).

    diffusers' own by-name path asks PyPI for its release list first (urllib, no timeout; HF_HUB_OFFLINE does
    not stop it) only to turn `custom_revision` into this same file name: the kit needs no PyPI.
    `mirror_revision` pins the mirror itself at a commit (the file under v0.42.1/ can still be edited).
    """
    from huggingface_hub import hf_hub_download
    from huggingface_hub.errors import EntryNotFoundError, LocalEntryNotFoundError

    path = community_file(name, custom_revision)
    offline = loading.hub_offline()
    try:
        with hub.hub_access(MIRROR, "dataset"):
            return Path(hf_hub_download(MIRROR, path, repo_type="dataset", revision=mirror_revision,
                                        local_files_only=offline))
    except LocalEntryNotFoundError:
        if not offline:
            raise
        raise ModelNotCachedOfflineError(
            f"Community pipeline {name!r} ({MIRROR}/{path}) is not cached and the Hub cannot be used: "
            f"{hub.offline_reason()} "
            "(diffusers' own by-name path would also ask PyPI for its release list with no timeout and hang.) "
            "Run this online once, or pass a local copy of the file as custom_pipeline."
        ) from None
    except EntryNotFoundError:
        raise InvalidParameterError(
            "custom_revision", custom_revision, f"the mirror {MIRROR} has no {path}",
            "Pick a diffusers release that has this pipeline, or 'main'.",
        ) from None


def load_community_pipeline(model_id: str, name: str, *, custom_revision: str | None = None,
                            mirror_revision: str | None = None, pinned: dict[str, str] | None = None,
                            dtype="auto", device_map="auto", **kwargs):
    """A pipeline from diffusers' community mirror by name (e.g. "lpw_stable_diffusion"), audited first.

    The kit downloads the file itself (the same file diffusers would fetch for this `custom_revision`),
    shows its hash, then passes a private copy as `custom_pipeline`, so what runs is exactly what was shown.
    """
    _refuse_if_disabled()
    script = download_community_pipeline(name, custom_revision, mirror_revision)
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


def check_publishable(folder: str | os.PathLike) -> list[CodeFile]:
    """Before `upload_folder`: every code file the folder's model_index.json names is there (save_pretrained
    and push_to_hub drop them, and the uploaded repo would then fail to load). Returns them, audited."""
    folder = Path(hub.resolve_model_source(os.fspath(folder)))
    index = loading.read_model_index(str(folder))
    needed = []
    if isinstance(index.get("_class_name"), list):
        needed.append(f"{index['_class_name'][0]}.py")
    needed += [f"{name}/{spec[0]}.py" for name, spec in index.items()
               if not name.startswith("_") and isinstance(spec, list) and spec[0] not in KNOWN_LIBRARIES
               and not _is_diffusers_pipeline_module(spec[0])]
    missing = [name for name in needed if not (folder / name).is_file()]
    if missing:
        raise LocalPathNotFoundError(
            f"{str(folder)!r} names code that is not in it: {', '.join(missing)}. save_pretrained (and push_to_hub) "
            "write weights and configs only; copy the code back with community.add_remote_code() before uploading."
        )
    files = code_files(str(folder))
    print(report(files))
    return files


def _is_diffusers_pipeline_module(module: str) -> bool:
    import diffusers.pipelines

    return hasattr(diffusers.pipelines, module)
