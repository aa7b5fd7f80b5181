"""Model code: SAM parts in the official layout, preference heads, builders and checkpoint I/O."""

from .aespa_model import AESPAModel, Decoded, Prompts, aespa_config
from .build import (
    CHECKPOINT_FORMAT,
    ENCODER_NAMES,
    ENCODERS,
    build_model,
    build_sam,
    build_sam_from_config,
    encoder_of_shape,
    encoder_of_state,
    load_model_weights,
    load_sam_checkpoint,
    sam_config,
)
from .checkpoint import CheckpointError, LoadReport, load_weights, read_checkpoint, unwrap_state_dict
from .preference import FUSION_LAYOUTS, mixture_latent, responsibilities
from .sam import Sam
from .session_memory import MEMORY_KINDS, STYLE_CONTRAST_WEIGHT, mean_memory, style_contrast

__all__ = [
    "AESPAModel",
    "Decoded",
    "Prompts",
    "aespa_config",
    "CHECKPOINT_FORMAT",
    "ENCODER_NAMES",
    "ENCODERS",
    "encoder_of_shape",
    "encoder_of_state",
    "build_model",
    "build_sam",
    "build_sam_from_config",
    "load_model_weights",
    "load_sam_checkpoint",
    "sam_config",
    "CheckpointError",
    "LoadReport",
    "load_weights",
    "read_checkpoint",
    "unwrap_state_dict",
    "FUSION_LAYOUTS",
    "MEMORY_KINDS",
    "mean_memory",
    "style_contrast",
    "STYLE_CONTRAST_WEIGHT",
    "mixture_latent",
    "responsibilities",
    "Sam",
]
