"""FreqViT configuration: a `ViTConfig` plus the token-reduction fields (`ReductionConfigMixin`)."""

from huggingface_hub.dataclasses import strict
from transformers import ViTConfig
from transformers.backbone_utils import BackboneConfigMixin

from .configuration_reduction import (  # noqa: F401 - the field and method lists, also read from here
    BACKBONE_FIELDS, FREQ_PRESETS, KEY_WEIGHT_METHODS, MERGING_METHODS, PRUNING_METHODS, REDUCTION_FIELDS,
    REDUCTION_METHODS, SCORE_SOURCES, TOKEN_RESTORATIONS, TRAINING_FREE_FREQ, TRAINING_FREE_METHODS,
    ReductionConfigMixin,
)


@strict(accept_kwargs=True)
class FreqViTConfig(ReductionConfigMixin, BackboneConfigMixin, ViTConfig):
    r"""
    Configuration of a ViT whose blocks reduce tokens (Lee et al., NeurIPS 2025): every `ViTConfig` field keeps its
    meaning, and the fields of `ReductionConfigMixin` set the reduction (`reduction_method`, `reduction_layers`,
    `keep_rate`, ...; see there). Loads ViT and DeiT checkpoints (a DeiT without distillation token is a `vit`).

    As a backbone (`FreqViTBackbone`, `AutoBackbone`), for dense heads:

    out_features / out_indices (`list`, *optional*): the stages whose feature maps the backbone returns, by name
        (`"stem"` the embeddings, `"stageN"` the output of block N) or index; the last stage by default.
    apply_layernorm (`bool`, defaults to `True`): apply the final layer norm to each feature map.
    reshape_hidden_states (`bool`, defaults to `True`): return maps as (B, C, H/p, W/p); else as ViT's sequence
        (B, 1 + H/p · W/p, C), CLS first (what DPT's reassembly reads).
    """

    model_type = "freqvit"
    compatible_model_types = ("freqvit", "vit")
    # the Hub's DeiT checkpoints without a distillation token (facebook/deit-*-patch16-224) are `vit`
    refused_model_types = {
        "deit": "a distilled DeiT (model_type 'deit', with a distillation token), which FreqViT does not load; use a "
        "DeiT checkpoint without distillation token, such as facebook/deit-small-patch16-224",
    }
    auto_map_entries = {
        "AutoConfig": "configuration_freqvit.FreqViTConfig",
        "AutoModel": "modeling_freqvit.FreqViTModel",
        "AutoModelForImageClassification": "modeling_freqvit.FreqViTForImageClassification",
        "AutoBackbone": "modeling_freqvit.FreqViTBackbone",
    }

    apply_layernorm: bool = True
    reshape_hidden_states: bool = True
    _out_features: list[str] | None = None
    _out_indices: list[int] | None = None

    def __post_init__(self, **kwargs):
        self.stage_names = ["stem"] + [f"stage{index}" for index in range(1, self.num_hidden_layers + 1)]
        self._check_out_indices(kwargs.get("out_indices"))
        self.set_output_features_output_indices(
            out_indices=kwargs.pop("out_indices", None), out_features=kwargs.pop("out_features", None)
        )
        super().__post_init__(**kwargs)


# save_pretrained copies this module (and the config's auto_map names it), for trust_remote_code=True
FreqViTConfig.register_for_auto_class()

__all__ = ["FreqViTConfig"]
