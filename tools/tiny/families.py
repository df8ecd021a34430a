"""Tiny random-weight pipelines of more diffusers families, for the family matrix (`make families`).

Each builder returns an in-memory pipeline with its family's real wiring (component classes, text encoder
kind, VAE factors, patching) at toy widths; `build_families` saves them with `save_pretrained` so they load
back through the plain `DiffusionPipeline.from_pretrained`. Weights are seeded, so a seed gives the same model.
"""

from __future__ import annotations

from .pipelines import _seeded, tiny_clip_text_encoder, tiny_vae
from .tokenizers import PROMPT_WORDS, build_clip_tokenizer, build_t5_tokenizer, clip_vocab_and_merges


def tiny_t5_encoder(tokenizer, seed: int = 0, d_model: int = 32):
    """A two-layer T5EncoderModel (the text encoder of SD3, FLUX, PixArt, Kandinsky 3, CogVideoX, LTX, Mochi)."""
    from transformers import T5Config, T5EncoderModel

    config = T5Config(vocab_size=len(tokenizer), d_model=d_model, d_kv=8, d_ff=37, num_layers=2, num_heads=4,
                      relative_attention_num_buckets=8, pad_token_id=tokenizer.pad_token_id,
                      eos_token_id=tokenizer.eos_token_id, decoder_start_token_id=0)
    return _seeded(seed, lambda: T5EncoderModel(config).eval())


def build_gemma_tokenizer():
    """A Gemma-layout tokenizer (byte-level BPE, <pad>=0 <eos>=1 <bos>=2 <unk>=3) from the prompt words, offline."""
    from transformers import GemmaTokenizer

    vocab, merges = clip_vocab_and_merges(PROMPT_WORDS)
    specials = ["<pad>", "<eos>", "<bos>", "<unk>", "<mask>", "<start_of_turn>", "<end_of_turn>"]
    vocab = {token: i for i, token in enumerate(specials + [t for t in vocab if t not in specials])}
    return GemmaTokenizer(vocab=vocab, merges=[tuple(m.split()) if isinstance(m, str) else tuple(m) for m in merges],
                          model_max_length=300)


def tiny_gemma2(tokenizer, seed: int = 0, hidden: int = 16):
    """Gemma2Model, two layers (the text encoder of Sana and Lumina2)."""
    from transformers import Gemma2Config, Gemma2Model

    config = Gemma2Config(vocab_size=len(tokenizer), hidden_size=hidden, intermediate_size=32, num_hidden_layers=2,
                          num_attention_heads=2, num_key_value_heads=1, head_dim=8, pad_token_id=0, eos_token_id=1,
                          bos_token_id=2, max_position_embeddings=512)
    return _seeded(seed, lambda: Gemma2Model(config).eval())


def _flow_vae(seed: int, latent_channels: int = 4, shift: float | None = 0.0, blocks: int = 2):
    """An AutoencoderKL with a shift factor (flow-matching families scale and shift latents); `blocks` levels give
    a spatial factor of 2 ** (blocks - 1) (4 levels: the real factor 8, which Lumina2 assumes)."""
    from diffusers import AutoencoderKL

    return _seeded(seed, lambda: AutoencoderKL(
        block_out_channels=[32, 64] if blocks == 2 else [8] * blocks, in_channels=3, out_channels=3,
        latent_channels=latent_channels, down_block_types=["DownEncoderBlock2D"] * blocks,
        up_block_types=["UpDecoderBlock2D"] * blocks, sample_size=32, norm_num_groups=32 if blocks == 2 else 4,
        shift_factor=shift, scaling_factor=1.0, use_quant_conv=False, use_post_quant_conv=False,
    ))


