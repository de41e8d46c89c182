"""FreqDINOv2: transformers' DINOv2 (with and without registers) with token-reducing blocks. What DINOv2 contributes:
its embeddings (CLS, registers, always-interpolated position embeddings), its block (layer scale, drop path, MLP or
SwiGLU) and its final layer norm; the reducing plumbing is `modeling_reduction`'s, shared with the other families.
"""

import torch
from torch import nn
from transformers.backbone_utils import BackboneMixin
from transformers.conversion_mapping import get_checkpoint_conversion_mapping, register_checkpoint_conversion_mapping
from transformers.models.dinov2.modeling_dinov2 import (
    Dinov2Attention,
    Dinov2DropPath,
    Dinov2Embeddings,
    Dinov2LayerScale,
    Dinov2MLP,
    Dinov2PreTrainedModel,
    Dinov2SwiGLUFFN,
)
from transformers.models.dinov2_with_registers.modeling_dinov2_with_registers import (
    Dinov2WithRegistersEmbeddings,
    Dinov2WithRegistersPreTrainedModel,
)

from .configuration_freqdinov2 import FreqDinov2Config, FreqDinov2WithRegistersConfig
from .modeling_reduction import (
    BlockStack,
    FreqViTModelOutput,
    ReducingAttention,
    ReducingBackboneMixin,
    ReducingClassifierMixin,
    ReducingLayer,
    ReducingModelMixin,
    ReducingPreTrainedModel,
)


# the module names are DINOv2's, so its renaming of the Hub's legacy keys (`attention.attention.query` ->
# `attention.q_proj`, SwiGLU's `weights_in` -> `gate_proj` + `up_proj`, ...) applies; transformers applies it to its
# own classes only
register_checkpoint_conversion_mapping("freqdinov2", get_checkpoint_conversion_mapping("Dinov2Model"), overwrite=True)
register_checkpoint_conversion_mapping(
    "freqdinov2_with_registers", get_checkpoint_conversion_mapping("Dinov2WithRegistersModel"), overwrite=True
)


class FreqDinov2Attention(ReducingAttention, Dinov2Attention):
    """DINOv2 self-attention with the frequency-aware reweighting and the maps a reducer reads."""


class FreqDinov2Layer(ReducingLayer):
    """A DINOv2 block (layer scale, drop path; MLP or SwiGLU); a reduction block reduces tokens after its attention
    + residual, before its MLP."""

    def __init__(self, config: FreqDinov2Config, layer_idx: int):
        super().__init__(config, layer_idx)
        self.norm1 = nn.LayerNorm(config.hidden_size, eps=config.layer_norm_eps)
        self.attention = FreqDinov2Attention(config, layer_idx)
        self.layer_scale1 = Dinov2LayerScale(config)
        self.drop_path = Dinov2DropPath(config.drop_path_rate) if config.drop_path_rate > 0.0 else nn.Identity()
        self.norm2 = nn.LayerNorm(config.hidden_size, eps=config.layer_norm_eps)
        self.mlp = Dinov2SwiGLUFFN(config) if config.use_swiglu_ffn else Dinov2MLP(config)
        self.layer_scale2 = Dinov2LayerScale(config)

    def attention_input(self, hidden_states: torch.Tensor) -> torch.Tensor:
        return self.norm1(hidden_states)

    def attention_branch(self, attended: torch.Tensor) -> torch.Tensor:
        return self.dropout_in_training(self.drop_path, self.layer_scale1(attended))

    def feed_forward(self, hidden_states: torch.Tensor) -> torch.Tensor:
        return self.dropout_in_training(self.drop_path, self.layer_scale2(self.mlp(self.norm2(hidden_states))))


class Dinov2Encoding(ReducingModelMixin):
    """What a DINOv2 encoder (with or without registers) does around the blocks: embeddings that always interpolate
    the position embeddings, and a final layer norm whose CLS token is the pooled output."""

    always_interpolates = True

    def _build(self, config: FreqDinov2Config, embeddings: nn.Module) -> None:
        self._start_reduction()
        self.embeddings = embeddings
        self.encoder = BlockStack("layer", [FreqDinov2Layer(config, i) for i in range(config.num_hidden_layers)])
        self.layernorm = nn.LayerNorm(config.hidden_size, eps=config.layer_norm_eps)

    def embed(self, pixel_values: torch.Tensor, interpolate_pos_encoding: bool) -> torch.Tensor:
        return self.embeddings(pixel_values.to(self.embeddings.patch_embeddings.projection.weight.dtype))

    def finish(self, hidden_states: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None]:
        sequence_output = self.layernorm(hidden_states)
        return sequence_output, sequence_output[:, 0]


