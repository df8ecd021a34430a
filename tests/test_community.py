"""helpers.community (audit, refusals) and the kit's community pipelines (their features, not only that they run)."""

from __future__ import annotations

import ast
import json
import re
import shutil
import time
from pathlib import Path

import nbformat
import numpy as np
import pytest
import torch

from helpers import KIT_ROOT, community, hub, loading, memory, outputs, rules, validate
from helpers.errors import InvalidParameterError, LocalPathNotFoundError, ModelNotCachedOfflineError

ROOT = KIT_ROOT


@pytest.fixture(scope="module")
def weighted(tiny):
    return community.load_remote_code_pipeline(tiny["sd"], custom_pipeline="community/kit_prompt_weighting.py",
                                               device_map=None)


def test_weight_scales_exactly_that_tokens_embedding(weighted):
    plain = weighted.encode_weighted("a fox in the lake")
    boosted = weighted.encode_weighted("a (fox:1.5) in the (lake:0.5)")
    fox, lake = 2, 5  # BOS, a, fox, in, the, lake
    tokens = weighted.tokenizer.convert_ids_to_tokens(weighted.weighted_tokens("a fox in the lake")[0])
    assert (tokens[fox - 1], tokens[lake - 1]) == ("fox</w>", "lake</w>")
    assert torch.allclose(boosted[0, fox], 1.5 * plain[0, fox])
    assert torch.allclose(boosted[0, lake], 0.5 * plain[0, lake])
    untouched = [i for i in range(plain.shape[1]) if i not in (fox, lake)]
    assert torch.equal(boosted[0, untouched], plain[0, untouched])


def test_long_prompt_is_chunked_not_truncated(weighted):
    words = ["red", "fox", "cat", "dog", "house", "tree", "lake"]
    prompt = " ".join(words[i % len(words)] for i in range(100))
    ids, _ = weighted.weighted_tokens(prompt)
    assert len(ids) == 100
    embeds = weighted.encode_weighted(prompt)
    assert embeds.shape[1] == 2 * weighted.tokenizer.model_max_length
    tail_only = weighted.encode_weighted(" ".join(words[i % len(words)] for i in range(75, 100)))
    assert not torch.equal(embeds[0, 77:], weighted.encode_weighted("")[0])
    assert tail_only.shape[1] == 77


def test_weighted_pipeline_generates_and_pads_negative_to_the_same_length(weighted, monkeypatch):
    from diffusers import StableDiffusionPipeline

    seen, parent_call = {}, StableDiffusionPipeline.__call__

    def recording_call(self, *args, **kwargs):  # what the weighting pipeline hands to StableDiffusionPipeline
        seen.update({name: tuple(kwargs[name].shape) for name in ("prompt_embeds", "negative_prompt_embeds")})
        return parent_call(self, *args, **kwargs)

    monkeypatch.setattr(StableDiffusionPipeline, "__call__", recording_call)
    long_negative = " ".join(["blurry"] * 90)  # 90 tokens: two chunks of 75; the 3-token prompt needs one
    image = weighted("a (cat:1.2)", negative_prompt=long_negative, num_inference_steps=2, height=32, width=32,
                     generator=torch.Generator().manual_seed(0)).images[0]
    hidden = weighted.text_encoder.config.hidden_size
    assert seen == {"prompt_embeds": (1, 2 * 77, hidden), "negative_prompt_embeds": (1, 2 * 77, hidden)}
    assert image.size == (32, 32)


def test_previews_share_weights_and_end_with_the_image(weighted):
    previewing = community.from_pipe(weighted, "community/kit_previews")
    assert set(memory.shared_components(weighted, previewing).values()) == {True}
    out = previewing("a cat", num_inference_steps=4, preview_every=2, height=32, width=32,
                     generator=torch.Generator().manual_seed(0))
    steps = [step for step, _ in out.previews]
    assert steps == sorted({*range(2, previewing.num_timesteps + 1, 2), previewing.num_timesteps})
    assert np.array_equal(np.asarray(out.previews[-1][1]), np.asarray(out.images[0]))
    with pytest.raises(ValueError, match="preview_every=0"):
        previewing("a cat", num_inference_steps=2, preview_every=0, height=32, width=32)


def test_two_folders_with_pipeline_py_load_one_after_the_other(weighted, tiny, tmp_path):
    """A folder's code is always pipeline.py: diffusers would run the second into the first one's module
    ("Multiple classes ... found"); the audit drops the stale module, and the first pipeline keeps working."""
    folder = tmp_path / "my_weighting"
    folder.mkdir()
    shutil.copyfile(ROOT / "community" / "kit_prompt_weighting.py", folder / "pipeline.py")
    first = community.load_remote_code_pipeline(tiny["sd"], custom_pipeline=str(folder), device_map=None)
    previewing = community.from_pipe(first, "community/kit_previews")
    again = community.load_remote_code_pipeline(tiny["sd"], custom_pipeline=str(folder), device_map=None)
    assert [type(p).__name__ for p in (first, previewing, again)] == [
        "KitPromptWeightingPipeline", "KitPreviewPipeline", "KitPromptWeightingPipeline"]
    assert first.encode_weighted("a (cat:1.2)").shape[1] == 77