def tiny_sd3(seed: int = 0):
    """Stable Diffusion 3 wiring: two CLIP encoders with projection, a T5 encoder, the MMDiT transformer."""
    from diffusers import FlowMatchEulerDiscreteScheduler, SD3Transformer2DModel, StableDiffusion3Pipeline

    tokenizer, t5_tokenizer = build_clip_tokenizer(), build_t5_tokenizer(model_max_length=77)
    transformer = _seeded(seed, lambda: SD3Transformer2DModel(
        sample_size=16, patch_size=2, in_channels=16, num_layers=2, attention_head_dim=8, num_attention_heads=4,
        caption_projection_dim=32, joint_attention_dim=64, pooled_projection_dim=64, out_channels=16,
    ))  # 16 latent channels, as the real SD3 VAE: its inpaint pipeline checks for them
    return StableDiffusion3Pipeline(
        transformer=transformer, scheduler=FlowMatchEulerDiscreteScheduler(), vae=_flow_vae(seed, latent_channels=16),
        text_encoder=tiny_clip_text_encoder(tokenizer, seed, with_projection=True), tokenizer=tokenizer,
        text_encoder_2=tiny_clip_text_encoder(tokenizer, seed + 1, with_projection=True),
        tokenizer_2=build_clip_tokenizer(),
        text_encoder_3=tiny_t5_encoder(t5_tokenizer, seed, d_model=64), tokenizer_3=t5_tokenizer,
    )


def tiny_flux(seed: int = 0):
    """FLUX.1 wiring: CLIP (pooled) + T5, a double/single-stream transformer on 2x2-packed latents."""
    from diffusers import FlowMatchEulerDiscreteScheduler, FluxPipeline, FluxTransformer2DModel

    tokenizer, t5_tokenizer = build_clip_tokenizer(), build_t5_tokenizer(model_max_length=77)
    transformer = _seeded(seed, lambda: FluxTransformer2DModel(
        patch_size=1, in_channels=16, num_layers=1, num_single_layers=1, attention_head_dim=16,
        num_attention_heads=2, joint_attention_dim=32, pooled_projection_dim=32, axes_dims_rope=(4, 4, 8),
        guidance_embeds=True,
    ))
    return FluxPipeline(
        transformer=transformer, scheduler=FlowMatchEulerDiscreteScheduler(), vae=_flow_vae(seed),
        text_encoder=tiny_clip_text_encoder(tokenizer, seed), tokenizer=tokenizer,
        text_encoder_2=tiny_t5_encoder(t5_tokenizer, seed), tokenizer_2=t5_tokenizer,
    )


def tiny_pixart_sigma(seed: int = 0):
    """PixArt-Sigma wiring: a T5 encoder and the PixArt DiT (adaLN-single), DPM-Solver."""
    from diffusers import DPMSolverMultistepScheduler, PixArtSigmaPipeline, PixArtTransformer2DModel

    t5_tokenizer = build_t5_tokenizer(model_max_length=300)
    transformer = _seeded(seed, lambda: PixArtTransformer2DModel(
        sample_size=16, num_layers=2, patch_size=2, attention_head_dim=8, num_attention_heads=3, caption_channels=32,
        in_channels=4, cross_attention_dim=24, out_channels=8, attention_bias=True, activation_fn="gelu-approximate",
        num_embeds_ada_norm=1000, norm_type="ada_norm_single", norm_elementwise_affine=False, norm_eps=1e-6,
    ))
    return PixArtSigmaPipeline(tokenizer=t5_tokenizer, text_encoder=tiny_t5_encoder(t5_tokenizer, seed),
                               vae=tiny_vae(seed), transformer=transformer, scheduler=DPMSolverMultistepScheduler())


def tiny_sana(seed: int = 0):
    """Sana wiring: a Gemma2 text encoder, the linear-attention Sana transformer, the deep-compression VAE."""
    from diffusers import AutoencoderDC, FlowMatchEulerDiscreteScheduler, SanaPipeline, SanaTransformer2DModel

    tokenizer = build_gemma_tokenizer()
    transformer = _seeded(seed, lambda: SanaTransformer2DModel(
        patch_size=1, in_channels=4, out_channels=4, num_layers=2, num_attention_heads=2, attention_head_dim=4,
        num_cross_attention_heads=2, cross_attention_head_dim=4, cross_attention_dim=8, caption_channels=16,
        sample_size=32,
    ))
    vae = _seeded(seed, lambda: AutoencoderDC(
        in_channels=3, latent_channels=4, attention_head_dim=2,
        encoder_block_types=("ResBlock", "EfficientViTBlock"), decoder_block_types=("ResBlock", "EfficientViTBlock"),
        encoder_block_out_channels=(8, 8), decoder_block_out_channels=(8, 8), encoder_qkv_multiscales=((), (5,)),
        decoder_qkv_multiscales=((), (5,)), encoder_layers_per_block=(1, 1), decoder_layers_per_block=[1, 1],
        downsample_block_type="conv", upsample_block_type="interpolate", decoder_norm_types="rms_norm",
        decoder_act_fns="silu", scaling_factor=0.41407,
    ))
    return SanaPipeline(tokenizer=tokenizer, text_encoder=tiny_gemma2(tokenizer, seed), vae=vae,
                        transformer=transformer, scheduler=FlowMatchEulerDiscreteScheduler(shift=7.0))


