"""Real model architectures, configs only (no weights), shipped with the kit: real-sized components offline, on the
`meta` device for planning or with random weights for benchmarks. Provenance: each SOURCE.md; counts: PARAMS.md."""

from __future__ import annotations

import json
from contextlib import contextmanager
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parent


def available() -> list[str]:
    """Hub ids whose configs ship with the kit."""
    return sorted(p.name.replace("--", "/", 1) for p in ROOT.iterdir() if p.is_dir() and not p.name.startswith("_"))


def folder(model_id: str) -> Path:
    path = ROOT / model_id.replace("/", "--", 1)
    if not path.is_dir():
        raise ValueError(f"No shipped architecture for {model_id!r}. Available: {', '.join(available())}.")
    return path


def model_index(model_id: str) -> dict:
    return json.loads((folder(model_id) / "model_index.json").read_text())


@contextmanager
def _default_dtype(dtype: torch.dtype):
    previous = torch.get_default_dtype()
    torch.set_default_dtype(dtype)
    try:
        yield
    finally:
        torch.set_default_dtype(previous)


def build_component(model_id: str, name: str, device: str = "meta", dtype: torch.dtype = torch.float32):
    """Instantiate one component from its shipped config on `device` (weights random, or none on meta); with
    `torch.device`, as accelerate's init_empty_weights breaks T5's tied embedding (PARAMS.md)."""
    library, class_name = model_index(model_id)[name]
    return build_from_config(library, class_name, folder(model_id) / name, device, dtype)


def build_from_config(library: str, class_name: str, directory: Path, device: str = "meta",
                      dtype: torch.dtype = torch.float32):
    """Instantiate `library.class_name` from the config in `directory` (any pipeline folder)."""
    from ..diffusers_logs import without_empty_fp32_notes
    with torch.device(device), _default_dtype(dtype), without_empty_fp32_notes():
        return instantiate(library, class_name, directory).to(dtype)  # transformers takes the config's dtype


def instantiate(library: str, class_name: str, directory: Path):
    """`library.class_name` from the config in `directory`, on whatever device and init context is active."""
    if class_name == "StableDiffusionSafetyChecker":
        from diffusers.pipelines.stable_diffusion.safety_checker import StableDiffusionSafetyChecker
        from transformers import CLIPConfig
        return StableDiffusionSafetyChecker(CLIPConfig.from_pretrained(directory))
    if library == "diffusers":
        import diffusers
        cls = getattr(diffusers, class_name)
        return cls.from_config(cls.load_config(directory))
    import transformers
    cls = getattr(transformers, class_name)
    return cls._from_config(transformers.AutoConfig.from_pretrained(directory))
