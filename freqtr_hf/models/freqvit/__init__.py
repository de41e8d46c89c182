"""FreqViT: a ViT whose blocks reduce tokens (Lee et al., NeurIPS 2025).

The modules of this folder are exactly the code a saved FreqViT carries: `save_pretrained` copies them beside the
weights, so that the folder loads with `trust_remote_code=True` where freqtr_hf is not installed. This file is not
among them. It imports nothing until a name is asked for, so that `methods` reads without torch; the first class
taken from here (or from `freqtr_hf`) registers FreqViT with transformers' Auto classes.
"""

import functools
import importlib

# public name -> the module of this folder that defines it
NAMES = {
    "FreqViTConfig": "configuration_freqvit",
    "FreqViTModel": "modeling_freqvit",
    "FreqViTForImageClassification": "modeling_freqvit",
    "FreqViTBackbone": "modeling_freqvit",
    "FreqViTPreTrainedModel": "modeling_freqvit",
    "TokenProvenance": "token_state",
    "TRAINING_FREE_FREQ": "methods",
}
__all__ = sorted(NAMES)


def __getattr__(name: str):
    if name not in NAMES:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    register_auto_classes()
    return getattr(importlib.import_module(f".{NAMES[name]}", __name__), name)


@functools.cache
def register_auto_classes() -> None:
    """AutoConfig, AutoModel, AutoModelForImageClassification, AutoBackbone and AutoImageProcessor find FreqViT by its
    model type, so that a saved FreqViT loads through them, and dense heads (UperNet, DPT) build a FreqViT backbone
    from its config, without remote code where freqtr_hf is installed."""
    from transformers import AutoBackbone, AutoConfig, AutoImageProcessor, AutoModel, AutoModelForImageClassification
    from transformers import ViTImageProcessorPil
    from transformers.utils import is_torchvision_available

    from .configuration_freqvit import FreqViTConfig
    from .modeling_freqvit import FreqViTBackbone, FreqViTForImageClassification, FreqViTModel

    AutoConfig.register(FreqViTConfig.model_type, FreqViTConfig, exist_ok=True)
    AutoModel.register(FreqViTConfig, FreqViTModel, exist_ok=True)
    AutoModelForImageClassification.register(FreqViTConfig, FreqViTForImageClassification, exist_ok=True)
    AutoBackbone.register(FreqViTConfig, FreqViTBackbone, exist_ok=True)
    # a FreqViT reads images as ViT does, so pipeline() finds its processor from the model alone
    processors = {"pil": ViTImageProcessorPil}
    if is_torchvision_available():
        from transformers import ViTImageProcessor

        processors["torchvision"] = ViTImageProcessor
    AutoImageProcessor.register(FreqViTConfig, image_processor_classes=processors, exist_ok=True)
