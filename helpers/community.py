"""Community pipelines and remote code: `audit` shows every file diffusers will run, with its sha256, refusing code
nobody was shown; `only_audited_code` imports exactly those files (the only module passing trust_remote_code=True)."""

from __future__ import annotations

import ast
import importlib
import json
import os
import posixpath
import re
import shutil
import sys
import tempfile
from contextlib import contextmanager, suppress
from dataclasses import dataclass
from pathlib import Path, PurePosixPath

from . import KIT_ROOT, errors, hub, loading, outputs, rules
from .errors import RemoteCodeChanged, RemoteCodeRefused
from .rules import truthy

COMMUNITY = KIT_ROOT / "community"
KNOWN_LIBRARIES = {"diffusers", "transformers", None}
MIRROR = "diffusers/community-pipelines-mirror"
MANIFEST_FIX = 'A manifest is a JSON object {"file in the audited folder": "its sha256"}, as audit(...).manifest gives.'
DYNAMIC_BUILTINS = {"exec", "eval", "compile", "__import__"}  # calls that run code no import shows (as x or builtins.x)
DYNAMIC_LOADERS = {"run_path", "run_module", "import_module", "spec_from_file_location", "exec_module",
                   "SourceFileLoader", "load_source", "load_module"}
FILE_READERS = {"open", "read_text", "read_bytes"}  # dynamic when they read a .py file


@dataclass(frozen=True)
class CodeFile:
    role: str  # what diffusers uses it for
    name: str  # path inside the repository or folder (the manifest key)
    path: Path  # the file on disk that will run
    sha256: str
    size: int
    beside: str | None = None  # loaded at run time: its path from the folder of the file that loads it


def _refuse_if_disabled() -> None:
    from diffusers.utils import constants
    if truthy(os.environ.get("DIFFUSERS_DISABLE_REMOTE_CODE")) or constants.DIFFUSERS_DISABLE_REMOTE_CODE:
        raise RemoteCodeRefused("DIFFUSERS_DISABLE_REMOTE_CODE is set: diffusers refuses every custom pipeline and "
                                "component, and so does the kit. Unset it and restart the kernel to load code.")


def resolve_custom_pipeline(path: str | os.PathLike) -> Path:
    """An existing `.py` file or folder with `pipeline.py`, never a Hub lookup (a Hub repo needs `custom_revision`)."""
    try:
        return rules.custom_pipeline_path("custom_pipeline", path)
    except errors.LocalPathNotFoundError as error:
        if not hub_repo_id(path):
            raise
        raise errors.LocalPathNotFoundError(error.rule, name=error.name, value=error.value, fix=f"{error.fix} If you "
                                            f"meant the Hub repository {str(path)!r} (holding pipeline.py), pass "
                                            "custom_revision='<40-hex commit>' to pin the code you read.") from None


def hub_repo_id(custom_pipeline) -> str | None:
    """`custom_pipeline` as a Hub repo id ("user/repo") when it is one and no local path by that name exists."""
    from huggingface_hub.utils import HFValidationError, validate_repo_id
    if isinstance(custom_pipeline, str) and custom_pipeline.count("/") == 1 and hub.is_hub_id(custom_pipeline) and \
            not any(c.exists() for c in rules.find_local(custom_pipeline)):
        with suppress(HFValidationError):
            return validate_repo_id(custom_pipeline) or custom_pipeline
    return None


def dynamic_loads(tree: ast.Module) -> list[tuple[int, str, list[str]]]:
    """(line, call, its string literals) for each call that runs code no import statement shows."""
    found = []
    for node in (n for n in ast.walk(tree) if isinstance(n, ast.Call)):
        func = node.func
        name = func.id if isinstance(func, ast.Name) else getattr(func, "attr", None)
        builtin = isinstance(func, ast.Name) or getattr(getattr(func, "value", None), "id", None) == "builtins"
        literals = [n.value for n in ast.walk(node) if isinstance(n, ast.Constant) and isinstance(n.value, str)]
        if (name in DYNAMIC_BUILTINS and builtin) or name in DYNAMIC_LOADERS or (
                name in FILE_READERS and any(text.endswith(".py") for text in literals)):
            found.append((node.lineno, ast.unparse(node), literals))
    return sorted(found)


