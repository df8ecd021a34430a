"""Tiny random-weight pipelines with the real architectures' wiring.

Each builder returns an in-memory diffusers pipeline; `build_all` saves them with
`save_pretrained` so they load back through the plain `DiffusionPipeline.from_pretrained`.
Weights are seeded per component, so the same seed gives the same weights.
"""

from __future__ import annotations

import torch

from .tokenizers import build_clip_tokenizer, build_qwen_tokenizer, build_t5_tokenizer


def _seeded(seed: int, factory):
    torch.manual_seed(seed)
    return factory()


def tiny_vae(seed: int = 0, force_upcast: bool = True):
    """A two-block AutoencoderKL (latent scale factor 2), the SD/SDXL VAE shape."""
    from diffusers import AutoencoderKL

    return _seeded(seed, lambda: AutoencoderKL(
        block_out_channels=[32, 64],
        in_channels=3,
        out_channels=3,
        down_block_types=["DownEncoderBlock2D", "DownEncoderBlock2D"],
        up_block_types=["UpDecoderBlock2D", "UpDecoderBlock2D"],
        latent_channels=4,
        sample_size=64,
        force_upcast=force_upcast,
    ))


def tiny_unet(seed: int = 0, **family_options):
    """A two-level UNet2DConditionModel (one cross-attention level), the SD/SDXL denoiser shape."""
    from diffusers import UNet2DConditionModel

    return _seeded(seed, lambda: UNet2DConditionModel(
        block_out_channels=(32, 64),
        layers_per_block=1,
        sample_size=32,
        in_channels=4,
        out_channels=4,
        down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"),
        up_block_types=("CrossAttnUpBlock2D", "UpBlock2D"),
        **family_options,
    ))


def tiny_clip_text_encoder(tokenizer, seed: int = 0, with_projection: bool = False):
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTextModelWithProjection

    config = CLIPTextConfig(
        vocab_size=len(tokenizer),
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
        hidden_size=32,
        intermediate_size=37,
        num_attention_heads=4,
        num_hidden_layers=2,
        max_position_embeddings=tokenizer.model_max_length,
        projection_dim=32,
    )
    model_class = CLIPTextModelWithProjection if with_projection else CLIPTextModel
    return _seeded(seed, lambda: model_class(config).eval())


def tiny_safety_checker(seed: int = 0):
    """The SD 1.5 safety checker (a CLIP vision tower + concept embeddings), tiny."""
    from diffusers.pipelines.stable_diffusion.safety_checker import StableDiffusionSafetyChecker
    from transformers import CLIPConfig, CLIPImageProcessor

    config = CLIPConfig(
        text_config={"hidden_size": 32, "intermediate_size": 37, "num_attention_heads": 4, "num_hidden_layers": 2},
        vision_config={
            "hidden_size": 32, "intermediate_size": 37, "num_attention_heads": 4, "num_hidden_layers": 2,
            "image_size": 32, "patch_size": 8,
        },
        projection_dim=32,
    )
    checker = _seeded(seed, lambda: StableDiffusionSafetyChecker(config).eval())
    processor = CLIPImageProcessor(crop_size={"height": 32, "width": 32}, size={"shortest_edge": 32})
    return checker, processor


def tiny_stable_diffusion(seed: int = 0, with_safety_checker: bool = False):
    """Stable Diffusion 1.x wiring: CLIP text encoder, cross-attention UNet, AutoencoderKL."""
    from diffusers import PNDMScheduler, StableDiffusionPipeline

    tokenizer = build_clip_tokenizer()
    unet = tiny_unet(seed, cross_attention_dim=32)
    scheduler = PNDMScheduler(
        skip_prk_steps=True, beta_schedule="scaled_linear", beta_start=0.00085, beta_end=0.012, steps_offset=1
    )
    safety_checker, feature_extractor = tiny_safety_checker(seed) if with_safety_checker else (None, None)
    return StableDiffusionPipeline(
        vae=tiny_vae(seed),
        text_encoder=tiny_clip_text_encoder(tokenizer, seed),
        tokenizer=tokenizer,
        unet=unet,
        scheduler=scheduler,
        safety_checker=safety_checker,
        feature_extractor=feature_extractor,
        requires_safety_checker=with_safety_checker,
    )