class Dinov2Classification(ReducingClassifierMixin):
    """DINOv2's classifier: a linear layer on the final CLS token and the mean of the patch tokens. Under reduction
    the mean weighs each token by the patches it stands for (a DC token by its window's), which is the mean over the
    patches as the final tokens represent them."""

    needs_token_sizes = True

    def _build_classifier(self, config: FreqDinov2Config) -> None:
        self.num_labels = config.num_labels
        self.classifier = (
            nn.Linear(config.hidden_size * 2, config.num_labels) if config.num_labels > 0 else nn.Identity()
        )

    def classifier_input(self, outputs: FreqViTModelOutput) -> torch.Tensor:
        tokens, sizes = outputs.last_hidden_state, outputs.token_sizes.to(outputs.last_hidden_state.dtype)
        patch_mean = (tokens * sizes[..., None]).sum(1) / sizes.sum(1, keepdim=True)
        return torch.cat([tokens[:, 0], patch_mean], dim=1)


class FreqDinov2PreTrainedModel(ReducingPreTrainedModel, Dinov2PreTrainedModel):
    config_class = FreqDinov2Config
    config: FreqDinov2Config
    _no_split_modules = ["Dinov2Embeddings", "FreqDinov2Layer"]


class FreqDinov2Model(Dinov2Encoding, FreqDinov2PreTrainedModel):
    """DINOv2 encoder whose blocks reduce tokens as `config` says; loads any DINOv2 checkpoint."""

    def __init__(self, config: FreqDinov2Config):
        super().__init__(config)
        self._build(config, Dinov2Embeddings(config))
        self.post_init()


class FreqDinov2ForImageClassification(Dinov2Classification, FreqDinov2PreTrainedModel):
    """FreqDINOv2 with DINOv2's linear classifier (CLS and mean patch token)."""

    def __init__(self, config: FreqDinov2Config):
        super().__init__(config)
        self.dinov2 = FreqDinov2Model(config)
        self._build_classifier(config)
        self.post_init()


class FreqDinov2Backbone(ReducingBackboneMixin, BackboneMixin, FreqDinov2Model):
    """FreqDINOv2 as a backbone for dense heads (DPT, Depth Anything, ...): full-grid feature maps of the stages in
    `config.out_features` whatever the reduction (`ReducingBackboneMixin`)."""

    def __init__(self, config: FreqDinov2Config):
        super().__init__(config)
        self._init_backbone_features()


class FreqDinov2WithRegistersPreTrainedModel(ReducingPreTrainedModel, Dinov2WithRegistersPreTrainedModel):
    config_class = FreqDinov2WithRegistersConfig
    config: FreqDinov2WithRegistersConfig
    _no_split_modules = ["Dinov2WithRegistersEmbeddings", "FreqDinov2Layer"]


class FreqDinov2WithRegistersModel(Dinov2Encoding, FreqDinov2WithRegistersPreTrainedModel):
    """DINOv2-with-registers encoder whose blocks reduce tokens (never the CLS and register tokens)."""

    def __init__(self, config: FreqDinov2WithRegistersConfig):
        super().__init__(config)
        self._build(config, Dinov2WithRegistersEmbeddings(config))
        self.post_init()


class FreqDinov2WithRegistersForImageClassification(Dinov2Classification, FreqDinov2WithRegistersPreTrainedModel):
    """FreqDINOv2 with registers and DINOv2's linear classifier (CLS and mean patch token, registers left out)."""

    def __init__(self, config: FreqDinov2WithRegistersConfig):
        super().__init__(config)
        self.dinov2_with_registers = FreqDinov2WithRegistersModel(config)
        self._build_classifier(config)
        self.post_init()


class FreqDinov2WithRegistersBackbone(ReducingBackboneMixin, BackboneMixin, FreqDinov2WithRegistersModel):
    """FreqDINOv2 with registers as a backbone for dense heads (`ReducingBackboneMixin`)."""

    def __init__(self, config: FreqDinov2WithRegistersConfig):
        super().__init__(config)
        self._init_backbone_features()


# save_pretrained copies this module and those it imports beside the weights, for trust_remote_code=True
for model_class, auto_class in (
    (FreqDinov2Model, "AutoModel"),
    (FreqDinov2ForImageClassification, "AutoModelForImageClassification"),
    (FreqDinov2Backbone, "AutoBackbone"),
    (FreqDinov2WithRegistersModel, "AutoModel"),
    (FreqDinov2WithRegistersForImageClassification, "AutoModelForImageClassification"),
    (FreqDinov2WithRegistersBackbone, "AutoBackbone"),
):
    model_class.register_for_auto_class(auto_class)

__all__ = [
    "FreqDinov2Backbone",
    "FreqDinov2ForImageClassification",
    "FreqDinov2Model",
    "FreqDinov2PreTrainedModel",
    "FreqDinov2WithRegistersBackbone",
    "FreqDinov2WithRegistersForImageClassification",
    "FreqDinov2WithRegistersModel",
    "FreqDinov2WithRegistersPreTrainedModel",
]
