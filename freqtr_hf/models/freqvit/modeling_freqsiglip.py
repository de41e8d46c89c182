"""FreqSigLIP: the vision tower of transformers' SigLIP with token-reducing blocks. SigLIP has no CLS token: every
token is a patch and a candidate (`num_prefix_tokens = 0`), so `freq` ranks all of them by the high-pass attention
they receive, and the attention-pooling head reads whatever tokens remain (kept, merged and DC tokens, each once).
What SigLIP contributes: its embeddings, its block's modules (`CLIPStyleLayer`), the post-norm and the head; the
reducing plumbing is `modeling_reduction`'s, shared with the other families.
"""

import torch
from torch import nn
from transformers.conversion_mapping import get_checkpoint_conversion_mapping, register_checkpoint_conversion_mapping
from transformers.models.siglip.modeling_siglip import (
    SiglipAttention,
    SiglipMLP,
    SiglipMultiheadAttentionPoolingHead,
    SiglipPreTrainedModel,
    SiglipVisionEmbeddings,
)

from .configuration_freqsiglip import FreqSiglipVisionConfig
from .modeling_reduction import (
    BlockStack,
    CLIPStyleLayer,
    ReducingAttention,
    ReducingModelMixin,
    ReducingPreTrainedModel,
)


# SigLIP's vision tower drops the `vision_model.` prefix of its checkpoints' keys (and of a whole SiglipModel's)
register_checkpoint_conversion_mapping(
    "FreqSiglipVisionModel", get_checkpoint_conversion_mapping("CLIPVisionModel"), overwrite=True
)


class FreqSiglipAttention(ReducingAttention, SiglipAttention):
    """SigLIP self-attention with the frequency-aware reweighting and the maps a reducer reads."""


class FreqSiglipEncoderLayer(CLIPStyleLayer):
    """A SigLIP block; a reduction block reduces tokens after its attention + residual, before its MLP."""

    attention_class = FreqSiglipAttention
    mlp_class = SiglipMLP


class FreqSiglipPreTrainedModel(ReducingPreTrainedModel, SiglipPreTrainedModel):
    config_class = FreqSiglipVisionConfig
    config: FreqSiglipVisionConfig
    main_input_name = "pixel_values"
    input_modalities = ("image",)
    base_model_prefix = "vision_model"
    _no_split_modules = ["SiglipVisionEmbeddings", "FreqSiglipEncoderLayer", "SiglipMultiheadAttentionPoolingHead"]


class FreqSiglipVisionModel(ReducingModelMixin, FreqSiglipPreTrainedModel):
    """SigLIP's vision tower whose blocks reduce tokens as `config` says; loads SigLIP checkpoints (the tower's or
    the whole model's). `last_hidden_state` is post-normed; `pooler_output` is the head's pooled token, as in
    `SiglipVisionModel`."""

    _input_embed_layer = "patch_embedding"

    def __init__(self, config: FreqSiglipVisionConfig):
        super().__init__(config)
        self._start_reduction()
        self.embeddings = SiglipVisionEmbeddings(config)
        self.encoder = BlockStack(
            "layers", [FreqSiglipEncoderLayer(config, i) for i in range(config.num_hidden_layers)]
        )
        self.post_layernorm = nn.LayerNorm(config.hidden_size, eps=config.layer_norm_eps)
        self.head = SiglipMultiheadAttentionPoolingHead(config) if config.vision_use_head else None
        self.post_init()

    def embed(self, pixel_values: torch.Tensor, interpolate_pos_encoding: bool) -> torch.Tensor:
        return self.embeddings(pixel_values, interpolate_pos_encoding=interpolate_pos_encoding)

    def finish(self, hidden_states: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None]:
        sequence_output = self.post_layernorm(hidden_states)
        return sequence_output, self.head(sequence_output) if self.head is not None else None


# save_pretrained copies this module and those it imports beside the weights, for trust_remote_code=True
FreqSiglipVisionModel.register_for_auto_class("AutoModel")

__all__ = ["FreqSiglipPreTrainedModel", "FreqSiglipVisionModel"]