def test_components_repo_runs_its_own_code(tiny):
    pipe = community.load_remote_code_pipeline(tiny["sd-components"], device_map=None)
    assert type(pipe).__name__ == "KitComponentsPipeline"
    assert type(pipe.unet).__name__ == "KitCountingUNet2DConditionModel"
    out = pipe("a cat", num_inference_steps=2, height=32, width=32, guidance_scale=1.0)
    assert out.unet_calls == pipe.num_timesteps
    unet = community.load_remote_code_component(tiny["sd-components"], "unet")
    assert type(unet).__name__ == "KitCountingUNet2DConditionModel"


def test_audit_lists_every_file_diffusers_would_execute(tiny):
    files = community.audit(str(tiny["sd-components"]), custom_pipeline="community/kit_previews").files
    assert [f.name for f in files] == ["pipeline.py", "pipeline_kit_components.py", "unet/kit_counting_unet.py"]
    for file in files:
        assert re.fullmatch(r"[0-9a-f]{64}", file.sha256) and file.size == file.path.stat().st_size
    assert community.code_files(str(tiny["sd"])) == []  # a plain pipeline runs no custom code
    assert "sha256" in community.report(files)


def test_save_pretrained_drops_code_and_add_remote_code_restores_it(tiny, tmp_path):
    pipe = loading.load_pipeline(tiny["sd"], device_map=None)
    pipe.save_pretrained(tmp_path)
    assert list(tmp_path.rglob("*.py")) == []
    community.add_remote_code(tmp_path, community.COMMUNITY / "kit_components",
                              pipeline=("pipeline_kit_components", "KitComponentsPipeline"),
                              components={"unet": ("kit_counting_unet", "KitCountingUNet2DConditionModel")})
    index = json.loads((tmp_path / "model_index.json").read_text())
    assert index["_class_name"] == ["pipeline_kit_components", "KitComponentsPipeline"]
    assert index["unet"] == ["kit_counting_unet", "KitCountingUNet2DConditionModel"]
    assert type(community.load_remote_code_pipeline(tmp_path, device_map=None)).__name__ == "KitComponentsPipeline"
    with pytest.raises(InvalidParameterError, match="no component 'prior'"):
        community.add_remote_code(tmp_path, community.COMMUNITY / "kit_components", components={"prior": ("x", "X")})


def test_tampered_file_is_refused_against_the_pinned_manifest(tiny, tmp_path):
    pinned = community.manifest(community.code_files(str(tiny["sd-components"])))
    copy = tmp_path / "repo"
    shutil.copytree(tiny["sd-components"], copy)
    with open(copy / "unet" / "kit_counting_unet.py", "a") as file:
        file.write("\nimport os  # added later\n")
    with pytest.raises(community.RemoteCodeChanged) as refused:
        community.load_remote_code_pipeline(copy, pinned=pinned, device_map=None)
    assert list(refused.value.changes) == ["unet/kit_counting_unet.py"]
    assert community.load_remote_code_pipeline(tiny["sd-components"], pinned=pinned, device_map=None) is not None


@pytest.mark.parametrize("revision", [None, "main", "v1.0", "a" * 39, "A" * 40, "g" * 40])
def test_hub_remote_code_needs_a_full_commit(revision):
    expected = "revision=.* is not valid: needs a full 40-character commit hash"
    with pytest.raises(community.RemoteCodeRefused, match=expected):
        community.check_revision("org/repo", revision)


def test_opt_out_and_local_folders_skip_the_commit_rule(tiny):
    community.check_revision("org/repo", "main", i_accept_unpinned_remote_code=True)
    community.check_revision(str(tiny["sd-components"]), None)


def cache_repo(hub: Path, source: Path, commit: str) -> None:
    """Lay `source` out as a cached Hub repo at `commit`, as huggingface_hub would."""
    repo = hub / "models--org--components"
    shutil.copytree(source, repo / "snapshots" / commit)
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text(commit)


def test_hub_repo_is_audited_at_its_pinned_commit(tiny, isolated_hub):
    commit = "0123456789abcdef0123456789abcdef01234567"
    cache_repo(isolated_hub / "hub", tiny["sd-components"], commit)
    files = community.code_files("org/components", revision=commit)
    assert [f.name for f in files] == ["pipeline_kit_components.py", "unet/kit_counting_unet.py"]
    assert all(commit in str(f.path) for f in files)
    with pytest.raises(community.RemoteCodeRefused):
        community.load_remote_code_pipeline("org/components", revision="main", device_map=None)


@pytest.mark.parametrize("path", ["my_pipeline", "community/missing.py", "./nowhere", "kit_previews_typo"])
def test_missing_custom_pipeline_is_an_error_not_a_hub_lookup(tiny, path):
    with pytest.raises(LocalPathNotFoundError, match="diffusers would treat a missing path as a Hub repo"):
        community.load_remote_code_pipeline(tiny["sd"], custom_pipeline=path, device_map=None)


NO_PIPELINE = {
    "helpers.py": "def helper():\n    return 1\n",
    "imports_only.py": "from diffusers import StableDiffusionPipeline\n",  # diffusers skips its own classes
    "broken.py": "class Oops(:\n",
}