def _with_relative_imports(role: str, name: str, source, revision: str | None = None, local: bool = True,
                           allowed: dict | None = None) -> list[CodeFile]:
    """`name` and all it imports or loads at run time, from `source` (folder or Hub id); refuses what can't be shown."""
    from diffusers.utils.dynamic_modules_utils import get_relative_imports
    from huggingface_hub.errors import EntryNotFoundError
    fetch = lambda file: hub.fetch_file(str(source), file, revision)
    files, queue = [], [(name, None, None)]
    while queue:
        current, importer, line = queue.pop(0)
        if current in (f.name for f in files):  # each file once
            continue
        path = Path(fetch(current))
        if not path.is_file():
            raise errors.LocalPathNotFoundError(
                f"{importer} imports {current!r}, which does not exist ({path}); nothing was run. Add the file, or "
                "remove the import." if importer else f"code file {current!r} not found ({path}); nothing was run.")
        if local and line is None and importer not in (None, name):
            raise RemoteCodeRefused(f"{importer} imports {current!r} relatively, but from a local folder diffusers "
                                    f"copies only {name}'s direct imports: Python would import another pipeline's "
                                    f"leftover, or fail. Nothing was run. Fix: import it in {name}, or merge it into "
                                    f"{importer}.")
        try:
            tree = ast.parse(path.read_bytes(), filename=str(path))
        except (SyntaxError, ValueError) as error:
            raise RemoteCodeRefused(f"{current} is not valid Python ({error}); nothing was run. Fix it.") from None
        how = f"{role}: imported by {importer}" if line is None else f"{role}: loaded by {importer} line {line}"
        beside = posixpath.relpath(current, posixpath.dirname(name) or ".") if line else None
        files.append(CodeFile(how if importer else role, current, path, outputs.sha256_file(path),
                              path.stat().st_size, beside))
        imported = set(get_relative_imports(str(path)))  # as diffusers' regex finds them: a form it misses is refused
        for node in ast.walk(tree):
            if isinstance(node, ast.ImportFrom) and node.level and (node.level > 1 or node.module not in imported):
                written = f"from {'.' * node.level}{node.module or ''} import {', '.join(a.name for a in node.names)}"
                raise RemoteCodeRefused(f"{current} line {node.lineno}: `{written}` is a relative import diffusers "
                                        "does not copy: Python would import another pipeline's leftover from "
                                        "HF_MODULES_CACHE, or fail. Nothing was run. Fix: `from .module import name`.")
        queue += [(posixpath.join(posixpath.dirname(current), module.replace(".", "/") + ".py"), current, None)
                  for module in sorted(imported)]
        for line, call, literals in dynamic_loads(tree):
            opted = [entry for entry in (allowed or {}) if entry in (current, posixpath.basename(current))]
            if not opted:
                raise RemoteCodeRefused(f"{current} line {line}: `{call[:100]}` loads code at run time that no import "
                                        "shows, unlisted and unhashed. Nothing was run. Fix: read it and the files it "
                                        f"loads, then pass allow_dynamic_code=[{posixpath.basename(current)!r}].")
            allowed.update(dict.fromkeys(opted, True))
            here, names = posixpath.dirname(current), set()  # it loads the files its literals name beside it
            for text in literals:
                if text.endswith(".py") and (text.startswith(("/", "~")) or ".." in PurePosixPath(text).parts):
                    raise RemoteCodeRefused(f"{current} loads {text!r}, outside its own folder (the audit shows its "
                                            "files only). Nothing was run. Fix: keep the code it loads beside it.")
                for candidate in {posixpath.normpath(posixpath.join(here, t))
                                  for t in (text, text.replace(".", "/") + ".py")}:
                    with suppress(EntryNotFoundError):  # not in the Hub repository
                        if candidate.endswith(".py") and candidate != current and Path(fetch(candidate)).is_file():
                            names.add(candidate)
            if not names and not Path(source).is_dir():
                raise RemoteCodeRefused(f"{current} loads code at run time by names not written in it, and a Hub "
                                        "repository's folder cannot be listed here. Nothing was run. Fix: name the "
                                        "files as string literals, or download the folder and audit that.")
            listing = sorted(p.relative_to(source).as_posix() for p in (Path(source) / here).rglob("*.py")
                             if "__pycache__" not in p.parts) if not names else []  # else its whole folder
            queue += [(loaded, current, line) for loaded in sorted(names) or [n for n in listing if n != current]]
    return files