def tiny_lumina2(seed: int = 0):
    """Lumina-Image 2.0 wiring: a Gemma2 text encoder, the Lumina2 next-DiT, a shifted AutoencoderKL."""
    from diffusers import FlowMatchEulerDiscreteScheduler, Lumina2Pipeline, Lumina2Transformer2DModel

    tokenizer = build_gemma_tokenizer()
    transformer = _seeded(seed, lambda: Lumina2Transformer2DModel(
        sample_size=4, patch_size=2, in_channels=4, hidden_size=8, num_layers=2, num_attention_heads=1,
        num_kv_heads=1, multiple_of=16, ffn_dim_multiplier=None, norm_eps=1e-5, scaling_factor=1.0,
        axes_dim_rope=(4, 2, 2), cap_feat_dim=16,
    ))
    return Lumina2Pipeline(transformer=transformer, scheduler=FlowMatchEulerDiscreteScheduler(),
                           vae=_flow_vae(seed, blocks=4), text_encoder=tiny_gemma2(tokenizer, seed),
                           tokenizer=tokenizer)


def tiny_kandinsky3(seed: int = 0):
    """Kandinsky 3 wiring: a T5 encoder, the Kandinsky3 UNet, and a MoVQ decoder as `movq` (there is no `vae`)."""
    from diffusers import DDPMScheduler, Kandinsky3Pipeline, Kandinsky3UNet, VQModel

    t5_tokenizer = build_t5_tokenizer(model_max_length=128)
    unet = _seeded(seed, lambda: Kandinsky3UNet(
        in_channels=4, time_embedding_dim=4, groups=2, attention_head_dim=4, layers_per_block=3,
        block_out_channels=(32, 64), cross_attention_dim=4, encoder_hid_dim=32,
    ))
    movq = _seeded(seed, lambda: VQModel(  # four levels: the real spatial factor 8, which the pipeline assumes
        block_out_channels=[32, 32, 32, 32], down_block_types=["DownEncoderBlock2D"] * 3 + ["AttnDownEncoderBlock2D"],
        in_channels=3, latent_channels=4, layers_per_block=1, norm_num_groups=8, norm_type="spatial",
        num_vq_embeddings=12, out_channels=3, up_block_types=["AttnUpDecoderBlock2D"] + ["UpDecoderBlock2D"] * 3,
        vq_embed_dim=4,
    ))
    scheduler = DDPMScheduler(beta_start=0.00085, beta_end=0.012, steps_offset=1, beta_schedule="squaredcos_cap_v2",
                              clip_sample=True, thresholding=False)
    return Kandinsky3Pipeline(unet=unet, scheduler=scheduler, movq=movq, tokenizer=t5_tokenizer,
                              text_encoder=tiny_t5_encoder(t5_tokenizer, seed))


