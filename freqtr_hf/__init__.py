"""freqtr-hf: frequency-aware token reduction for Vision Transformers, as Hugging Face model classes."""

__version__ = "0.2.0"

from transformers import AutoConfig, AutoImageProcessor, AutoModel, AutoModelForImageClassification
from transformers import ViTImageProcessorPil
from transformers.utils import is_torchvision_available

from .configuration_freqvit import TRAINING_FREE_FREQ, FreqViTConfig
from .macs import count_macs
from .modeling_freqvit import FreqViTForImageClassification, FreqViTModel, FreqViTPreTrainedModel, TokenProvenance

AutoConfig.register(FreqViTConfig.model_type, FreqViTConfig, exist_ok=True)
AutoModel.register(FreqViTConfig, FreqViTModel, exist_ok=True)
AutoModelForImageClassification.register(FreqViTConfig, FreqViTForImageClassification, exist_ok=True)
# a FreqViT reads images as ViT does, so pipeline() finds its processor from the model alone
processors = {"pil": ViTImageProcessorPil}
if is_torchvision_available():
    from transformers import ViTImageProcessor

    processors["torchvision"] = ViTImageProcessor
AutoImageProcessor.register(FreqViTConfig, image_processor_classes=processors, exist_ok=True)
# save_pretrained writes the modeling code and an auto_map, so the Hub copy loads with trust_remote_code=True
FreqViTConfig.register_for_auto_class()
FreqViTModel.register_for_auto_class("AutoModel")
FreqViTForImageClassification.register_for_auto_class("AutoModelForImageClassification")

__all__ = [
    "FreqViTConfig",
    "FreqViTForImageClassification",
    "FreqViTModel",
    "FreqViTPreTrainedModel",
    "TRAINING_FREE_FREQ",
    "TokenProvenance",
    "count_macs",
]