def _custom_code(index: dict) -> list[tuple[str, str]]:
    """(role, module file) for the repository's own pipeline class and components its model_index.json names."""
    import diffusers.pipelines
    code = [(f"pipeline class {index['_class_name'][1]}", f"{index['_class_name'][0]}.py")] if isinstance(
        index.get("_class_name"), list) else []
    return code + [(f"{name} component {spec[1]}", f"{name}/{spec[0]}.py") for name, spec in index.items()
                   if not name.startswith("_") and isinstance(spec, list) and spec[0] not in KNOWN_LIBRARIES
                   and not hasattr(diffusers.pipelines, spec[0])]  # not ["stable_diffusion", "...SafetyChecker"]


def code_files(source: str, revision: str | None = None, allowed: dict | None = None) -> list[CodeFile]:
    """Every Python file diffusers would execute to load `source` (a folder or Hub id): its model_index.json's code."""
    return [file for role, module_file in _custom_code(hub.read_model_index(source, revision))
            for file in _with_relative_imports(role, module_file, source, revision, allowed=allowed)]


def component_code_files(source: str, subfolder: str, revision: str | None = None) -> list[CodeFile]:
    """The files an `AutoModel.from_pretrained(..., subfolder=...)` would execute (its config's auto_map)."""
    config = json.loads(hub.fetch_file(source, f"{subfolder}/config.json", revision).read_text())
    return [file for reference in sorted(set(config.get("auto_map", {}).values()))
            for file in _with_relative_imports(f"auto_map {reference}", f"{subfolder}/{reference.rsplit('.', 1)[0]}.py",
                                               source, revision)]


def manifest(files: list[CodeFile]) -> dict[str, str]:
    """{path in repository: sha256}: pin this after reading the code once."""
    return {file.name: file.sha256 for file in files}


def report(files: list[CodeFile], runner: str = "diffusers will execute") -> str:
    return "\n".join([f"{runner} {len(files)} code file(s):"] + [
        f"  {f.name:40s} sha256 {f.sha256}  {f.size:>7,d} bytes  ({f.role})" for f in files])


def read_manifest(pinned, roots: list[Path] = ()) -> dict[str, str]:
    """`pinned` (a dict or a JSON file) as {file: sha256}, each entry checked: a file inside `roots`, no symlink."""
    text, value, pairs = None, pinned, tuple(pinned.items()) if isinstance(pinned, dict) else None
    if pairs is None:
        path, value = Path(pinned), str(pinned)
        if path.is_symlink() or not path.is_file():
            rules.fail("pinned", value, "is a symbolic link" if path.is_symlink() else "needs an existing JSON "
                       "manifest file", "Pass the manifest file itself.")
        text = path.read_text(errors="replace")
        try:
            pairs = json.loads(text, object_pairs_hook=tuple)  # an object as its (key, value) pairs, duplicates kept
        except json.JSONDecodeError as error:
            rules.fail("pinned", value, f"line {error.lineno}: not valid JSON ({error.msg})", MANIFEST_FIX)
        if not isinstance(pairs, tuple):
            rules.fail("pinned", value, f"holds a {type(pairs).__name__}, not a JSON object", MANIFEST_FIX)

    def refuse(key, problem):
        where = next((f"line {n}: " for n, line in enumerate((text or "").splitlines(), 1) if json.dumps(key) in line),
                     "")
        rules.fail("pinned", value, f"{where}entry {key!r} {problem}", MANIFEST_FIX)
    checked = {}
    for key, sha256 in pairs:
        parts = PurePosixPath(key).parts if isinstance(key, str) else ()
        if not parts or key.startswith(("/", "~")) or "\\" in key or ".." in parts:
            refuse(key, "is not a file name inside the audited folder")
        if key in checked:
            refuse(key, "appears twice")
        if not isinstance(sha256, str) or not re.fullmatch(r"[0-9a-f]{64}", sha256):
            refuse(key, f"has {sha256!r}, not a sha256 (64 lowercase hex digits)")
        for root in (r for r in roots if any(r.joinpath(*parts[:n]).is_symlink() for n in range(1, len(parts) + 1))):
            refuse(key, f"is a symbolic link in {root}: the audit reads only the folder's own files")
        checked[key] = sha256
    return checked