@pytest.mark.parametrize("file", sorted(NO_PIPELINE))
@pytest.mark.parametrize("form", ["file", "folder"])
def test_custom_pipeline_without_a_pipeline_class_is_refused_before_loading(tiny, tmp_path, monkeypatch, file, form):
    """diffusers would fail deep inside from_pretrained ('NoneType' object has no attribute '__name__')."""
    script = tmp_path / (file if form == "file" else f"{Path(file).stem}/pipeline.py")
    script.parent.mkdir(exist_ok=True)
    script.write_text(NO_PIPELINE[file])
    given = str(script if form == "file" else script.parent)
    monkeypatch.setattr(loading, "load_pipeline", lambda *a, **k: pytest.fail("loaded anyway"))
    with pytest.raises(InvalidParameterError) as refused:
        validate.check({"community_pipeline": given})
    assert refused.value.name == "community_pipeline" and str(script) in refused.value.rule and refused.value.fix
    with pytest.raises(InvalidParameterError, match=re.escape(str(script))):
        community.load_remote_code_pipeline(tiny["sd"], custom_pipeline=given, device_map=None)


@pytest.mark.parametrize("source", [
    "from diffusers import DiffusionPipeline as Base\nclass Mine(Base):\n    pass\n",
    "import diffusers\nclass Mine(diffusers.StableDiffusionPipeline):\n    pass\n",
    "from .base import Shared\nclass Mine(Shared):\n    pass\n",
    "from diffusers import StableDiffusionPipelineSafe\nclass Mine(StableDiffusionPipelineSafe):\n    pass\n",
    "from diffusers import LEditsPPPipelineStableDiffusion as L\nclass Mine(L):\n    pass\n",
])
def test_pipeline_classes_are_recognised_by_their_bases(tmp_path, source):
    script = tmp_path / "mine.py"
    script.write_text(source)
    validate.check({"community_pipeline": str(script)})


