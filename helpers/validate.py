"""Check every notebook parameter before anything slow runs (no torch, no diffusers imported here): `check(globals())`
validates each parameter by name against one table shared by all notebooks (the rules live in `helpers.rules`)."""

from __future__ import annotations

import json
from pathlib import Path

from . import env, folders, hub, rules
from .errors import InvalidParameterError, KitError

TEXT_CONDITIONED = ("model_id", "t2v_model_id")  # the notebooks start these from a prompt alone


def _model(name, value, optional=False):
    if optional and value == "":
        return
    if isinstance(value, str) and value:
        path = Path(value).expanduser()
        folders.refuse_single_file(path, name)
        if path.is_dir() and (path / "model_index.json").is_file():
            if name == "vae_id" and not (path / "config.json").is_file():
                rules.fail(name, value, "is a whole pipeline folder, not a VAE",
                           f"Pass its VAE subfolder: {str(path / 'vae')!r}.")
            index = folders.check_pipeline_folder(path, name)
            if name in TEXT_CONDITIONED:
                folders.refuse_image_conditioned(index, name, value)
    try:
        hub.resolve_model_source(value)
    except KitError as error:
        raise InvalidParameterError(name, value, error.rule, error.fix) from None


def _plannable_model(name, value, optional=False):
    """plan_only=True: a shipped architecture's Hub id plans from the kit's own configs, cached or not."""
    from .architectures import ROOT
    if isinstance(value, str) and value.count("/") == 1 and (ROOT / value.replace("/", "--", 1)).is_dir():
        return
    _model(name, value, optional)


def _prompts_file(name, value):
    """Empty (use `prompts`), or a .txt/.csv/.jsonl file read in full now: a bad row is named by its line."""
    rules.text(name, value)
    if value:
        from .prompts_file import PromptsFileError, read_prompts
        try:
            read_prompts(value)
        except PromptsFileError as error:
            rules.fail(name, value, str(error), "The columns: prompt, negative_prompt, seed, num_inference_steps, "
                       "guidance_scale (see the README's prompts-file format).")


def _optional_model(name, value):
    _model(name, value, optional=True)


def _custom_pipeline(name, value):
    try:
        rules.custom_pipeline_path(name, value)
    except KitError as error:
        raise InvalidParameterError(name, value, error.rule, error.fix) from None


def model_index(value, name: str = "model_id") -> dict | None:
    """A pipeline's model_index.json, nothing loaded: a local folder, a shipped architecture, or the Hub (after the
    install). None when there is none (a component folder)."""
    index = Path(value).expanduser() / "model_index.json"
    if index.parent.is_dir():
        return folders.read_json_object(index, name) if index.is_file() else None
    if not hub.is_hub_id(value):
        return None
    from huggingface_hub import errors
    try:
        return hub.read_model_index(value, prefer_shipped=True)
    except errors.RemoteEntryNotFoundError:  # a repository without model_index.json: a single model, not a pipeline
        return None
    except errors.LocalEntryNotFoundError as error:
        raise InvalidParameterError(name, value, "its model_index.json is not in the local Hub cache and the Hub "
                                    f"cannot be used: {hub.offline_reason()}",
                                    "Download the whole model once while online (snapshot_download).") from error
    except (errors.RepositoryNotFoundError, errors.RevisionNotFoundError) as error:
        raise InvalidParameterError(name, value, "the Hub has no such repository (or it is private)",
                                    "Check the id on huggingface.co; for a private one, log in (HF_TOKEN).") from error


def pipeline_class(name, value, allowed) -> None:
    """The notebook is written for these pipeline classes: another family would fail mid-notebook."""
    found = (model_index(value, name) or {}).get("_class_name")
    if isinstance(found, str) and found not in allowed:
        rules.fail(name, value, f"its model_index.json names {found}; this notebook is written for "
                   f"{' or '.join(allowed)}", "Use a model of that family (the parameters cell's default is one); "
                   "notebook 02 loads any family.")


def _safety_model(name, value):
    """A pipeline that ships a safety checker: without one, its images would be saved as filtered, unfiltered."""
    _model(name, value)
    index = model_index(value, name)
    spec = (index or {}).get("safety_checker")
    if not (isinstance(spec, list) and spec and spec[-1]):
        found = ("it is no pipeline (no model_index.json)" if index is None else
                 f"its model_index.json has safety_checker {json.dumps(spec)}" if "safety_checker" in index else
                 "its model_index.json names none")
        rules.fail(name, value, f"has no safety checker: {found}",
                   "Pass a pipeline that ships one, e.g. 'stable-diffusion-v1-5/stable-diffusion-v1-5'.")