def check_revision(model_id: str, revision: str | None, i_accept_unpinned_remote_code: bool = False,
                   name: str = "revision") -> None:
    """Remote code from the Hub runs only at a full commit hash: a branch or tag can be moved to new code."""
    try:
        if not (Path(model_id).is_dir() or i_accept_unpinned_remote_code):
            rules.commit(name, revision, allow_empty=False)
    except errors.InvalidParameterError as error:
        raise RemoteCodeRefused(
            f"{error.rule}, so the code of {model_id!r} could change between the audit and a later load", name=name,
            value=revision, fix=f"{error.fix} To accept moving code anyway: i_accept_unpinned_remote_code=True.",
        ) from None


def _audit(files: list[CodeFile], pinned, roots=(), runner: str = "diffusers will execute") -> None:
    from diffusers.utils.constants import HF_MODULES_CACHE
    from huggingface_hub import constants
    if files and runner.startswith("diffusers") and (reason := rules.unwritable(Path(HF_MODULES_CACHE))):
        name = "HF_MODULES_CACHE" if os.environ.get("HF_MODULES_CACHE") else "HF_HOME"
        raise errors.FolderNotWritableError(
            f"cannot be written ({reason}): diffusers copies custom code into {HF_MODULES_CACHE} before running it",
            name=name, value=os.environ.get(name, constants.HF_HOME), fix=f"Set {name} to a folder you can write "
            "to, then restart the kernel (notebook 01's hf_home sets HF_HOME).")
    print(report(files, runner))
    if pinned is not None:  # any file added, removed or changed against `pinned` is refused
        pinned, found = read_manifest(pinned, roots), manifest(files)
        if changes := {name: (pinned.get(name), found.get(name))
                       for name in pinned.keys() | found.keys() if pinned.get(name) != found.get(name)}:
            raise RemoteCodeChanged(changes)
        print("  all files match the pinned manifest")


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
          custom_revision: str | None = None, pinned=None, allow_dynamic_code=(),
          i_accept_unpinned_remote_code: bool = False) -> Audit:
    """Show (and check against `pinned`) every code file diffusers would run; pass the result to only_audited_code."""
    _refuse_if_disabled()
    if not isinstance(allow_dynamic_code, list | tuple) or not all(isinstance(n, str) and n
                                                                   for n in allow_dynamic_code):
        rules.fail("allow_dynamic_code", allow_dynamic_code, "needs a list of file names, like ['pipeline.py']")
    allowed = dict.fromkeys(allow_dynamic_code, False)  # each entry must name a file that loads code at run time
    repo_id = hub_repo_id(custom_pipeline) if custom_revision is not None or i_accept_unpinned_remote_code else None
    files, roots, source, resolved = [], [], None, None
    custom_revision = custom_revision if repo_id else None  # diffusers ignores it for a local path
    if repo_id is not None:
        check_revision(repo_id, custom_revision, i_accept_unpinned_remote_code, name="custom_revision")
        resolved, files = repo_id, _with_relative_imports(  # what diffusers downloads, at that commit
            f"custom_pipeline {repo_id}", "pipeline.py", repo_id, custom_revision, False, allowed)
    elif custom_pipeline is not None:
        resolved = resolve_custom_pipeline(custom_pipeline)  # a .py file, or a folder's pipeline.py
        root, script = (resolved.parent, resolved.name) if resolved.is_file() else (resolved, "pipeline.py")
        files, resolved = _with_relative_imports("custom_pipeline", script, root, allowed=allowed), str(resolved)
        roots.append(root)
    elif model_id is None:
        rules.fail("custom_pipeline", None, "audit needs a model_id, a custom_pipeline or both")
    if model_id is not None:
        source = hub.resolve_model_source(model_id, revision)
        if Path(source).is_dir():
            if revision:
                print(f"note: revision={revision!r} is ignored for the local folder {source} (diffusers too)")
            revision = None
            roots.append(Path(source))
        elif revision is None and not i_accept_unpinned_remote_code and not hub.hub_offline():
            from huggingface_hub import model_info
            with hub.hub_access(source):
                commit = model_info(source).sha
            if not code_files(source, commit):  # a Hub model that holds no code is pinned at its current commit
                print(f"note: {source} holds no code; loading it at its current commit {commit}")
                revision = commit
        check_revision(source, revision, i_accept_unpinned_remote_code)
        files += code_files(source, revision, allowed)
    if not all(allowed.values()):
        rules.fail("allow_dynamic_code", [n for n, used in allowed.items() if not used], "names no audited file "
                   f"that loads code at run time (audited: {', '.join(f.name for f in files) or 'none'})", "Remove it.")
    _audit(files, pinned, roots)
    return Audit(source, revision or None, resolved, files, custom_revision)


