"""Stable Diffusion with weighted prompts and prompts longer than CLIP's 77 tokens.

`(word:1.3)` multiplies the text-encoder output of that word's tokens by 1.3 (more attention to it),
`(word:0.7)` by 0.7; everything else has weight 1. The weights are applied to the encoder's output,
token by token, with no renormalisation, so the effect is exactly the stated factor.

A prompt longer than 75 tokens is split into chunks of 75, each encoded on its own between BOS and EOS
and concatenated: nothing is truncated. The UNet's cross-attention accepts any number of tokens.

Load it with `DiffusionPipeline.from_pretrained(model, custom_pipeline="community/kit_prompt_weighting.py",
trust_remote_code=True)` for any Stable Diffusion 1.x/2.x model.
"""

from __future__ import annotations

import re

import torch
from diffusers import StableDiffusionPipeline

WEIGHTED = re.compile(r"\(([^():]+):\s*([0-9]*\.?[0-9]+)\s*\)")


def parse_weighted_prompt(prompt: str) -> list[tuple[str, float]]:
    """'a (red:1.5) fox' -> [('a ', 1.0), ('red', 1.5), (' fox', 1.0)]."""
    pieces, position = [], 0
    for match in WEIGHTED.finditer(prompt):
        if match.start() > position:
            pieces.append((prompt[position:match.start()], 1.0))
        pieces.append((match.group(1), float(match.group(2))))
        position = match.end()
    if position < len(prompt):
        pieces.append((prompt[position:], 1.0))
    return [(text, weight) for text, weight in pieces if text.strip()]


class KitPromptWeightingPipeline(StableDiffusionPipeline):
    """StableDiffusionPipeline whose prompts take `(text:weight)` and any length."""

    def weighted_tokens(self, prompt: str) -> tuple[list[int], list[float]]:
        ids, weights = [], []
        for text, weight in parse_weighted_prompt(prompt):
            tokens = self.tokenizer(text, add_special_tokens=False, verbose=False).input_ids  # chunked below
            ids += tokens
            weights += [weight] * len(tokens)
        return ids, weights

    def encode_weighted(self, prompt: str, chunks: int | None = None) -> torch.Tensor:
        """Encoder output (1, 77 * chunks, hidden) with each token's row scaled by its weight."""
        ids, weights = self.weighted_tokens(prompt)
        window = self.tokenizer.model_max_length - 2
        chunks = max(chunks or 1, -(-len(ids) // window))
        bos, eos = self.tokenizer.bos_token_id, self.tokenizer.eos_token_id
        pad = self.tokenizer.pad_token_id if self.tokenizer.pad_token_id is not None else eos
        outputs = []
        for chunk in range(chunks):
            part = ids[chunk * window:(chunk + 1) * window]
            part_weights = weights[chunk * window:(chunk + 1) * window]
            padding = window - len(part)
            input_ids = torch.tensor([[bos] + part + [eos] + [pad] * padding], device=self.text_encoder.device)
            scale = torch.tensor([1.0] + part_weights + [1.0] * (padding + 1), device=self.text_encoder.device)
            hidden = self.text_encoder(input_ids)[0]
            outputs.append(hidden * scale.to(hidden.dtype)[None, :, None])
        return torch.cat(outputs, dim=1)

    def chunks_needed(self, prompt: str) -> int:
        window = self.tokenizer.model_max_length - 2
        return max(1, -(-len(self.weighted_tokens(prompt)[0]) // window))

    @torch.no_grad()
    def __call__(self, prompt: str | list[str] | None = None, negative_prompt: str | list[str] | None = None,
                 **kwargs):
        if prompt is None or "prompt_embeds" in kwargs:
            return super().__call__(prompt=prompt, negative_prompt=negative_prompt, **kwargs)
        prompts = [prompt] if isinstance(prompt, str) else list(prompt)
        negatives = negative_prompt if isinstance(negative_prompt, list) else [negative_prompt or ""] * len(prompts)
        chunks = max(self.chunks_needed(p) for p in prompts + negatives)
        prompt_embeds = torch.cat([self.encode_weighted(p, chunks) for p in prompts])
        negative_embeds = torch.cat([self.encode_weighted(n, chunks) for n in negatives])
        return super().__call__(prompt_embeds=prompt_embeds, negative_prompt_embeds=negative_embeds, **kwargs)
