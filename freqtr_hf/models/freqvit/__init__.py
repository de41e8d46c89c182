"""FreqViT and its sibling families: ViT, DINOv2 (with and without registers), CLIP's and SigLIP's vision towers
whose blocks reduce tokens (Lee et al., NeurIPS 2025).

One folder holds every family and the reduction core they share (`configuration_reduction`, `modeling_reduction`,
the reducers and the `reduction_*` math), because transformers loads a saved model's code from one flat folder:
`save_pretrained` copies a family's configuration and modeling modules and every module of this folder they import
beside the weights (no other family's), so that the folder loads with `trust_remote_code=True` where freqtr_hf is not
installed. This file is not among them. It imports nothing until a name is asked for, so that `methods` reads
without torch; the first class taken from here (or from `freqtr_hf`) registers every family with transformers' Auto
classes.
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
    "FreqDinov2Config": "configuration_freqdinov2",
    "FreqDinov2Model": "modeling_freqdinov2",
    "FreqDinov2ForImageClassification": "modeling_freqdinov2",
    "FreqDinov2Backbone": "modeling_freqdinov2",
    "FreqDinov2WithRegistersConfig": "configuration_freqdinov2",
    "FreqDinov2WithRegistersModel": "modeling_freqdinov2",
    "FreqDinov2WithRegistersForImageClassification": "modeling_freqdinov2",
    "FreqDinov2WithRegistersBackbone": "modeling_freqdinov2",
    "FreqCLIPVisionConfig": "configuration_freqclip",
    "FreqCLIPVisionModel": "modeling_freqclip",
    "FreqSiglipVisionConfig": "configuration_freqsiglip",
    "FreqSiglipVisionModel": "modeling_freqsiglip",
    "TokenProvenance": "token_state",
    "TRAINING_FREE_FREQ": "methods",
}
# per family: its config, and its model classes by the Auto class that serves them
FAMILIES = {
    "FreqViTConfig": {
        "AutoModel": "FreqViTModel", "AutoModelForImageClassification": "FreqViTForImageClassification",
        "AutoBackbone": "FreqViTBackbone",
    },
    "FreqDinov2Config": {
        "AutoModel": "FreqDinov2Model", "AutoModelForImageClassification": "FreqDinov2ForImageClassification",
        "AutoBackbone": "FreqDinov2Backbone",
    },
    "FreqDinov2WithRegistersConfig": {
        "AutoModel": "FreqDinov2WithRegistersModel",
        "AutoModelForImageClassification": "FreqDinov2WithRegistersForImageClassification",
        "AutoBackbone": "FreqDinov2WithRegistersBackbone",
    },
    "FreqCLIPVisionConfig": {"AutoModel": "FreqCLIPVisionModel"},
    "FreqSiglipVisionConfig": {"AutoModel": "FreqSiglipVisionModel"},
}
__all__ = sorted(NAMES)


def family_classes(
    source: str, auto_class: str = "AutoModelForImageClassification", head_required: bool = True, **options
) -> tuple[type, type]:
    """The reducing config class and model class (the one `auto_class` serves) that load the checkpoint `source` (a
    Hub id or a folder), chosen by its model type: a ViT/DeiT or FreqViT checkpoint gives FreqViT's, a DINOv2 one
    FreqDINOv2's, and so on. `options`: `get_config_dict`'s (revision, token, local_files_only, ...). Raises
    `ValueError` naming the model type when no family loads it, or when the family has no such class (CLIP's and
    SigLIP's vision towers have no image classifier), or, for a classifier, when the checkpoint's `architectures` hold
    none (`facebook/dinov2-base` is an encoder: its classifier would be random) and `head_required` (fine-tuning
    gives such a checkpoint a new head)."""
    from transformers import PreTrainedConfig

    from .configuration_reduction import FAMILY_CONFIGS

    config_dict = PreTrainedConfig.get_config_dict(source, **options)[0]
    model_type = config_dict.get("model_type")
    configs = {name: getattr(importlib.import_module(f".{NAMES[name]}", __name__), name) for name in FAMILIES}
    by_type = {**FAMILY_CONFIGS, **{config.model_type: name for name, config in configs.items()}}
    by_type |= {kind: name for name, config in configs.items() for kind in config.refused_model_types}
    if model_type not in by_type:
        families = sorted({*FAMILY_CONFIGS})
        raise ValueError(f"{source} is a {model_type!r} checkpoint; freqtr-hf reduces tokens in {', '.join(families)}")
    config_name = by_type[model_type]
    if auto_class not in FAMILIES[config_name]:
        raise ValueError(
            f"{source} is a {model_type!r} checkpoint, whose model ({config_name.removesuffix('Config')}) has no "
            f"{auto_class.removeprefix('Auto')}: this needs an image classification checkpoint (ViT, DeiT, DINOv2)"
        )
    architectures = config_dict.get("architectures") or []
    if head_required and auto_class == "AutoModelForImageClassification" and architectures and not any(
        name.endswith("ForImageClassification") for name in architectures
    ):
        raise ValueError(
            f"{source} is a {architectures[0]} checkpoint, without an image classifier (its head would be random): "
            "this needs an image classification checkpoint"
        )
    register_auto_classes()
    model_name = FAMILIES[config_name][auto_class]
    return configs[config_name], getattr(importlib.import_module(f".{NAMES[model_name]}", __name__), model_name)


def __getattr__(name: str):
    if name not in NAMES:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    register_auto_classes()
    return getattr(importlib.import_module(f".{NAMES[name]}", __name__), name)


@functools.cache
def register_auto_classes() -> None:
    """AutoConfig and the Auto model classes find every family of this folder by its model type, so that a saved
    model loads through them, and dense heads (UperNet, DPT) build a reducing backbone from its config, without remote
    code where freqtr_hf is installed; AutoImageProcessor gives a FreqViT ViT's processor (the other families' saved
    folders carry their own processor files)."""
    import transformers
    from transformers import AutoConfig, AutoImageProcessor, ViTImageProcessorPil
    from transformers.utils import is_torchvision_available

    for config_name, models in FAMILIES.items():
        config_class = getattr(importlib.import_module(f".{NAMES[config_name]}", __name__), config_name)
        AutoConfig.register(config_class.model_type, config_class, exist_ok=True)
        for auto_name, model_name in models.items():
            model_class = getattr(importlib.import_module(f".{NAMES[model_name]}", __name__), model_name)
            getattr(transformers, auto_name).register(config_class, model_class, exist_ok=True)
    from .configuration_freqvit import FreqViTConfig

    # a FreqViT reads images as ViT does, so pipeline() finds its processor from the model alone
    processors = {"pil": ViTImageProcessorPil}
    if is_torchvision_available():
        from transformers import ViTImageProcessor

        processors["torchvision"] = ViTImageProcessor
    AutoImageProcessor.register(FreqViTConfig, image_processor_classes=processors, exist_ok=True)