def tiny_cogvideox(seed: int = 0):
    """CogVideoX wiring: a T5 encoder, the CogVideoX 3D transformer, its causal video VAE (4x time, 8x space)."""
    from diffusers import AutoencoderKLCogVideoX, CogVideoXDDIMScheduler, CogVideoXPipeline, CogVideoXTransformer3DModel

    t5_tokenizer = build_t5_tokenizer(model_max_length=226)
    transformer = _seeded(seed, lambda: CogVideoXTransformer3DModel(
        num_attention_heads=4, attention_head_dim=8, in_channels=4, out_channels=4, time_embed_dim=2,
        text_embed_dim=32, num_layers=1, sample_width=4, sample_height=4, sample_frames=9, patch_size=2,
        temporal_compression_ratio=4, max_text_seq_length=226,
    ))
    vae = _seeded(seed, lambda: AutoencoderKLCogVideoX(
        in_channels=3, out_channels=3, down_block_types=("CogVideoXDownBlock3D",) * 4,
        up_block_types=("CogVideoXUpBlock3D",) * 4, block_out_channels=(8, 8, 8, 8), latent_channels=4,
        layers_per_block=1, norm_num_groups=2, temporal_compression_ratio=4,
    ))
    return CogVideoXPipeline(tokenizer=t5_tokenizer, text_encoder=tiny_t5_encoder(t5_tokenizer, seed), vae=vae,
                             transformer=transformer, scheduler=CogVideoXDDIMScheduler())


def _ltx_parts(seed: int):
    from diffusers import AutoencoderKLLTXVideo, FlowMatchEulerDiscreteScheduler, LTXVideoTransformer3DModel

    t5_tokenizer = build_t5_tokenizer(model_max_length=128)
    transformer = _seeded(seed, lambda: LTXVideoTransformer3DModel(
        in_channels=8, out_channels=8, patch_size=1, patch_size_t=1, num_attention_heads=4, attention_head_dim=8,
        cross_attention_dim=32, num_layers=1, caption_channels=32,
    ))
    vae = _seeded(seed, lambda: AutoencoderKLLTXVideo(
        in_channels=3, out_channels=3, latent_channels=8, block_out_channels=(8, 8, 8, 8),
        decoder_block_out_channels=(8, 8, 8, 8), layers_per_block=(1, 1, 1, 1, 1),
        decoder_layers_per_block=(1, 1, 1, 1, 1), spatio_temporal_scaling=(True, True, False, False),
        decoder_spatio_temporal_scaling=(True, True, False, False), decoder_inject_noise=(False,) * 5,
        upsample_residual=(False,) * 4, upsample_factor=(1,) * 4, timestep_conditioning=False, patch_size=1,
        patch_size_t=1, encoder_causal=True, decoder_causal=False,
    ))
    return dict(transformer=transformer, vae=vae, scheduler=FlowMatchEulerDiscreteScheduler(),
                text_encoder=tiny_t5_encoder(t5_tokenizer, seed), tokenizer=t5_tokenizer)


def tiny_ltx_video(seed: int = 0):
    """LTX-Video text-to-video wiring: a T5 encoder, the LTX transformer, its VAE (factors 4 and 4 at this size)."""
    from diffusers import LTXPipeline

    return LTXPipeline(**_ltx_parts(seed))


def tiny_ltx_i2v(seed: int = 0):
    """LTX-Video image-to-video: the same components, conditioned on the first frame's latents."""
    from diffusers import LTXImageToVideoPipeline

    return LTXImageToVideoPipeline(**_ltx_parts(seed))


def tiny_mochi(seed: int = 0):
    """Mochi 1 wiring: a T5 encoder, the asymmetric Mochi transformer, its VAE (6x time, 8x space)."""
    from diffusers import AutoencoderKLMochi, FlowMatchEulerDiscreteScheduler, MochiPipeline, MochiTransformer3DModel

    t5_tokenizer = build_t5_tokenizer(model_max_length=256)
    transformer = _seeded(seed, lambda: MochiTransformer3DModel(
        patch_size=2, num_attention_heads=2, attention_head_dim=8, num_layers=2, pooled_projection_dim=16,
        in_channels=12, out_channels=None, qk_norm="rms_norm", text_embed_dim=32, time_embed_dim=4,
        activation_fn="swiglu", max_sequence_length=256,
    ))
    vae = _seeded(seed, lambda: AutoencoderKLMochi(
        latent_channels=12, out_channels=3, encoder_block_out_channels=(32, 32, 32, 32),
        decoder_block_out_channels=(32, 32, 32, 32), layers_per_block=(1, 1, 1, 1, 1),
    ))
    return MochiPipeline(scheduler=FlowMatchEulerDiscreteScheduler(), vae=vae,
                         text_encoder=tiny_t5_encoder(t5_tokenizer, seed), tokenizer=t5_tokenizer,
                         transformer=transformer)
