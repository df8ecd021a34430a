"""Check a local pipeline folder before `from_pretrained` reads it, so a broken copy fails with the file's name (not a
bare KeyError deep inside loading). Reads only JSON and weight headers; no torch, no diffusers."""

from __future__ import annotations

import importlib.util
import json
import re
import struct
from functools import cache
from pathlib import Path

from .errors import InvalidParameterError, LocalPathNotFoundError

CONFIG_FILES = ("config.json", "scheduler_config.json", "preprocessor_config.json", "tokenizer_config.json",
                "tokenizer.json", "vocab.json")


def _broken(name: str, path: Path, rule: str, fix: str) -> InvalidParameterError:
    return InvalidParameterError(name, str(path), rule, fix)


def read_json_object(path: Path, name: str = "model_id") -> dict:
    """A JSON file that must hold an object, with the file named in every error."""
    try:
        data = json.loads(path.read_text())
    except json.JSONDecodeError as error:
        raise _broken(name, path, f"{path.name} is not valid JSON ({error.msg} at line {error.lineno})",
                      "Download the model again (snapshot_download), or restore the file.") from None
    if not isinstance(data, dict):
        raise _broken(name, path, f"{path.name} holds a {type(data).__name__}, not a JSON object",
                      "Download the model again; this file should be the one save_pretrained wrote.")
    return data


def check_safetensors(path: Path, name: str = "model_id") -> dict:
    """The first 8 bytes give the header length; the header must be JSON and fit in the file. Returns it."""
    size, fix = path.stat().st_size, "The download was interrupted or the file was replaced: download it again."
    if size < 8:
        raise _broken(name, path, f"{path.name} is {size} bytes, too short to be a safetensors file", fix)
    with open(path, "rb") as file:
        (header_length,) = struct.unpack("<Q", file.read(8))
        if header_length <= 1 or 8 + header_length > size:
            raise _broken(name, path, f"{path.name} is truncated or not a safetensors file "
                          f"(header of {header_length} bytes in a {size}-byte file)", fix)
        try:
            header = json.loads(file.read(header_length))
        except (json.JSONDecodeError, UnicodeDecodeError):
            raise _broken(name, path, f"{path.name} has no readable safetensors header", fix) from None
    ends = [entry["data_offsets"][1] for key, entry in header.items()
            if key != "__metadata__" and isinstance(entry, dict) and "data_offsets" in entry]
    if ends and 8 + header_length + max(ends) > size:
        raise _broken(name, path, f"{path.name} is truncated: its header describes "
                      f"{8 + header_length + max(ends)} bytes, the file has {size}", fix)
    return header


def check_shapes(component_folder: Path, expected: dict[str, tuple], name: str = "model_id") -> None:
    """Each tensor in `expected` ({name: shape}, from config.json) has that shape in the folder's .safetensors files."""
    for path in sorted(component_folder.glob("*.safetensors")):
        for key, entry in check_safetensors(path, name).items():
            if key in expected and isinstance(entry, dict) and tuple(entry.get("shape", ())) != tuple(expected[key]):
                raise _broken(name, path, f"{component_folder.name}/{path.name} holds {key} with shape "
                              f"{list(entry['shape'])}, but {component_folder.name}/config.json builds "
                              f"{list(expected[key])}: the config and the weights come from different models",
                              "Download the model again (snapshot_download), or restore the matching config.json."
                              " Do not pass ignore_mismatched_sizes: it would load random weights there.")


def check_component(folder: Path, component: str, spec: list, name: str = "model_id") -> None:
    """One model_index.json entry: its folder exists, holds a config, and its weights (if any) are sane."""
    sub = folder / component
    if not sub.is_dir():
        raise _broken(name, folder, f"model_index.json lists {component!r} ({spec[1]}) but {component}/ is missing",
                      f"Download the whole pipeline (snapshot_download), or pass {component}=None to leave it out.")
    configs = [sub / file for file in CONFIG_FILES if (sub / file).is_file()]
    if not configs:
        raise _broken(name, sub, f"{component}/ has no config file ({', '.join(CONFIG_FILES[:3])}, ...)",
                      "Download the model again; save_pretrained writes one for every component.")
    for config in (c for c in configs if c.suffix == ".json" and c.name != "vocab.json"):
        read_json_object(config, name)
    if (sub / "config.json").is_file():
        weights = [p for p in sub.iterdir() if p.suffix in (".safetensors", ".bin") or p.name.endswith(".index.json")]
        if not weights:
            raise _broken(name, sub, f"{component}/ has a config.json but no weights (*.safetensors, *.bin)",
                          "The download is incomplete: run snapshot_download again for this model.")
        for weight in (w for w in weights if w.suffix == ".safetensors"):
            check_safetensors(weight, name)