def tiny_stable_diffusion_xl(seed: int = 0):
    """SDXL wiring: two CLIP encoders, a UNet with text_time added conditioning."""
    from diffusers import EulerDiscreteScheduler, StableDiffusionXLPipeline

    tokenizer = build_clip_tokenizer()
    text_encoder = tiny_clip_text_encoder(tokenizer, seed)
    text_encoder_2 = tiny_clip_text_encoder(tokenizer, seed + 1, with_projection=True)
    addition_time_embed_dim = 8
    unet = tiny_unet(
        seed,
        attention_head_dim=(2, 4),
        use_linear_projection=True,
        addition_embed_type="text_time",
        addition_time_embed_dim=addition_time_embed_dim,
        transformer_layers_per_block=(1, 2),
        projection_class_embeddings_input_dim=6 * addition_time_embed_dim + text_encoder_2.config.projection_dim,
        cross_attention_dim=text_encoder.config.hidden_size + text_encoder_2.config.hidden_size,
    )
    scheduler = EulerDiscreteScheduler(
        beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear", timestep_spacing="leading", steps_offset=1
    )
    return StableDiffusionXLPipeline(
        vae=tiny_vae(seed),
        text_encoder=text_encoder,
        text_encoder_2=text_encoder_2,
        tokenizer=tokenizer,
        tokenizer_2=build_clip_tokenizer(),
        unet=unet,
        scheduler=scheduler,
        add_watermarker=False,
    )


def tiny_qwen_image(seed: int = 0):
    """Qwen-Image wiring: Qwen2.5-VL text encoder, MMDiT transformer, Qwen-Image VAE."""
    from diffusers import (
        AutoencoderKLQwenImage,
        FlowMatchEulerDiscreteScheduler,
        QwenImagePipeline,
        QwenImageTransformer2DModel,
    )
    from transformers import Qwen2_5_VLConfig, Qwen2_5_VLForConditionalGeneration

    tokenizer = build_qwen_tokenizer()
    text_hidden, z_dim = 16, 4
    transformer = _seeded(seed, lambda: QwenImageTransformer2DModel(
        patch_size=2,
        in_channels=4 * z_dim,
        out_channels=z_dim,
        num_layers=2,
        attention_head_dim=16,
        num_attention_heads=3,
        joint_attention_dim=text_hidden,
        guidance_embeds=False,
        axes_dims_rope=(8, 4, 4),
    ))
    vae = _seeded(seed, lambda: AutoencoderKLQwenImage(
        base_dim=z_dim * 6,
        z_dim=z_dim,
        dim_mult=[1, 2, 4],
        num_res_blocks=1,
        temperal_downsample=[False, True],
        latents_mean=[0.0] * z_dim,
        latents_std=[1.0] * z_dim,
    ))
    token_id = tokenizer.convert_tokens_to_ids
    config = Qwen2_5_VLConfig(
        text_config={
            "hidden_size": text_hidden,
            "intermediate_size": 16,
            "num_hidden_layers": 2,
            "num_attention_heads": 2,
            "num_key_value_heads": 2,
            "vocab_size": len(tokenizer),
            "bos_token_id": None,
            "eos_token_id": tokenizer.eos_token_id,
            "pad_token_id": tokenizer.pad_token_id,
            "rope_scaling": {"mrope_section": [1, 1, 2], "rope_type": "default", "type": "default"},
            "rope_theta": 1000000.0,
        },
        vision_config={"depth": 2, "hidden_size": 16, "intermediate_size": 16, "num_heads": 2, "out_hidden_size": 16},
        hidden_size=text_hidden,
        vocab_size=len(tokenizer),
        vision_start_token_id=token_id("<|vision_start|>"),
        vision_end_token_id=token_id("<|vision_end|>"),
        vision_token_id=token_id("<|image_pad|>"),
        image_token_id=token_id("<|image_pad|>"),
        video_token_id=token_id("<|video_pad|>"),
    )
    text_encoder = _seeded(seed, lambda: Qwen2_5_VLForConditionalGeneration(config).eval())
    return QwenImagePipeline(
        scheduler=FlowMatchEulerDiscreteScheduler(),
        vae=vae,
        text_encoder=text_encoder,
        tokenizer=tokenizer,
        transformer=transformer,
    )