RULES = {
    "model_id": _model, "vae_id": _model, "safety_model_id": _safety_model, "components_repo": _optional_model,
    "prompt": lambda n, v: rules.text(n, v, allow_empty=False), "negative_prompt": rules.text,
    "height": rules.size, "width": rules.size, "num_inference_steps": rules.steps,
    "num_processes": lambda n, v: rules.whole(n, v, 1), "seed": rules.seed, "guidance_scale": rules.guidance,
    "strength": lambda n, v: rules.number(n, v, 0, 1, low_open=True),
    "dtype": lambda n, v: rules.choice(n, v, rules.DTYPE_NAMES),
    "device_map": lambda n, v: rules.choice(n, v, rules.DEVICE_MAPS),
    "parallel_loading": rules.flag, "install": rules.flag, "report_only": rules.flag, "enable_pag": rules.flag,
    "publish_to_hub": rules.flag, "local_dir": rules.text, "hf_home": rules.cache_folder,
    "output_dir": rules.output_folder, "scheduler": rules.scheduler_name, "prompts": rules.prompt_list,
    "gpu_memory_gib": lambda n, v: v == [] or rules.gpu_budgets(n, v), "max_memory": rules.memory_map,
    "community_pipeline": _custom_pipeline,
    "allow_dynamic_code": lambda n, v: isinstance(v, list) and all(isinstance(x, str) and x for x in v) or rules.fail(
        n, v, "needs a list of file names, like ['pipeline.py']"),
    "pinned_manifest": rules.text, "hub_community_name": rules.community_name, "custom_revision": rules.custom_revision,
    "revision": rules.commit, "t2v_model_id": _model, "i2v_model_id": _model, "num_frames": rules.num_frames,
    "fps": lambda n, v: rules.whole(n, v, 1), "input_image": rules.input_image, "pipeline_kwargs": rules.call_kwargs,
    "run_image_to_video": rules.flag, "prompts_file": _prompts_file,
    "seeds_per_prompt": lambda n, v: rules.whole(n, v, 1), "resume": rules.flag, "plan_only": rules.flag,
    "offload": lambda n, v: rules.choice(n, v, rules.OFFLOADS), "force": rules.flag,
    "hardware": lambda n, v: rules.choice(n, v, env.HARDWARE_NAMES), "quantization": rules.quantization_to_load,
}
# With plan_only=True nothing is downloaded, so a model id needs only configs: these rules replace RULES'.
PLAN_ONLY_RULES = {"model_id": _plannable_model, "vae_id": _plannable_model, "safety_model_id": _plannable_model,
                   "components_repo": lambda n, v: _plannable_model(n, v, optional=True),
                   "quantization": rules.quantization}  # a plan needs no GGUF file yet


# A parameter its notebook does not use while this flag is False (so it is not looked up in the Hub cache).
SWITCHED_OFF_BY = {"i2v_model_id": "run_image_to_video"}


# Names the setup cell itself defines before calling check(), and IPython's own.
NOT_PARAMETERS = {"clone", "root", "kit", "git", "In", "Out", "exit", "quit", "get_ipython"}


def unknown_parameters(namespace: dict) -> list[str]:
    """Plain-valued names in `namespace` that no notebook declares: papermill only warns about a misspelt
    `-p name value` and injects it as a global, so the kit can see it."""
    plain = (str, int, float, bool, list, dict, type(None))
    return sorted(name for name, value in namespace.items()
                  if name.isidentifier() and name[0].islower() and name not in RULES and name not in NOT_PARAMETERS
                  and isinstance(value, plain))


# Parameters naming a model source: for a Hub id their rule imports huggingface_hub (id syntax, cache).
MODEL_SOURCES = frozenset(name for name, rule in RULES.items() if rule in (_model, _optional_model, _safety_model))
STAGES = ("all", "before_install", "after_install")


def check(namespace: dict, stage: str = "all", pipeline_classes: tuple[str, ...] = ()) -> None:
    """Validate every parameter in `namespace` (a notebook's `globals()`) that has a rule, and refuse names that are no
    parameter of any notebook. stage="before_install" runs the rules that import none of the pinned packages (all but
    Hub-id model sources), "after_install" the rest, "all" both. `pipeline_classes`: the `_class_name`s allowed."""
    import difflib
    if stage not in STAGES:
        raise ValueError(f"stage={stage!r}: choose one of {', '.join(STAGES)}")
    if stage != "after_install":
        for name in unknown_parameters(namespace):
            close = difflib.get_close_matches(name, [n for n in RULES if n in namespace] or list(RULES), n=1)
            fix = f"Did you mean {close[0]!r}?" if close else "papermill --help-notebook NOTEBOOK lists the parameters."
            raise InvalidParameterError(name, namespace[name], "is not a parameter of this notebook", fix)
    plan_only = namespace.get("plan_only") is True

    def now(name):  # a Hub-id model source needs huggingface_hub: after the install
        return name in namespace and (stage == "all" or (stage == "after_install") == (
            name in MODEL_SOURCES and hub.is_hub_id(namespace[name])))

    for name, rule in RULES.items():
        if now(name) and namespace.get(SWITCHED_OFF_BY.get(name)) is False:  # unused this run: only its type
            rules.text(name, namespace[name])
        elif now(name):
            (PLAN_ONLY_RULES.get(name, rule) if plan_only else rule)(name, namespace[name])
    if stage != "before_install":  # the installed diffusers is the pinned one only now
        for name in MODEL_SOURCES & namespace.keys():
            value = namespace[name]
            if isinstance(value, str) and value and (Path(value).expanduser() / "model_index.json").is_file():
                folders.check_pipeline_class(value, name)
    if pipeline_classes and now("model_id"):
        pipeline_class("model_id", namespace["model_id"], pipeline_classes)
    if stage != "after_install" and "strength" in namespace and "num_inference_steps" in namespace:
        rules.strength_and_steps(namespace["strength"], namespace["num_inference_steps"])