@contextmanager
def only_audited_code(audited: Audit):
    """Around the diffusers call after `audit`: code is copied to a private modules folder, hashed again on import."""
    from diffusers.utils import dynamic_modules_utils as dynamic
    _refuse_if_disabled()
    shared, original = dynamic.HF_MODULES_CACHE, dynamic.get_class_in_module
    Path(shared).mkdir(parents=True, exist_ok=True)
    private = tempfile.mkdtemp(prefix="kit-load-", dir=shared)  # 0700

    def checked_import(class_name, module_path, force_reload=False):  # each copy must be an audited file
        module_file, files = Path(private) / module_path, audited.files
        for file in (f for f in files if f.beside):  # loaded at run time: placed beside it, from the audited paths
            (module_file.parent / file.beside).parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(file.path, module_file.parent / file.beside)
        shown = {(PurePosixPath(f.name).name, f.sha256) for f in files}
        copies = [module_file, *map(Path, dynamic.get_relative_import_files(str(module_file))),
                  *(module_file.parent / f.beside for f in files if f.beside)]
        if changes := {copy.name: (next((sha for name, sha in shown if name == copy.name), None), found)
                       for copy in copies if (copy.name, found := outputs.sha256_file(copy)) not in shown}:
            raise RemoteCodeChanged(changes, against="the code the audit showed (it changed after the audit)")
        return original(class_name, module_path, force_reload)
    for name in [n for n in sys.modules if n.split(".")[0] == "diffusers_modules"]:
        del sys.modules[name]  # so `diffusers_modules` resolves to this load's folder (loaded classes keep theirs)
    importlib.invalidate_caches()
    sys.path.insert(0, private)
    dynamic.HF_MODULES_CACHE, dynamic.get_class_in_module = private, checked_import
    try:
        yield Path(private)
    finally:
        dynamic.HF_MODULES_CACHE, dynamic.get_class_in_module = shared, original
        sys.path.remove(private)
        shutil.rmtree(private, ignore_errors=True)


