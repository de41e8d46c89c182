"""FreqViT: transformers' ViT with token-reducing blocks (frequency-aware token reduction, Lee et al., NeurIPS 2025,
and the baselines of "Which Tokens to Use?"). What ViT contributes: its embeddings, its block's modules and its
final layer norm and pooler; the reducing plumbing is `modeling_reduction`'s, shared with the other families.
"""

import torch
from torch import nn
from transformers.backbone_utils import BackboneMixin
from transformers.conversion_mapping import get_checkpoint_conversion_mapping, register_checkpoint_conversion_mapping
from transformers.models.vit.modeling_vit import ViTAttention, ViTEmbeddings, ViTMLP, ViTPooler, ViTPreTrainedModel

from .configuration_freqvit import FreqViTConfig
from .modeling_reduction import (
    FreqViTModelOutput,
    ReducingAttention,
    ReducingBackboneMixin,
    ReducingClassifierMixin,
    ReducingLayer,
    ReducingModelMixin,
    ReducingPreTrainedModel,
)
from .token_state import TokenProvenance


# FreqViT keeps ViT's module names, so ViT's renaming of the Hub's legacy keys (`encoder.layer.N.attention.attention.
# query` -> `layers.N.attention.q_proj`, ...) applies; transformers applies it to its own classes only.
register_checkpoint_conversion_mapping("freqvit", get_checkpoint_conversion_mapping("ViTModel"), overwrite=True)


class FreqViTAttention(ReducingAttention, ViTAttention):
    """ViT self-attention with the frequency-aware reweighting and the maps a reducer reads (`ReducingAttention`)."""


class FreqViTLayer(ReducingLayer):
    """A ViT block; a reduction block reduces tokens after its attention + residual, before its MLP."""

    def __init__(self, config: FreqViTConfig, layer_idx: int):
        super().__init__(config, layer_idx)
        self.attention = FreqViTAttention(config, layer_idx)
        self.layernorm_before = nn.LayerNorm(config.hidden_size, eps=config.layer_norm_eps)
        self.layernorm_after = nn.LayerNorm(config.hidden_size, eps=config.layer_norm_eps)
        self.mlp = ViTMLP(config)
        self.dropout = nn.Dropout(config.hidden_dropout_prob)

    def attention_input(self, hidden_states: torch.Tensor) -> torch.Tensor:
        return self.layernorm_before(hidden_states)

    def attention_branch(self, attended: torch.Tensor) -> torch.Tensor:
        return self.dropout_in_training(self.dropout, attended)

    def feed_forward(self, hidden_states: torch.Tensor) -> torch.Tensor:
        return self.dropout_in_training(self.dropout, self.mlp(self.layernorm_after(hidden_states)))


class FreqViTPreTrainedModel(ReducingPreTrainedModel, ViTPreTrainedModel):
    config_class = FreqViTConfig
    config: FreqViTConfig
    _no_split_modules = ["ViTEmbeddings", "FreqViTLayer"]


class FreqViTModel(ReducingModelMixin, FreqViTPreTrainedModel):
    """ViT encoder whose blocks reduce tokens as `config` says; loads any ViT/DeiT checkpoint."""

    def __init__(self, config: FreqViTConfig, add_pooling_layer: bool = True):
        super().__init__(config)
        self._start_reduction()
        self.embeddings = ViTEmbeddings(config)
        self.layers = nn.ModuleList([FreqViTLayer(config, i) for i in range(config.num_hidden_layers)])
        self.layernorm = nn.LayerNorm(config.hidden_size, eps=config.layer_norm_eps)
        self.pooler = ViTPooler(config) if add_pooling_layer else None
        self.post_init()

    @property
    def blocks(self) -> nn.ModuleList:
        return self.layers

    def embed(self, pixel_values: torch.Tensor, interpolate_pos_encoding: bool) -> torch.Tensor:
        pixel_values = pixel_values.to(self.embeddings.patch_embeddings.projection.weight.dtype)
        return self.embeddings(pixel_values, interpolate_pos_encoding=interpolate_pos_encoding)

    def finish(self, hidden_states: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None]:
        sequence_output = self.layernorm(hidden_states)
        return sequence_output, self.pooler(sequence_output) if self.pooler is not None else None


class FreqViTForImageClassification(ReducingClassifierMixin, FreqViTPreTrainedModel):
    """FreqViT with a linear classifier on the final CLS token, e.g. for ImageNet."""

    def __init__(self, config: FreqViTConfig):
        super().__init__(config)
        self.num_labels = config.num_labels
        self.vit = FreqViTModel(config, add_pooling_layer=False)
        self.classifier = nn.Linear(config.hidden_size, config.num_labels) if config.num_labels > 0 else nn.Identity()
        self.post_init()

    def classifier_input(self, outputs: FreqViTModelOutput) -> torch.Tensor:
        return outputs.last_hidden_state[:, 0, :]


class FreqViTBackbone(ReducingBackboneMixin, BackboneMixin, FreqViTModel):
    """FreqViT as a backbone for dense heads (UperNet, DPT, ...), in transformers' backbone convention: the feature
    maps of the stages in `config.out_features`, each over the full patch grid whatever the reduction
    (`ReducingBackboneMixin`). Any resolution and any ViT/DeiT checkpoint."""

    def __init__(self, config: FreqViTConfig):
        super().__init__(config, add_pooling_layer=False)
        self._init_backbone_features()


# save_pretrained copies this module and those it imports beside the weights, for trust_remote_code=True
FreqViTModel.register_for_auto_class("AutoModel")
FreqViTForImageClassification.register_for_auto_class("AutoModelForImageClassification")
FreqViTBackbone.register_for_auto_class("AutoBackbone")

__all__ = [
    "FreqViTBackbone",
    "FreqViTForImageClassification",
    "FreqViTModel",
    "FreqViTPreTrainedModel",
    "TokenProvenance",
]
