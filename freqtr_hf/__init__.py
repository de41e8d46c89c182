"""freqtr-hf: frequency-aware token reduction for Vision Transformers, as Hugging Face model classes.

The model is in `freqtr_hf.models.freqvit`; the tools around it (evaluation, export, analysis, the command line) are
the other modules. Nothing heavy is imported until a name is asked for, so that `freqtr-hf --help` answers at once;
the first model class taken from here registers FreqViT with transformers' Auto classes.
"""

import importlib

__version__ = "0.2.0"

# public name -> the module that defines it
NAMES = {
    **{name: ".models.freqvit" for name in (
        "FreqViTConfig", "FreqViTModel", "FreqViTForImageClassification", "FreqViTBackbone", "FreqViTPreTrainedModel",
        "FreqDinov2Config", "FreqDinov2Model", "FreqDinov2ForImageClassification", "FreqDinov2Backbone",
        "FreqDinov2WithRegistersConfig", "FreqDinov2WithRegistersModel",
        "FreqDinov2WithRegistersForImageClassification", "FreqDinov2WithRegistersBackbone",
        "FreqCLIPVisionConfig", "FreqCLIPVisionModel", "FreqSiglipVisionConfig", "FreqSiglipVisionModel",
        "TokenProvenance",
        "TRAINING_FREE_FREQ",
    )},
    "count_macs": ".macs",
}
__all__ = sorted(NAMES)


def __getattr__(name: str):
    if name not in NAMES:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(NAMES[name], __name__), name)
    globals()[name] = value  # once: later look-ups are plain
    return value


def __dir__() -> list[str]:
    return sorted({*globals(), *__all__})