def load_remote_code_pipeline(model_id: str, *, revision: str | None = None, custom_pipeline=None,
                              custom_revision: str | None = None, pinned=None, allow_dynamic_code=(), dtype="auto",
                              i_accept_unpinned_remote_code: bool = False, device_map="auto", **kwargs):
    """`DiffusionPipeline.from_pretrained(..., trust_remote_code=True)` after `audit`, inside `only_audited_code`."""
    audited = audit(model_id, custom_pipeline=custom_pipeline, revision=revision, custom_revision=custom_revision,
                    pinned=pinned, allow_dynamic_code=allow_dynamic_code,
                    i_accept_unpinned_remote_code=i_accept_unpinned_remote_code)
    code = {"custom_pipeline": audited.custom_pipeline, "custom_revision": audited.custom_revision}
    with only_audited_code(audited):
        return loading.load_pipeline(audited.source, dtype=dtype, device_map=device_map, revision=audited.revision,
                                     trust_remote_code=True, **{k: v for k, v in code.items() if v}, **kwargs)


def load_remote_code_component(model_id: str, subfolder: str, *, revision: str | None = None, pinned=None,
                               i_accept_unpinned_remote_code: bool = False, dtype="auto"):
    """`AutoModel.from_pretrained(<component folder>, trust_remote_code=True)` after the audit (not `subfolder=`)."""
    _refuse_if_disabled()
    source = hub.resolve_model_source(model_id, revision, subfolder)
    revision = None if (local := Path(source).is_dir()) else revision
    check_revision(source, revision, i_accept_unpinned_remote_code)
    _audit(files := component_code_files(source, subfolder, revision), pinned, [Path(source)] if local else [])
    folder = Path(source) / subfolder
    if not local:
        from huggingface_hub import snapshot_download
        folder = Path(snapshot_download(source, allow_patterns=[f"{subfolder}/*"], revision=revision,
                                        local_files_only=hub.hub_offline())) / subfolder
    with only_audited_code(Audit(source, revision, None, files)):
        return loading.load_component(folder, dtype=dtype, trust_remote_code=True)


def from_pipe(pipe, custom_pipeline, *, custom_revision: str | None = None, pinned=None, dtype=None,
              allow_dynamic_code=(), i_accept_unpinned_remote_code: bool = False):
    """`DiffusionPipeline.from_pipe(pipe, custom_pipeline=...)` on the same weights, after `audit`."""
    from diffusers import DiffusionPipeline
    audited = audit(custom_pipeline=custom_pipeline, custom_revision=custom_revision, pinned=pinned,
                    allow_dynamic_code=allow_dynamic_code, i_accept_unpinned_remote_code=i_accept_unpinned_remote_code)
    with only_audited_code(audited):
        return loading.from_pipe(DiffusionPipeline, pipe, dtype=dtype, custom_pipeline=audited.custom_pipeline,
                                 trust_remote_code=True, **{"custom_revision": audited.custom_revision} if
                                 audited.custom_revision else {})


def download_community_pipeline(name: str, custom_revision: str | None = None,
                                mirror_revision: str | None = None) -> Path:
    """`name` from the community mirror (pinned by `mirror_revision`), not by diffusers' path that asks PyPI first."""
    import diffusers
    from huggingface_hub import hf_hub_download
    from huggingface_hub.errors import EntryNotFoundError, LocalEntryNotFoundError
    rules.community_name("name", name)
    if custom_revision is not None:
        rules.custom_revision("custom_revision", custom_revision)
    release = custom_revision or ".".join(diffusers.__version__.split(".")[:3])  # the installed one by default
    path, offline = f"{'main' if release == 'main' else 'v' + release}/{name}.py", hub.hub_offline()
    try:
        with hub.hub_access(MIRROR, "dataset"):
            return Path(hf_hub_download(MIRROR, path, repo_type="dataset", revision=mirror_revision,
                                        local_files_only=offline))
    except LocalEntryNotFoundError:
        if not offline:
            raise
        raise errors.ModelNotCachedOfflineError(f"Community pipeline {name!r} ({MIRROR}/{path}) is not cached and the "
                                                f"Hub cannot be used: {hub.offline_reason()} (diffusers' by-name path "
                                                "would also ask PyPI with no timeout and hang.) Run this online once, "
                                                "or pass a local copy of the file as custom_pipeline.") from None
    except EntryNotFoundError:
        rules.fail("custom_revision", custom_revision, f"the mirror {MIRROR} has no {path}",
                   "Pick a diffusers release that has this pipeline, or 'main'.")


