"""FreqCLIP: the vision tower of transformers' CLIP with token-reducing blocks. What CLIP contributes: its embeddings
and pre-norm, its block's modules (`CLIPStyleLayer`) and the post-norm of the CLS token, which is the pooled output
`CLIPModel` projects into its joint space; the reducing plumbing is `modeling_reduction`'s, shared with the other
families. For zero-shot classification on a reduced tower, put a `FreqCLIPVisionModel` in `CLIPModel.vision_model`.
"""

import torch
from torch import nn
from transformers.conversion_mapping import get_checkpoint_conversion_mapping, register_checkpoint_conversion_mapping
from transformers.models.clip.modeling_clip import CLIPAttention, CLIPMLP, CLIPPreTrainedModel, CLIPVisionEmbeddings

from .configuration_freqclip import FreqCLIPVisionConfig
from .modeling_reduction import (
    BlockStack,
    CLIPStyleLayer,
    ReducingAttention,
    ReducingModelMixin,
    ReducingPreTrainedModel,
)


# CLIP's vision tower drops the `vision_model.` prefix of its checkpoints' keys (and of a whole CLIPModel's)
register_checkpoint_conversion_mapping(
    "FreqCLIPVisionModel", get_checkpoint_conversion_mapping("CLIPVisionModel"), overwrite=True
)


class FreqCLIPAttention(ReducingAttention, CLIPAttention):
    """CLIP self-attention with the frequency-aware reweighting and the maps a reducer reads."""


class FreqCLIPEncoderLayer(CLIPStyleLayer):
    """A CLIP block; a reduction block reduces tokens after its attention + residual, before its MLP."""

    attention_class = FreqCLIPAttention
    mlp_class = CLIPMLP


class FreqCLIPPreTrainedModel(ReducingPreTrainedModel, CLIPPreTrainedModel):
    config_class = FreqCLIPVisionConfig
    config: FreqCLIPVisionConfig
    main_input_name = "pixel_values"
    input_modalities = ("image",)
    _no_split_modules = ["CLIPVisionEmbeddings", "FreqCLIPEncoderLayer"]


class FreqCLIPVisionModel(ReducingModelMixin, FreqCLIPPreTrainedModel):
    """CLIP's vision tower whose blocks reduce tokens as `config` says; loads CLIP checkpoints (the tower's or the
    whole model's). `pooler_output` is the post-normed CLS token, as in `CLIPVisionModel`; `last_hidden_state` is not
    normed, as there."""

    _input_embed_layer = "patch_embedding"

    def __init__(self, config: FreqCLIPVisionConfig):
        super().__init__(config)
        self._start_reduction()
        self.embeddings = CLIPVisionEmbeddings(config)
        self.pre_layrnorm = nn.LayerNorm(config.hidden_size, eps=config.layer_norm_eps)
        self.encoder = BlockStack(
            "layers", [FreqCLIPEncoderLayer(config, i) for i in range(config.num_hidden_layers)]
        )
        self.post_layernorm = nn.LayerNorm(config.hidden_size, eps=config.layer_norm_eps)
        self.post_init()

    def embed(self, pixel_values: torch.Tensor, interpolate_pos_encoding: bool) -> torch.Tensor:
        return self.pre_layrnorm(self.embeddings(pixel_values, interpolate_pos_encoding=interpolate_pos_encoding))

    def finish(self, hidden_states: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None]:
        return hidden_states, self.post_layernorm(hidden_states[:, 0])


# save_pretrained copies this module and those it imports beside the weights, for trust_remote_code=True
FreqCLIPVisionModel.register_for_auto_class("AutoModel")

__all__ = ["FreqCLIPPreTrainedModel", "FreqCLIPVisionModel"]