@cache
def _diffusers_names() -> str:
    return Path(spec.origin).read_text() if (spec := importlib.util.find_spec("diffusers")) and spec.origin else ""


def diffusers_exports(class_name: str) -> bool:
    """Whether the installed diffusers exports `class_name`, read from its lazy import table without importing it."""
    return not _diffusers_names() or f'"{class_name}"' in _diffusers_names()


def check_pipeline_class(folder: str | Path, name: str = "model_id") -> None:
    """The folder's pipeline class is one the installed diffusers exports (run after the pins are installed)."""
    index_path = Path(folder).expanduser() / "model_index.json"
    pipeline_class = read_json_object(index_path, name).get("_class_name")
    if isinstance(pipeline_class, str) and not diffusers_exports(pipeline_class):
        raise _broken(name, index_path, f"model_index.json names the pipeline class {pipeline_class!r}, which the "
                      "installed diffusers does not have", "Check the spelling against the model card, or upgrade "
                      "the kit (a newer diffusers may have it); a custom class is written [\"module\", \"Class\"].")


def check_pipeline_folder(folder: str | Path, name: str = "model_id") -> dict:
    """Check a pipeline folder's model_index.json and every component it names; returns the parsed index."""
    folder = Path(folder).expanduser()
    index_path = folder / "model_index.json"
    if not index_path.is_file():
        raise LocalPathNotFoundError("the folder has no model_index.json", name=name, value=str(folder),
                                     fix="Point it at the folder that save_pretrained or snapshot_download wrote.")
    index = read_json_object(index_path, name)
    if "_class_name" not in index:
        raise _broken(name, index_path, "model_index.json has no _class_name (the pipeline class)",
                      "Download the model again, or add the pipeline's class name.")
    for component, spec in index.items():
        if component.startswith("_") or not isinstance(spec, list):
            continue  # diffusers reads the others as pipeline config values (e.g. requires_safety_checker)
        if len(spec) != 2:
            raise _broken(name, index_path, f"model_index.json entry {component!r} is {spec!r}, not [library, Class]",
                          "Each component entry is a two-item list, e.g. [\"diffusers\", \"AutoencoderKL\"].")
        if spec[1] is not None:
            check_component(folder, component, spec, name)
    return index


IMAGE_CONDITIONED = re.compile(r"Img2Img|Inpaint|ImageToImage|ImageToVideo|VideoToVideo|Depth2Img|Upscale|"
                               r"InstructPix2Pix|ImageVariation|ImageEdit")  # not ModelEditing: prompt-only


def refuse_image_conditioned(index: dict, name: str, value) -> None:
    """Refuse a folder whose pipeline needs an input image where the notebook starts from a prompt alone."""
    if isinstance(pipeline_class := index.get("_class_name"), str) and IMAGE_CONDITIONED.search(pipeline_class):
        raise InvalidParameterError(name, value, f"holds a {pipeline_class}, which needs an input image; this notebook "
                                    "starts from a prompt", "Pass the text-to-image (or text-to-video) folder of that "
                                    "model; the notebook builds the image-conditioned variants from it with from_pipe.")


def refuse_single_file(path: Path, name: str = "model_id") -> None:
    """A checkpoint file given where a pipeline folder or Hub id is expected: say how to load it."""
    if path.is_file() and path.suffix in (".safetensors", ".ckpt", ".bin", ".pt", ".gguf"):
        raise InvalidParameterError(name, str(path), "is a single-file checkpoint, not a pipeline folder or Hub id",
                                    "Load it with the family's class, e.g. StableDiffusionXLPipeline.from_single_file("
                                    "path), or convert it once with save_pretrained(folder) and pass that folder.")