def test_relative_paths_resolve_from_the_kit_root_too(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert community.resolve_custom_pipeline("community/kit_previews") == ROOT / "community" / "kit_previews"


def test_name_based_load_refuses_offline_within_a_second(tiny, monkeypatch):
    start = time.perf_counter()
    with pytest.raises(ModelNotCachedOfflineError, match="no timeout"):
        community.load_community_pipeline(tiny["sd"], "lpw_stable_diffusion")
    monkeypatch.delenv("HF_HUB_OFFLINE")
    monkeypatch.setattr(hub, "hub_reachable", lambda: False)
    with pytest.raises(ModelNotCachedOfflineError):
        community.load_community_pipeline(tiny["sd"], "lpw_stable_diffusion")
    assert time.perf_counter() - start < 1.0


@pytest.mark.parametrize("bad, hint", [("v0.41.0", "Use '0.41.0'"), ("0.41", "or 'main'"), ("latest", "or 'main'")])
def test_custom_revision_format(bad, hint):
    with pytest.raises(InvalidParameterError, match=re.escape(hint)):
        rules.custom_revision("custom_revision", bad)
    rules.custom_revision("custom_revision", "0.41.0")
    rules.custom_revision("custom_revision", "main")
    with pytest.raises(InvalidParameterError, match=re.escape("Use '0.41.0'")):  # the kit's own loader, same rule
        community.load_community_pipeline("unused", "lpw_stable_diffusion", custom_revision="v0.41.0")


def test_community_name_must_be_a_bare_name(tiny):
    with pytest.raises(InvalidParameterError, match="name='../evil'"):
        community.load_community_pipeline(tiny["sd"], "../evil")


def test_disable_remote_code_is_respected(tiny, monkeypatch):
    monkeypatch.setenv("DIFFUSERS_DISABLE_REMOTE_CODE", "1")
    with pytest.raises(community.RemoteCodeRefused, match="DIFFUSERS_DISABLE_REMOTE_CODE is set"):
        community.load_remote_code_pipeline(tiny["sd-components"], device_map=None)
    with pytest.raises(community.RemoteCodeRefused):
        community.load_remote_code_component(tiny["sd-components"], "unet")


def test_an_unwritable_modules_cache_is_refused_before_any_code_runs(tiny, monkeypatch):
    """diffusers copies custom code into HF_MODULES_CACHE (HF_HOME/modules) and fails deep inside otherwise."""
    from diffusers.utils import constants

    from helpers.errors import FolderNotWritableError

    monkeypatch.setattr(constants, "HF_MODULES_CACHE", "/sys/kit-hf-home/modules")  # /sys refuses even root
    monkeypatch.setenv("HF_HOME", "/sys/kit-hf-home")
    monkeypatch.setattr(loading, "load_pipeline", lambda *a, **k: pytest.fail("loaded anyway"))
    with pytest.raises(FolderNotWritableError, match="copies custom code into /sys/kit-hf-home/modules") as no:
        community.load_remote_code_pipeline(tiny["sd"], custom_pipeline="community/kit_prompt_weighting.py")
    assert (no.value.name, no.value.value) == ("HF_HOME", "/sys/kit-hf-home") and "HF_HOME" in no.value.fix
    with pytest.raises(FolderNotWritableError):
        community.load_remote_code_component(tiny["sd-components"], "unet")
    monkeypatch.setenv("HF_MODULES_CACHE", "/sys/kit-hf-home/modules")
    with pytest.raises(FolderNotWritableError, match="^HF_MODULES_CACHE="):
        community.audit(custom_pipeline="community/kit_previews")
    assert community.audit(tiny["sd"]).files == []  # no code to copy: nothing is written there


def passes_trust_remote_code(source: str) -> bool:
    """Whether any call in `source` passes trust_remote_code=True (docstrings and comments do not count)."""
    return any(
        keyword.arg == "trust_remote_code" and isinstance(keyword.value, ast.Constant) and keyword.value.value is True
        for node in ast.walk(ast.parse(source)) if isinstance(node, ast.Call) for keyword in node.keywords
    )


def test_only_helpers_community_passes_trust_remote_code():
    sources = {str(p.relative_to(ROOT)): p.read_text() for p in [*ROOT.glob("helpers/**/*.py"),
                                                                  *ROOT.glob("community/**/*.py")]}
    assert passes_trust_remote_code("load(x, trust_remote_code=True)")  # the check can fail
    assert [name for name, source in sources.items() if passes_trust_remote_code(source)] == ["helpers/community.py"]


def _in_order(body):
    """Simple statements in execution order, entering if/for/while/with/try blocks (a guarded cell's audit and
    call live inside `if ...:`); function and class bodies are left whole."""
    for statement in body:
        blocks = [getattr(statement, name, None) or [] for name in ("body", "orelse", "finalbody")]
        blocks += [handler.body for handler in getattr(statement, "handlers", [])]
        if isinstance(statement, ast.FunctionDef | ast.AsyncFunctionDef | ast.ClassDef) or not any(blocks):
            yield statement
        else:
            for block in blocks:
                yield from _in_order(block)


def unaudited_remote_code_calls(cell_source: str) -> list[str]:
    """Calls passing trust_remote_code=True that do not take their model and custom_pipeline from a
    `X = community.audit(...)` made earlier in the same cell (with no other assignment to X between)."""
    problems, audits = [], set()
    for statement in _in_order(ast.parse(cell_source).body):
        for node in ast.walk(statement):
            if not isinstance(node, ast.Call) or not any(
                    k.arg == "trust_remote_code" and getattr(k.value, "value", None) is True for k in node.keywords):
                continue
            checked = [k.value for k in node.keywords if k.arg == "custom_pipeline"]
            if not ast.unparse(node.func).endswith("from_pipe"):  # from_pretrained: the model too
                checked += node.args[:1] + [k.value for k in node.keywords if k.arg == "pretrained_model_name_or_path"]
            if not checked or not all(isinstance(u, ast.Attribute) and isinstance(u.value, ast.Name)
                                      and u.value.id in audits and u.attr in ("source", "custom_pipeline")
                                      for u in checked):
                problems.append(ast.unparse(node)[:80])
        targets = [t.id for t in getattr(statement, "targets", []) if isinstance(t, ast.Name)]
        is_audit = isinstance(statement, ast.Assign) and isinstance(statement.value, ast.Call) and \
            ast.unparse(statement.value.func) == "community.audit"
        audits = (audits | set(targets)) if is_audit else audits - set(targets)
    return problems


def test_notebooks_pass_trust_remote_code_only_right_after_an_audit():
    audited = 'a = community.audit(m, custom_pipeline=p)\nx = DiffusionPipeline.from_pretrained(a.source, ' \
              'custom_pipeline=a.custom_pipeline, trust_remote_code=True)'
    assert unaudited_remote_code_calls(audited) == []
    assert unaudited_remote_code_calls("x = DiffusionPipeline.from_pretrained(m, trust_remote_code=True)")
    assert unaudited_remote_code_calls(audited.replace("a.source", "other"))  # another source than the audited one
    assert unaudited_remote_code_calls(audited.replace("a = community.audit(m, custom_pipeline=p)\n",
                                                       "a = community.audit(m)\na = something_else()\n"))
    guarded = "if ok:\n    " + audited.replace("\n", "\n    ")
    assert unaudited_remote_code_calls(guarded) == []  # audit and call inside the same guard
    assert unaudited_remote_code_calls("if ok:\n    a = community.audit(m)\nelse:\n    a = other()\n"
                                       "x = DiffusionPipeline.from_pretrained(a.source, trust_remote_code=True)")
    calls = 0
    for path in sorted(ROOT.glob("notebooks/*.ipynb")):
        for cell in nbformat.read(path, as_version=4).cells:
            if cell.cell_type == "code":
                calls += passes_trust_remote_code(cell.source)
                assert unaudited_remote_code_calls(cell.source) == [], (path.name, cell.id)
    assert calls >= 3  # notebook 04 shows from_pretrained with a file, from_pipe with a folder, and a repo


def relative_import_folder(tmp_path: Path, marker: Path) -> Path:
    """A custom pipeline folder whose pipeline.py imports two sibling helpers; the first writes `marker`."""
    folder = tmp_path / "kit_relative_pipeline"
    folder.mkdir()
    (folder / "pipeline.py").write_text(
        "from diffusers import StableDiffusionPipeline\n\nfrom .rel_helper import TAG\nfrom .rel_deeper import DEPTH\n"
        "\n\nclass KitRelativePipeline(StableDiffusionPipeline):\n    tag = TAG + DEPTH\n"
    )
    (folder / "rel_helper.py").write_text(f"open({str(marker)!r}, 'a').write('ran\\n')\nTAG = 'helper'\n")
    (folder / "rel_deeper.py").write_text("DEPTH = '+deeper'\n")
    return folder


def test_the_audit_follows_relative_imports_of_a_local_custom_pipeline(tiny, tmp_path, capsys):
    """The helper a pipeline imports runs too: it is listed, hashed and pinned like the pipeline itself."""
    marker = tmp_path / "ran.txt"
    folder = relative_import_folder(tmp_path, marker)
    audited = community.audit(str(tiny["sd"]), custom_pipeline=str(folder))
    assert [f.name for f in audited.files] == ["pipeline.py", "rel_deeper.py", "rel_helper.py"]
    assert audited.files[1].role == "custom_pipeline: imported by pipeline.py"
    assert "will execute 3 code file(s)" in capsys.readouterr().out
    pinned = audited.manifest
    (folder / "rel_deeper.py").write_text("DEPTH = 'changed after you read it'\n")
    with pytest.raises(community.RemoteCodeChanged) as refused:
        community.load_remote_code_pipeline(str(tiny["sd"]), custom_pipeline=str(folder), pinned=pinned,
                                            device_map=None)
    assert list(refused.value.changes) == ["rel_deeper.py"]
    assert not marker.exists()  # refused before any of it ran


def test_an_unlisted_relatively_imported_file_fails_the_manifest(tiny, tmp_path):
    folder = relative_import_folder(tmp_path, tmp_path / "ran.txt")
    pinned = community.audit(str(tiny["sd"]), custom_pipeline=str(folder)).manifest
    (folder / "rel_extra.py").write_text("X = 1\n")
    (folder / "pipeline.py").write_text((folder / "pipeline.py").read_text() + "from .rel_extra import X  # noqa\n")
    with pytest.raises(community.RemoteCodeChanged) as refused:
        community.audit(str(tiny["sd"]), custom_pipeline=str(folder), pinned=pinned)
    assert refused.value.changes["rel_extra.py"] == (None, outputs.sha256_file(folder / "rel_extra.py"))
    assert set(refused.value.changes) == {"pipeline.py", "rel_extra.py"}


def test_a_missing_relative_import_is_named_before_anything_runs(tiny, tmp_path):
    folder = relative_import_folder(tmp_path, tmp_path / "ran.txt")
    (folder / "rel_deeper.py").unlink()
    with pytest.raises(LocalPathNotFoundError, match=r"pipeline.py imports 'rel_deeper.py', which does not exist"):
        community.audit(str(tiny["sd"]), custom_pipeline=str(folder))


def test_a_nested_local_relative_import_is_refused_not_resolved_from_the_shared_cache(tiny, tmp_path):
    """diffusers copies only direct imports of local code into one shared folder: a deeper one is refused."""
    folder = relative_import_folder(tmp_path, tmp_path / "ran.txt")
    (folder / "rel_helper.py").write_text("from .rel_deeper import DEPTH  # noqa\nTAG = 'helper'\n")
    (folder / "pipeline.py").write_text((folder / "pipeline.py").read_text().replace("from .rel_deeper import DEPTH",
                                                                                    "DEPTH = ''"))
    with pytest.raises(community.RemoteCodeRefused, match=r"rel_helper.py imports 'rel_deeper.py' relatively"):
        community.audit(str(tiny["sd"]), custom_pipeline=str(folder))


def test_the_audited_relative_helper_is_the_one_that_runs(tiny, tmp_path):
    marker = tmp_path / "ran.txt"
    folder = relative_import_folder(tmp_path, marker)
    pipe = community.load_remote_code_pipeline(str(tiny["sd"]), custom_pipeline=str(folder), device_map=None)
    assert type(pipe).__name__ == "KitRelativePipeline" and pipe.tag == "helper+deeper"
    assert marker.read_text() == "ran\n"


def test_the_audit_follows_relative_imports_of_a_components_repo(tiny, tmp_path):
    copy = tmp_path / "repo"
    shutil.copytree(tiny["sd-components"], copy)
    unet_code = copy / "unet" / "kit_counting_unet.py"
    unet_code.write_text("from .unet_helper import SCALE  # noqa\n" + unet_code.read_text())
    (copy / "unet" / "unet_helper.py").write_text("SCALE = 1\n")
    names = [f.name for f in community.code_files(str(copy))]
    assert names == ["pipeline_kit_components.py", "unet/kit_counting_unet.py", "unet/unet_helper.py"]
    assert [f.name for f in community.component_code_files(str(copy), "unet")][-1] == "unet/unet_helper.py"


@pytest.mark.parametrize("line", ["from . import rel_helper", "from .. import rel_helper",
                                  "from.sub import x", "from .sub import x  # noqa"])
def test_relative_imports_diffusers_would_not_copy_are_refused(tiny, tmp_path, line):
    """diffusers finds relative imports with a regex over lines; forms it misses are not copied with the file,
    and Python would import whatever another pipeline left in the shared modules folder."""
    folder = relative_import_folder(tmp_path, tmp_path / "ran.txt")
    (folder / "pipeline.py").write_text((folder / "pipeline.py").read_text() + f"\n{line}\n")
    (folder / "sub.py").write_text("x = 1\n")
    if line.startswith("from .sub"):  # the regex sees this one: it is listed, not refused
        assert "sub.py" in [f.name for f in community.audit(str(tiny["sd"]), custom_pipeline=str(folder)).files]
        return
    with pytest.raises(community.RemoteCodeRefused, match=r"pipeline.py line \d+: `from \.+(rel_helper|sub)? import"):
        community.audit(str(tiny["sd"]), custom_pipeline=str(folder))


def test_a_repos_own_code_refuses_nested_relative_imports_hub_or_local(tiny, tmp_path):
    """diffusers loads a repository's pipeline class and components from its (snapshot) folder as local files,
    copying only their direct imports, so the nested rule applies to Hub repos too."""
    copy = tmp_path / "repo"
    shutil.copytree(tiny["sd-components"], copy)
    unet_code = copy / "unet" / "kit_counting_unet.py"
    unet_code.write_text("from .unet_helper import SCALE  # noqa\n" + unet_code.read_text())
    (copy / "unet" / "unet_helper.py").write_text("from .unet_deeper import SCALE  # noqa\n")
    (copy / "unet" / "unet_deeper.py").write_text("SCALE = 1\n")
    with pytest.raises(community.RemoteCodeRefused, match="unet/unet_helper.py imports 'unet/unet_deeper.py'"):
        community.code_files(str(copy))


def test_two_folders_with_same_named_helpers_each_run_their_own(tiny, tmp_path):
    """Two custom pipeline folders, each with pipeline.py and helper.py, loaded one after the other in one process:
    the second must get its own helper, not the module the first left in sys.modules."""
    pipes = []
    for value in ("first", "second"):
        folder = tmp_path / value
        folder.mkdir()
        (folder / "pipeline.py").write_text(
            "from diffusers import StableDiffusionPipeline\n\nfrom .kit_same_helper import VALUE\n\n\n"
            f"class Kit{value.title()}Pipeline(StableDiffusionPipeline):\n    value = VALUE\n")
        (folder / "kit_same_helper.py").write_text(f"VALUE = {value!r}\n")
        pipes.append(community.load_remote_code_pipeline(str(tiny["sd"]), custom_pipeline=str(folder),
                                                         device_map=None))
    assert [pipe.value for pipe in pipes] == ["first", "second"]


DYNAMIC_FORMS = {  # (how pipeline.py loads sibling.py at run time, the call the refusal must name)
    "runpy": ("import os\nimport runpy\nrunpy.run_path(os.path.join(os.path.dirname(__file__), 'sibling.py'))\n",
              "runpy.run_path("),
    "exec-open": ("import os\nexec(open(os.path.join(os.path.dirname(__file__), 'sibling.py')).read())\n", "exec("),
    "import_module": ("import importlib\nimportlib.import_module('sibling')\n", "importlib.import_module('sibling')"),
    "__import__": ("__import__('sibling')\n", "__import__('sibling')"),
    "spec_from_file_location": ("import importlib.util\nimportlib.util.spec_from_file_location('s', 'sibling.py')\n",
                                "importlib.util.spec_from_file_location("),
    "read .py": ("from pathlib import Path\nsource = Path(__file__).with_name('sibling.py').read_text()\n",
                 "with_name('sibling.py').read_text()"),
}


def dynamic_folder(tmp_path: Path, loader: str, marker: Path) -> Path:
    """A custom pipeline folder whose pipeline.py runs sibling.py at import time (`loader`); sibling.py writes
    `marker` when it runs."""
    folder = tmp_path / "kit_dynamic_pipeline"
    folder.mkdir()
    (folder / "pipeline.py").write_text(
        f"from diffusers import StableDiffusionPipeline\n\n{loader}\n\n"
        "class KitDynamicPipeline(StableDiffusionPipeline):\n    pass\n")
    (folder / "sibling.py").write_text(f"open({str(marker)!r}, 'a').write('sibling ran\\n')\n")
    return folder


@pytest.mark.parametrize("form", list(DYNAMIC_FORMS))
def test_code_loaded_at_run_time_is_refused_with_its_file_line_and_call(tiny, tmp_path, form):
    loader, call = DYNAMIC_FORMS[form]
    marker = tmp_path / "ran.txt"
    folder = dynamic_folder(tmp_path, loader, marker)
    line = 2 + loader.count("\n")  # the loader's last line: it starts on line 3
    with pytest.raises(community.RemoteCodeRefused) as refused:
        community.load_remote_code_pipeline(str(tiny["sd"]), custom_pipeline=str(folder), device_map=None)
    message = str(refused.value)
    assert message.startswith(f"pipeline.py line {line}: `") and call in message
    assert "allow_dynamic_code=['pipeline.py']" in message and not marker.exists()
    assert community.dynamic_loads(ast.parse("import torch\nm = torch.compile(m)\nm.eval()\n")) == []


def test_the_opt_in_shows_hashes_and_pins_the_loaded_file_and_runs_that_copy(tiny, tmp_path, capsys):
    marker = tmp_path / "ran.txt"
    folder = dynamic_folder(tmp_path, DYNAMIC_FORMS["runpy"][0], marker)
    audited = community.audit(str(tiny["sd"]), custom_pipeline=str(folder), allow_dynamic_code=["pipeline.py"])
    assert [(f.name, f.role) for f in audited.files] == [
        ("pipeline.py", "custom_pipeline"), ("sibling.py", "custom_pipeline: loaded by pipeline.py line 5")]
    assert audited.manifest["sibling.py"] == outputs.sha256_file(folder / "sibling.py")
    assert "sibling.py" in capsys.readouterr().out
    pipe = community.load_remote_code_pipeline(str(tiny["sd"]), custom_pipeline=str(folder), device_map=None,
                                               allow_dynamic_code=["pipeline.py"], pinned=audited.manifest)
    assert type(pipe).__name__ == "KitDynamicPipeline" and marker.read_text() == "sibling ran\n"
    (folder / "sibling.py").write_text("print('not the code you read')\n")
    with pytest.raises(community.RemoteCodeChanged, match="sibling.py"):
        community.audit(str(tiny["sd"]), custom_pipeline=str(folder), allow_dynamic_code=["pipeline.py"],
                        pinned=audited.manifest)


def test_an_opt_in_without_a_literal_lists_every_py_file_of_the_folder(tiny, tmp_path):
    folder = dynamic_folder(tmp_path, "import importlib\nNAME = 'sib' + 'ling'\nimportlib.import_module(NAME)\n",
                            tmp_path / "ran.txt")
    (folder / "other.py").write_text("X = 1\n")
    audited = community.audit(str(tiny["sd"]), custom_pipeline=str(folder), allow_dynamic_code=["pipeline.py"])
    assert [f.name for f in audited.files] == ["pipeline.py", "other.py", "sibling.py"]


@pytest.mark.parametrize("allow, rule", [(["nope.py"], "names no audited file that loads code at run time"),
                                         ("pipeline.py", "needs a list of file names"),
                                         ([""], "needs a list of file names")])
def test_an_opt_in_that_names_nothing_loading_code_is_refused(tiny, tmp_path, allow, rule):
    folder = relative_import_folder(tmp_path, tmp_path / "ran.txt")
    with pytest.raises(InvalidParameterError, match=rule):
        community.audit(str(tiny["sd"]), custom_pipeline=str(folder), allow_dynamic_code=allow)


def test_a_loaded_file_outside_the_folder_is_refused_even_with_the_opt_in(tiny, tmp_path):
    folder = dynamic_folder(tmp_path, "import runpy\nrunpy.run_path('/tmp/elsewhere.py')\n", tmp_path / "ran.txt")
    with pytest.raises(community.RemoteCodeRefused, match="loads '/tmp/elsewhere.py', outside its own folder"):
        community.audit(str(tiny["sd"]), custom_pipeline=str(folder), allow_dynamic_code=["pipeline.py"])


def other_kernels_code(marker: Path) -> str:
    return (f"open({str(marker)!r}, 'a').write('other kernel ran\\n')\nfrom diffusers import StableDiffusionPipeline\n"
            "\n\nclass OtherKernelsPipeline(StableDiffusionPipeline):\n    pass\n")


def test_another_kernels_rewrite_of_the_shared_modules_cache_never_runs(tiny, tmp_path):
    """A second kernel on the same HF_HOME rewrites HF_MODULES_CACHE/diffusers_modules/local/pipeline.py after this
    kernel's audit: the load copies and imports the audited file in a folder of its own, so the rewrite never runs."""
    import subprocess
    import sys

    from diffusers.utils.constants import HF_MODULES_CACHE

    folder = relative_import_folder(tmp_path, tmp_path / "helper-ran.txt")
    marker = tmp_path / "other.txt"
    audited = community.audit(str(tiny["sd"]), custom_pipeline=str(folder))
    shared = Path(HF_MODULES_CACHE) / "diffusers_modules" / "local"
    rewrite = (f"import pathlib\nfor name, text in (('pipeline.py', {other_kernels_code(marker)!r}), "
               f"('rel_helper.py', 'TAG = \"other\"\\n')):\n"
               f"    (pathlib.Path({str(shared)!r}) / name).parent.mkdir(parents=True, exist_ok=True)\n"
               f"    (pathlib.Path({str(shared)!r}) / name).write_text(text)\n")
    subprocess.run([sys.executable, "-c", rewrite], check=True)  # the other kernel
    with community.only_audited_code(audited) as private:
        assert Path(HF_MODULES_CACHE) in private.parents and private.stat().st_mode & 0o077 == 0
        pipe = loading.load_pipeline(audited.source, custom_pipeline=audited.custom_pipeline, trust_remote_code=True,
                                     device_map=None)
    assert type(pipe).__name__ == "KitRelativePipeline" and pipe.tag == "helper+deeper"
    assert not marker.exists() and not private.exists()  # the private folder goes with the load
    assert "OtherKernelsPipeline" in (shared / "pipeline.py").read_text()  # the shared copy was never used


def test_a_file_rewritten_between_audit_and_load_is_refused_before_it_runs(tiny, tmp_path):
    marker = tmp_path / "other.txt"
    folder = relative_import_folder(tmp_path, tmp_path / "helper-ran.txt")
    audited = community.audit(str(tiny["sd"]), custom_pipeline=str(folder))
    (folder / "rel_deeper.py").write_text(f"open({str(marker)!r}, 'a').write('ran\\n')\nDEPTH = ''\n")
    with pytest.raises(community.RemoteCodeChanged) as refused, community.only_audited_code(audited):
        loading.load_pipeline(audited.source, custom_pipeline=audited.custom_pipeline, trust_remote_code=True,
                              device_map=None)
    assert "the code the audit showed (it changed after the audit)" in str(refused.value)
    assert list(refused.value.changes) == ["rel_deeper.py"] and not marker.exists()
    assert not (tmp_path / "helper-ran.txt").exists()  # nothing of the folder ran


def test_a_copy_rewritten_after_diffusers_made_it_is_refused_just_before_the_import(tiny, tmp_path, monkeypatch):
    """The last window: the copy in the modules folder changes after diffusers wrote it, before it imports it."""
    from diffusers.utils import dynamic_modules_utils as dynamic

    marker = tmp_path / "other.txt"
    copy_file = dynamic.get_cached_module_file

    def copy_then_rewrite(*args, **kwargs):
        module_path = copy_file(*args, **kwargs)
        (Path(dynamic.HF_MODULES_CACHE) / module_path).write_text(other_kernels_code(marker))
        return module_path

    monkeypatch.setattr(dynamic, "get_cached_module_file", copy_then_rewrite)
    with pytest.raises(community.RemoteCodeChanged, match=r"pipeline.py: pinned [0-9a-f]{64}, found [0-9a-f]{64}"):
        community.load_remote_code_pipeline(str(tiny["sd"]), custom_pipeline="community/kit_previews", device_map=None)
    assert not marker.exists()


def write_manifest(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "manifest.json"
    path.write_text(text)
    return path


@pytest.mark.parametrize("text, rule", [
    ('{\n  "pipeline.py": "abc",\n}', "line 3: not valid JSON"),
    ('["pipeline.py"]', "holds a list, not a JSON object"),
    ('{\n  "pipeline.py": "%s",\n  "../escape.py": "%s"\n}', "line 3: entry '../escape.py' is not a file name inside"),
    ('{\n  "/etc/passwd": "%s"\n}', "line 2: entry '/etc/passwd' is not a file name inside"),
    ('{\n  "pipeline.py": "%s",\n  "pipeline.py": "%s"\n}', "entry 'pipeline.py' appears twice"),
    ('{\n  "pipeline.py": "ABC"\n}', "line 2: entry 'pipeline.py' has 'ABC', not a sha256"),
    ('{\n  "pipeline.py": 5\n}', "line 2: entry 'pipeline.py' has 5, not a sha256"),
])
def test_a_manifest_file_is_untrusted_input_checked_line_by_line(tiny, tmp_path, text, rule):
    path = write_manifest(tmp_path, text.replace("%s", "0" * 64))
    with pytest.raises(InvalidParameterError, match=re.escape(rule)) as refused:
        community.audit(custom_pipeline="community/kit_previews", pinned=str(path))
    assert refused.value.name == "pinned" and refused.value.value == str(path)


def test_a_manifest_that_is_or_names_a_symlink_is_refused(tiny, tmp_path):
    folder = tmp_path / "kit_linked"
    shutil.copytree(ROOT / "community" / "kit_previews", folder)
    good = community.audit(custom_pipeline=str(folder)).manifest
    real = write_manifest(tmp_path, json.dumps(good))
    assert community.audit(custom_pipeline=str(folder), pinned=str(real)).manifest == good  # read back, matches
    link = tmp_path / "link.json"
    link.symlink_to(real)
    with pytest.raises(InvalidParameterError, match="is a symbolic link"):
        community.audit(custom_pipeline=str(folder), pinned=str(link))
    (folder / "helper.py").symlink_to(ROOT / "helpers" / "rules.py")
    with pytest.raises(InvalidParameterError, match=r"line 1: entry 'helper.py' is a symbolic link in"):
        community.audit(custom_pipeline=str(folder), pinned=str(write_manifest(tmp_path, json.dumps(
            {**good, "helper.py": "0" * 64}))))


@pytest.mark.parametrize("value", ["pipeline.py", [""], [3]])
def test_notebook_04s_allow_dynamic_code_is_checked_at_setup(value):
    with pytest.raises(InvalidParameterError, match=r"allow_dynamic_code=.* needs a list of file names"):
        validate.check({"allow_dynamic_code": value}, stage="before_install")
    validate.check({"allow_dynamic_code": ["pipeline.py"], "pinned_manifest": ""}, stage="before_install")