def tiny_umt5_encoder(tokenizer, seed: int = 0):
    """The Wan text encoder's class (UMT5EncoderModel), two layers, d_model 32."""
    from transformers import UMT5Config, UMT5EncoderModel

    config = UMT5Config(
        vocab_size=len(tokenizer), d_model=32, d_kv=8, d_ff=37, num_layers=2, num_heads=4,
        relative_attention_num_buckets=8, feed_forward_proj="gated-gelu",
        pad_token_id=tokenizer.pad_token_id, eos_token_id=tokenizer.eos_token_id, decoder_start_token_id=0,
    )
    return _seeded(seed, lambda: UMT5EncoderModel(config).eval())


def tiny_wan_vae(seed: int = 0):
    """AutoencoderKLWan with the real scale factors (4 in time, 8 in space) and z_dim 16, but tiny widths."""
    from diffusers import AutoencoderKLWan

    return _seeded(seed, lambda: AutoencoderKLWan(
        base_dim=3, z_dim=16, dim_mult=[1, 1, 1, 1], num_res_blocks=1, temperal_downsample=[False, True, True],
    ))


def tiny_wan_transformer(seed: int = 0, in_channels: int = 16, text_dim: int = 32):
    """WanTransformer3DModel with the real patching (1, 2, 2) and qk norm, two layers of two heads."""
    from diffusers import WanTransformer3DModel

    return _seeded(seed, lambda: WanTransformer3DModel(
        patch_size=(1, 2, 2), num_attention_heads=2, attention_head_dim=12, in_channels=in_channels,
        out_channels=16, text_dim=text_dim, freq_dim=256, ffn_dim=32, num_layers=2, cross_attn_norm=True,
        qk_norm="rms_norm_across_heads", rope_max_seq_len=32,
    ))


def _wan_scheduler(flow_shift: float = 3.0):
    """The scheduler diffusers' Wan conversion script ships: UniPC on flow sigmas."""
    from diffusers import UniPCMultistepScheduler

    return UniPCMultistepScheduler(
        prediction_type="flow_prediction", use_flow_sigmas=True, num_train_timesteps=1000, flow_shift=flow_shift,
    )


def tiny_wan_t2v(seed: int = 0):
    """Wan 2.1 text-to-video wiring (Wan-AI/Wan2.1-T2V-1.3B-Diffusers): UMT5 encoder, one transformer, Wan VAE."""
    from diffusers import WanPipeline

    tokenizer = build_t5_tokenizer()
    text_encoder = tiny_umt5_encoder(tokenizer, seed)
    return WanPipeline(
        tokenizer=tokenizer,
        text_encoder=text_encoder,
        transformer=tiny_wan_transformer(seed, text_dim=text_encoder.config.d_model),
        vae=tiny_wan_vae(seed),
        scheduler=_wan_scheduler(),
    )


def tiny_wan_i2v(seed: int = 0):
    """Wan 2.2 image-to-video A14B wiring: two transformers (high noise, then low noise after boundary_ratio 0.9),
    36 input channels (16 noise + 4 mask + 16 image latents), and no CLIP image encoder (2.2 dropped it)."""
    from diffusers import WanImageToVideoPipeline

    tokenizer = build_t5_tokenizer()
    text_encoder = tiny_umt5_encoder(tokenizer, seed)
    channels = 16 + 4 + 16
    return WanImageToVideoPipeline(
        tokenizer=tokenizer,
        text_encoder=text_encoder,
        vae=tiny_wan_vae(seed),
        scheduler=_wan_scheduler(),
        transformer=tiny_wan_transformer(seed, in_channels=channels, text_dim=text_encoder.config.d_model),
        transformer_2=tiny_wan_transformer(seed + 1, in_channels=channels, text_dim=text_encoder.config.d_model),
        boundary_ratio=0.9,
    )
