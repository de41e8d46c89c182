"""FreqDINOv2 configurations: a `Dinov2Config` (with or without registers) plus the token-reduction fields
(`ReductionConfigMixin`)."""

from huggingface_hub.dataclasses import strict
from transformers import Dinov2Config, Dinov2WithRegistersConfig

from .configuration_reduction import ReductionConfigMixin


@strict(accept_kwargs=True)
class FreqDinov2Config(ReductionConfigMixin, Dinov2Config):
    r"""
    Configuration of a DINOv2 whose blocks reduce tokens: every `Dinov2Config` field keeps its meaning (the backbone
    fields included), and the fields of `ReductionConfigMixin` set the reduction. The CLS token is never reduced.
    Loads DINOv2 checkpoints (`facebook/dinov2-*`).
    """

    model_type = "freqdinov2"
    compatible_model_types = ("freqdinov2", "dinov2")
    auto_map_entries = {
        "AutoConfig": "configuration_freqdinov2.FreqDinov2Config",
        "AutoModel": "modeling_freqdinov2.FreqDinov2Model",
        "AutoModelForImageClassification": "modeling_freqdinov2.FreqDinov2ForImageClassification",
        "AutoBackbone": "modeling_freqdinov2.FreqDinov2Backbone",
    }

    def head_macs(self, length: int) -> int:
        """The classifier's MACs on CLS and the mean of the patch tokens."""
        return 2 * self.hidden_size * self.num_labels

    @property
    def feed_forward_macs(self) -> int:
        """MACs of one token through a block's MLP (SwiGLU: three matrices of two thirds the width, rounded up to 8)."""
        width = int(self.hidden_size * self.mlp_ratio)
        if self.use_swiglu_ffn:
            return 3 * self.hidden_size * ((int(width * 2 / 3) + 7) // 8 * 8)
        return 2 * self.hidden_size * width


@strict(accept_kwargs=True)
class FreqDinov2WithRegistersConfig(ReductionConfigMixin, Dinov2WithRegistersConfig):
    r"""
    Configuration of a DINOv2 with registers whose blocks reduce tokens: every `Dinov2WithRegistersConfig` field keeps
    its meaning, and the fields of `ReductionConfigMixin` set the reduction. The CLS and register tokens are never
    reduced. Loads DINOv2-with-registers checkpoints (`facebook/dinov2-with-registers-*`).
    """

    model_type = "freqdinov2_with_registers"
    compatible_model_types = ("freqdinov2_with_registers", "dinov2_with_registers")
    auto_map_entries = {
        "AutoConfig": "configuration_freqdinov2.FreqDinov2WithRegistersConfig",
        "AutoModel": "modeling_freqdinov2.FreqDinov2WithRegistersModel",
        "AutoModelForImageClassification": "modeling_freqdinov2.FreqDinov2WithRegistersForImageClassification",
        "AutoBackbone": "modeling_freqdinov2.FreqDinov2WithRegistersBackbone",
    }
    head_macs = FreqDinov2Config.head_macs
    feed_forward_macs = FreqDinov2Config.feed_forward_macs

    @property
    def num_prefix_tokens(self) -> int:
        return 1 + self.num_register_tokens


# save_pretrained copies this module (and the config's auto_map names it), for trust_remote_code=True
FreqDinov2Config.register_for_auto_class()
FreqDinov2WithRegistersConfig.register_for_auto_class()

__all__ = ["FreqDinov2Config", "FreqDinov2WithRegistersConfig"]