def load_community_pipeline(model_id: str, name: str, *, custom_revision: str | None = None,
                            mirror_revision: str | None = None, pinned=None, dtype="auto", device_map="auto", **kwargs):
    """A pipeline from diffusers' community mirror by name ("lpw_stable_diffusion"), audited, from a private copy."""
    _refuse_if_disabled()
    script = download_community_pipeline(name, custom_revision, mirror_revision)
    with tempfile.TemporaryDirectory(prefix="kit-community-") as private:  # 0700, removed after the load
        shutil.copyfile(script, Path(private) / f"{name}.py")
        return load_remote_code_pipeline(model_id, custom_pipeline=Path(private) / f"{name}.py", pinned=pinned,
                                         dtype=dtype, device_map=device_map, **kwargs)


def add_remote_code(repo_dir: str | os.PathLike, code_dir: str | os.PathLike, pipeline: tuple[str, str] | None = None,
                    components: dict[str, tuple[str, str]] | None = None) -> list[Path]:
    """Copy back the .py files `save_pretrained` drops (from `code_dir`); point model_index.json, auto_map at them."""
    repo, code, written = Path(repo_dir), Path(code_dir), []
    index = json.loads((repo / "model_index.json").read_text())
    if pipeline:
        written.append(Path(shutil.copyfile(code / f"{pipeline[0]}.py", repo / f"{pipeline[0]}.py")))
        index["_class_name"] = list(pipeline)
    for name, (module, class_name) in (components or {}).items():
        if name not in index:
            rules.fail("components", name, f"the pipeline has no component {name!r}")
        written.append(Path(shutil.copyfile(code / name / f"{module}.py", repo / name / f"{module}.py")))
        index[name] = [module, class_name]
        config = json.loads((repo / name / "config.json").read_text())
        config.update(_class_name=class_name, auto_map={"AutoModel": f"{module}.{class_name}"})
        outputs.write_atomically(repo / name / "config.json", json.dumps(config, indent=2, sort_keys=True) + "\n")
    outputs.write_atomically(repo / "model_index.json", json.dumps(index, indent=2, sort_keys=True) + "\n")
    return written


def audit_imports(paths, root: str | os.PathLike | None = None, pinned=None) -> list[CodeFile]:
    """Show and hash local .py files before you import them yourself: importing runs them, so same audit."""
    _refuse_if_disabled()
    files = []
    for path in map(Path, paths):
        if not path.is_file() or path.suffix != ".py":
            raise errors.LocalPathNotFoundError(f"Code file {str(path)!r}: no such .py file; nothing was imported.")
        base = Path(root).resolve() if root else path.resolve().parent
        files += _with_relative_imports("direct import", path.resolve().relative_to(base).as_posix(), base, local=False)
    _audit(files, pinned, [Path(root)] if root else [], runner="importing runs")
    return files


def check_publishable(folder: str | os.PathLike) -> list[CodeFile]:
    """Before `upload_folder`: every code file model_index.json names is in the folder. Returns them, audited."""
    folder = Path(hub.resolve_model_source(os.fspath(folder)))
    if missing := [module_file for _, module_file in _custom_code(hub.read_model_index(str(folder)))
                   if not (folder / module_file).is_file()]:
        raise errors.LocalPathNotFoundError(
            f"{str(folder)!r} names code that is not in it: {', '.join(missing)}. save_pretrained (and push_to_hub) "
            "write weights and configs only; copy the code back with community.add_remote_code() before uploading.")
    print(report(files := code_files(str(folder))))
    return files
