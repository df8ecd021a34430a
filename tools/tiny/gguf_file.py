"""Write a pipeline's denoiser (unet or transformer) as a GGUF file, with the `gguf` package.

The tensors keep diffusers' own names, so diffusers' `from_single_file` finds the keys already in its
format and loads them as they are (`_should_convert_state_dict_to_diffusers` is False), whatever the
architecture. 2-D weights whose rows split into whole blocks are quantized (Q8_0 or Q4_0, the types
gguf-py can write); everything else is stored as F32, as real GGUF files keep norms and biases.
This is the offline stand-in for a community GGUF file (city96/*-gguf on the Hub).
"""

from __future__ import annotations

import json
import os
from pathlib import Path

DENOISERS = ("transformer", "unet")


def write_denoiser_gguf(pipeline_folder: str | Path, out_path: str | Path, quant_type: str = "Q8_0") -> Path:
    """Write `pipeline_folder`'s denoiser weights to `out_path` (atomically) and return it."""
    import gguf
    import numpy as np
    from safetensors.numpy import load_file

    folder = Path(pipeline_folder)
    index = json.loads((folder / "model_index.json").read_text())
    name = next(n for n in DENOISERS if isinstance(index.get(n), list))
    weights = sorted((folder / name).glob("*.safetensors"))
    if not weights:
        raise FileNotFoundError(f"No safetensors weights in {folder / name}; build the pipeline with save_pretrained.")
    state = {}
    for file in weights:
        state.update(load_file(file))
    qtype = gguf.GGMLQuantizationType[quant_type]
    block_size, _ = gguf.GGML_QUANT_SIZES[qtype]
    out_path = Path(out_path)
    temp = out_path.with_name(f".{out_path.name}.tmp")
    writer = gguf.GGUFWriter(str(temp), arch=index["_class_name"])
    for key in sorted(state):
        array = state[key].astype(np.float32)
        if array.ndim == 2 and array.shape[-1] % block_size == 0:
            writer.add_tensor(key, gguf.quants.quantize(array, qtype), raw_dtype=qtype)
        else:
            writer.add_tensor(key, array)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    os.replace(temp, out_path)
    return out_path
