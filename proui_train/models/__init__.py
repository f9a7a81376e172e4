"""Pro-UIGAN networks: the progressive generator, patch discriminators and a torchvision-free VGG19."""
from .blocks import ConvNormAct, ResidualBlock, count_parameters, init_weights, norm_layer
from .discriminator import PatchDiscriminator, crop_patches, global_discriminator, local_discriminator
from .attention import CrossModalAttention, cross_modal_attention
from .plain import PlainProgressive
from .pro_uigan import (
    STAGE_LANDMARKS,
    FANPrior,
    LearnedPrior,
    ProUIGAN,
    ProUIGANConfig,
    ProUIStage,
    UpsampleBlock,
)
from .vgg import (
    PERCEPTUAL_LAYER,
    STYLE_LAYERS,
    VGGFeatureExtractor,
    load_vgg19_features,
    load_vgg19_state_dict,
    vgg19_features,
)

__all__ = [
    "PERCEPTUAL_LAYER",
    "STAGE_LANDMARKS",
    "STYLE_LAYERS",
    "ConvNormAct",
    "CrossModalAttention",
    "FANPrior",
    "LearnedPrior",
    "PatchDiscriminator",
    "PlainProgressive",
    "ProUIGAN",
    "ProUIGANConfig",
    "ProUIStage",
    "ResidualBlock",
    "UpsampleBlock",
    "VGGFeatureExtractor",
    "count_parameters",
    "cross_modal_attention",
    "crop_patches",
    "global_discriminator",
    "init_weights",
    "load_vgg19_features",
    "load_vgg19_state_dict",
    "local_discriminator",
    "norm_layer",
    "vgg19_features",
]
