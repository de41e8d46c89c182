"""FreqViT: transformers' ViT with token-reducing blocks (frequency-aware token reduction, Lee et al., NeurIPS 2025).

The model plumbing is method-agnostic: a block that reduces calls its `token_reducer` with the hidden states, the
attention probabilities and the `TokenState`; the reduction math lives in the `reduction_*` modules.

Sequence layout everywhere: `[CLS, candidates, merged]`, where candidates are original patches (their patch index is
tracked) and merged tokens (e.g. DC tokens) stand for several patches (their patch count is tracked).
"""

from collections.abc import Callable
from dataclasses import dataclass, field, replace

import torch
from torch import nn
from transformers import initialization as init
from transformers.conversion_mapping import get_checkpoint_conversion_mapping, register_checkpoint_conversion_mapping
from transformers.modeling_outputs import BaseModelOutputWithPooling, ImageClassifierOutput
from transformers.modeling_utils import ALL_ATTENTION_FUNCTIONS
from transformers.models.vit.modeling_vit import (
    ViTAttention,
    ViTEmbeddings,
    ViTMLP,
    ViTPooler,
    ViTPreTrainedModel,
    eager_attention_forward,
)
from transformers.modeling_layers import GradientCheckpointingLayer
from transformers.utils.generic import can_return_tuple

from .configuration_freqvit import FreqViTConfig
from .reduction_frequency import (
    high_frequency_scores,
    merge_into_dc_tokens,
    split_by_score,
    window_index,
    window_transfer,
)
from .token_schedule import ReductionStage, check_stages, kept_count


# FreqViT keeps ViT's module names, so ViT's renaming of the Hub's legacy keys (`encoder.layer.N.attention.attention.
# query` -> `layers.N.attention.q_proj`, ...) applies; transformers applies it to its own classes only.
register_checkpoint_conversion_mapping("freqvit", get_checkpoint_conversion_mapping("ViTModel"), overwrite=True)


@dataclass
class TokenProvenance:
    """Where the original patches went at one reduction stage.

    layer: the block after whose attention the reduction happened.
    patch_to_token: (B, P) LongTensor, for every original patch (row-major on the patch grid) the index, in the
        sequence after this stage, of the token that carries it; -1 if it was dropped.
    num_kept: kept patches are tokens `1 … num_kept` (after CLS); higher indices are merged tokens (DC tokens).
    """

    layer: int
    patch_to_token: torch.LongTensor
    num_kept: int

    @property
    def kept(self) -> torch.BoolTensor:
        """(B, P): the patches that are tokens of their own after this stage."""
        return (self.patch_to_token >= 1) & (self.patch_to_token <= self.num_kept)

    @property
    def merged(self) -> torch.BoolTensor:
        """(B, P): the patches averaged into a merged (DC) token."""
        return self.patch_to_token > self.num_kept


@dataclass
class TokenState:
    """What the blocks know about the current sequence `[CLS, candidates, merged]`.

    grid: (rows, cols) of the original patch grid.
    patch_ids: (B, m) original patch index of every candidate token.
    merged_sizes: (B, d) number of original patches each merged token stands for, or None before any merging.
    patch_to_token: (B, P) provenance map when tracked (see `TokenProvenance`), else None.
    provenance: one `TokenProvenance` per stage so far, when tracked.
    """

    grid: tuple[int, int]
    patch_ids: torch.LongTensor
    merged_sizes: torch.Tensor | None = None
    patch_to_token: torch.LongTensor | None = None
    provenance: tuple[TokenProvenance, ...] = field(default=())

    @classmethod
    def initial(cls, batch_size: int, grid: tuple[int, int], device, track_provenance: bool) -> "TokenState":
        num_patches = grid[0] * grid[1]
        patch_ids = torch.arange(num_patches, device=device).expand(batch_size, -1)
        return cls(grid, patch_ids, patch_to_token=patch_ids + 1 if track_provenance else None)

    @property
    def num_candidates(self) -> int:
        return self.patch_ids.shape[1]

    @property
    def num_merged(self) -> int:
        return 0 if self.merged_sizes is None else self.merged_sizes.shape[1]

    def after_reduction(
        self,
        layer: int,
        patch_ids: torch.LongTensor,
        merged_sizes: torch.Tensor | None,
        token_to_new: torch.LongTensor | None,
    ) -> "TokenState":
        """The state after a reduction; `token_to_new` (B, n) gives each old token's new index (-1: dropped)."""
        state = replace(self, patch_ids=patch_ids, merged_sizes=merged_sizes)
        if self.patch_to_token is None:
            return state
        new_index = token_to_new.gather(1, self.patch_to_token.clamp_min(0))
        patch_to_token = torch.where(self.patch_to_token >= 0, new_index, -1)
        stage = TokenProvenance(layer, patch_to_token, patch_ids.shape[1])
        return replace(state, patch_to_token=patch_to_token, provenance=(*self.provenance, stage))


def gather_tokens(tokens: torch.Tensor, index: torch.LongTensor) -> torch.Tensor:
    """tokens (B, n, C), index (B, k) -> (B, k, C)."""
    return tokens.gather(1, index[..., None].expand(-1, -1, tokens.shape[-1]))


class FrequencyTokenReducer(nn.Module):
    """One stage of frequency-aware reduction: keep the high-frequency candidates, average the rest into DC tokens.

    DC tokens persist: those of the previous stage are folded (count-weighted) into the window holding their centre.
    """

    def __init__(self, config: FreqViTConfig, stage: ReductionStage, previous_stage: ReductionStage | None):
        super().__init__()
        self.stage = stage
        self.previous_window_size = previous_stage.window_size if previous_stage is not None else None
        self.count_weighted = config.dc_update == "count_weighted"
        self.fill_global_mean = config.dc_empty_fill == "global_mean"
        num_windows = stage.window_size**2
        self.dc_position_embeddings = (
            nn.Parameter(torch.zeros(num_windows, config.hidden_size)) if config.dc_position_embedding else None
        )

    def forward(
        self, hidden_states: torch.Tensor, attention_probs: torch.Tensor, tokens: TokenState
    ) -> tuple[torch.Tensor, TokenState]:
        """hidden_states (B, 1 + m + d, C), attention_probs (B, h, n, n) -> reduced (B, 1 + k + w², C)."""
        num_candidates, window_size = tokens.num_candidates, self.stage.window_size
        num_keep = kept_count(num_candidates, self.stage.keep_rate)
        scores = high_frequency_scores(attention_probs)[:, 1 : 1 + num_candidates]
        keep_idx, low_idx = split_by_score(scores, num_keep)

        candidates = hidden_states[:, 1 : 1 + num_candidates]
        candidate_windows = window_index(tokens.grid, window_size, hidden_states.device)[tokens.patch_ids]
        low_windows = candidate_windows.gather(1, low_idx)
        old_dc_windows = None
        if tokens.num_merged:
            old_dc_windows = window_transfer(tokens.grid, self.previous_window_size, window_size, hidden_states.device)
        dc_tokens, dc_sizes = merge_into_dc_tokens(
            gather_tokens(candidates, low_idx),
            low_windows,
            window_size**2,
            hidden_states[:, 1 + num_candidates :] if tokens.num_merged else None,
            tokens.merged_sizes,
            old_dc_windows,
            count_weighted=self.count_weighted,
            fill_global_mean=self.fill_global_mean,
        )
        if self.dc_position_embeddings is not None:
            dc_tokens = dc_tokens + self.dc_position_embeddings
        reduced = torch.cat([hidden_states[:, :1], gather_tokens(candidates, keep_idx), dc_tokens], dim=1)

        token_to_new = None
        if tokens.patch_to_token is not None:
            token_to_new = torch.zeros(hidden_states.shape[:2], dtype=torch.long, device=hidden_states.device)
            kept_positions = torch.arange(1, 1 + num_keep, device=hidden_states.device).expand_as(keep_idx)
            token_to_new.scatter_(1, 1 + keep_idx, kept_positions)
            token_to_new.scatter_(1, 1 + low_idx, 1 + num_keep + low_windows)
            if tokens.num_merged:
                token_to_new[:, 1 + num_candidates :] = 1 + num_keep + old_dc_windows
        patch_ids = tokens.patch_ids.gather(1, keep_idx)
        return reduced, tokens.after_reduction(self.stage.layer, patch_ids, dc_sizes, token_to_new)


TOKEN_REDUCERS = {"freq": FrequencyTokenReducer}


class FreqViTAttention(ViTAttention):
    """ViT self-attention with the frequency-aware reweighting `Â = A + ω1·(A − 1/n) + ω2·A⊙M_DC` (per head).

    Â is never materialised: `Â V = A V' − ω1·mean(V)` with `V' = (1 + ω1)·V` and the DC rows `(1 + ω1 + ω2)·V`,
    so any attention kernel (eager, sdpa, flash) computes it. ω1 = ω2 = 0 leaves the attention unchanged.
    """

    def __init__(self, config: FreqViTConfig, layer_idx: int):
        super().__init__(config)
        stages = config.reduction_stages
        reweighting = config.attention_reweighting and config.reduction_method == "freq" and bool(stages)
        heads = config.num_attention_heads
        self.high_pass_gain = nn.Parameter(torch.zeros(heads)) if reweighting else None
        sees_dc_tokens = reweighting and layer_idx > stages[0].layer
        self.dc_gain = nn.Parameter(torch.zeros(heads)) if sees_dc_tokens else None

    def forward(
        self,
        hidden_states: torch.Tensor,
        num_merged: int = 0,
        need_weights: bool = False,
        attention_mask: torch.Tensor | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """hidden_states (B, n, C), the last `num_merged` tokens being DC tokens -> (B, n, C) and, when
        `need_weights`, the attention probabilities (B, h, n, n) before reweighting."""
        input_shape = hidden_states.shape[:-1]
        hidden_shape = (*input_shape, -1, self.head_dim)
        query_states = self.q_proj(hidden_states).view(hidden_shape).transpose(1, 2)
        key_states = self.k_proj(hidden_states).view(hidden_shape).transpose(1, 2)
        value_states = self.v_proj(hidden_states).view(hidden_shape).transpose(1, 2)

        values = value_states
        if self.high_pass_gain is not None:
            row_gain = (1.0 + self.high_pass_gain)[None, :, None].expand(input_shape[0], -1, input_shape[1])
            if self.dc_gain is not None and num_merged:
                dc_rows = torch.arange(input_shape[1], device=hidden_states.device) >= input_shape[1] - num_merged
                row_gain = row_gain + torch.where(dc_rows, self.dc_gain[:, None], 0.0)
            values = value_states * row_gain[..., None].to(value_states.dtype)

        attention_interface: Callable = eager_attention_forward
        if not need_weights:
            attention_interface = ALL_ATTENTION_FUNCTIONS.get_interface(
                self.config._attn_implementation, eager_attention_forward
            )
        attn_output, attn_weights = attention_interface(
            self,
            query_states,
            key_states,
            values,
            attention_mask,
            dropout=0.0 if not self.training else self.attention_dropout,
            scaling=self.scaling,
        )
        if self.high_pass_gain is not None:
            # the low-pass part A_LP V = mean over keys of V; (B, 1, h, head_dim) against (B, n, h, head_dim)
            low_pass = value_states.mean(dim=2)[:, None] * self.high_pass_gain[:, None].to(value_states.dtype)
            attn_output = attn_output - low_pass
        attn_output = attn_output.reshape(*input_shape, -1).contiguous()
        return self.o_proj(attn_output), attn_weights


class FreqViTLayer(GradientCheckpointingLayer):
    """A ViT block; a reduction block reduces tokens after its attention + residual, before its MLP."""

    def __init__(self, config: FreqViTConfig, layer_idx: int):
        super().__init__()
        self.attention = FreqViTAttention(config, layer_idx)
        self.layernorm_before = nn.LayerNorm(config.hidden_size, eps=config.layer_norm_eps)
        self.layernorm_after = nn.LayerNorm(config.hidden_size, eps=config.layer_norm_eps)
        self.mlp = ViTMLP(config)
        self.dropout = nn.Dropout(config.hidden_dropout_prob)
        stages = config.reduction_stages
        index = next((i for i, stage in enumerate(stages) if stage.layer == layer_idx), None)
        self.token_reducer = None
        if index is not None:
            reducer_class = TOKEN_REDUCERS[config.reduction_method]
            self.token_reducer = reducer_class(config, stages[index], stages[index - 1] if index else None)

    def forward(
        self,
        hidden_states: torch.Tensor,
        tokens: TokenState,
        output_attentions: bool = False,
    ) -> tuple[torch.Tensor, TokenState, torch.Tensor | None]:
        """hidden_states (B, n, C) -> (B, n', C) with n' < n in a reduction block, the new `TokenState`, and the
        attention probabilities (B, h, n, n) when a reduction needs them or `output_attentions`."""
        need_weights = output_attentions or self.token_reducer is not None
        residual = hidden_states
        hidden_states = self.layernorm_before(hidden_states)
        hidden_states, attention_probs = self.attention(hidden_states, tokens.num_merged, need_weights)
        hidden_states = self.dropout(hidden_states) + residual

        if self.token_reducer is not None:
            hidden_states, tokens = self.token_reducer(hidden_states, attention_probs, tokens)

        residual = hidden_states
        hidden_states = self.layernorm_after(hidden_states)
        hidden_states = self.mlp(hidden_states)
        hidden_states = self.dropout(hidden_states) + residual
        return hidden_states, tokens, attention_probs


@dataclass
class FreqViTModelOutput(BaseModelOutputWithPooling):
    """`BaseModelOutputWithPooling` of a token-reducing ViT.

    last_hidden_state: (B, n_L, C), n_L the final token count (68 for 224 px, patch 16, the default schedule).
    hidden_states: when asked, the embeddings and each block's output, (B, n_l, C), n_l the length *after* block l
        (a reduction block's output is already reduced).
    attentions: when asked, each block's attention probabilities (B, h, n, n) over its *input* sequence, before
        the ω reweighting.
    token_provenance: when asked, one `TokenProvenance` per reduction stage.
    """

    token_provenance: tuple[TokenProvenance, ...] | None = None


@dataclass
class FreqViTImageClassifierOutput(ImageClassifierOutput):
    """`ImageClassifierOutput` with the per-stage `token_provenance` (see `FreqViTModelOutput`)."""

    token_provenance: tuple[TokenProvenance, ...] | None = None


class FreqViTPreTrainedModel(ViTPreTrainedModel):
    config_class = FreqViTConfig
    config: FreqViTConfig
    _no_split_modules = ["ViTEmbeddings", "FreqViTLayer"]
    _can_record_outputs = {}

    @torch.no_grad()
    def _init_weights(self, module: nn.Module) -> None:
        super()._init_weights(module)
        # the reduction parameters start at zero, so a pretrained ViT is unchanged until fine-tuning moves them
        for name in ("high_pass_gain", "dc_gain", "dc_position_embeddings"):
            parameter = getattr(module, name, None)
            if isinstance(parameter, nn.Parameter):
                init.zeros_(parameter)


class FreqViTModel(FreqViTPreTrainedModel):
    """ViT encoder whose blocks reduce tokens as `config` says; loads any ViT/DeiT checkpoint."""

    def __init__(self, config: FreqViTConfig, add_pooling_layer: bool = True):
        super().__init__(config)
        self.embeddings = ViTEmbeddings(config)
        self.layers = nn.ModuleList([FreqViTLayer(config, i) for i in range(config.num_hidden_layers)])
        self.layernorm = nn.LayerNorm(config.hidden_size, eps=config.layer_norm_eps)
        self.pooler = ViTPooler(config) if add_pooling_layer else None
        self.post_init()

    def get_input_embeddings(self) -> nn.Module:
        return self.embeddings.patch_embeddings

    def _check_pixel_values(self, pixel_values: torch.Tensor | None, interpolate: bool) -> tuple[int, int]:
        """Raise a clear error for images the model cannot read; return the patch grid."""
        if pixel_values is None:
            raise ValueError("pixel_values: required")
        if pixel_values.ndim != 4:
            raise ValueError(
                f"pixel_values: expected (batch, channels, height, width), got shape {tuple(pixel_values.shape)}"
            )
        channels, height, width = pixel_values.shape[1:]
        if channels != self.config.num_channels:
            raise ValueError(f"pixel_values: expected {self.config.num_channels} channels, got {channels}")
        patch_h, patch_w = self.embeddings.patch_embeddings.patch_size
        if height < patch_h or width < patch_w:
            raise ValueError(f"pixel_values: a {height}x{width} image is smaller than one {patch_h}x{patch_w} patch")
        if not interpolate and (height, width) != tuple(self.embeddings.image_size):
            raise ValueError(
                f"pixel_values: input image size ({height}*{width}) doesn't match model "
                f"({self.embeddings.image_size[0]}*{self.embeddings.image_size[1]}); "
                "pass interpolate_pos_encoding=True for other sizes"
            )
        grid = (height // patch_h, width // patch_w)
        check_stages(self.config.reduction_method, self.config.reduction_stages, grid)
        return grid

    @can_return_tuple
    def forward(
        self,
        pixel_values: torch.Tensor | None = None,
        interpolate_pos_encoding: bool | None = None,
        output_attentions: bool | None = None,
        output_hidden_states: bool | None = None,
        output_token_provenance: bool = False,
        **kwargs,
    ) -> FreqViTModelOutput:
        r"""
        pixel_values (`torch.FloatTensor` of shape `(batch_size, num_channels, height, width)`): the images.
        interpolate_pos_encoding (`bool`): interpolate the position embeddings to another resolution; the DC windows
            follow the actual patch grid.
        output_token_provenance (`bool`, defaults to `False`): return, per reduction stage, where every original
            patch went (`TokenProvenance`). Costs nothing when off.
        """
        output_attentions = self.config.output_attentions if output_attentions is None else output_attentions
        output_hidden_states = (
            self.config.output_hidden_states if output_hidden_states is None else output_hidden_states
        )
        interpolate_pos_encoding = bool(interpolate_pos_encoding)
        grid = self._check_pixel_values(pixel_values, interpolate_pos_encoding)
        pixel_values = pixel_values.to(self.embeddings.patch_embeddings.projection.weight.dtype)
        hidden_states = self.embeddings(pixel_values, interpolate_pos_encoding=interpolate_pos_encoding)
        tokens = TokenState.initial(hidden_states.shape[0], grid, hidden_states.device, output_token_provenance)

        all_hidden_states = (hidden_states,) if output_hidden_states else None
        all_attentions = () if output_attentions else None
        for layer in self.layers:
            hidden_states, tokens, attention_probs = layer(hidden_states, tokens, output_attentions)
            if output_hidden_states:
                all_hidden_states += (hidden_states,)
            if output_attentions:
                all_attentions += (attention_probs,)

        sequence_output = self.layernorm(hidden_states)
        return FreqViTModelOutput(
            last_hidden_state=sequence_output,
            pooler_output=self.pooler(sequence_output) if self.pooler is not None else None,
            hidden_states=all_hidden_states,
            attentions=all_attentions,
            token_provenance=tokens.provenance if output_token_provenance else None,
        )


class FreqViTForImageClassification(FreqViTPreTrainedModel):
    """FreqViT with a linear classifier on the final CLS token, e.g. for ImageNet."""

    def __init__(self, config: FreqViTConfig):
        super().__init__(config)
        self.num_labels = config.num_labels
        self.vit = FreqViTModel(config, add_pooling_layer=False)
        self.classifier = nn.Linear(config.hidden_size, config.num_labels) if config.num_labels > 0 else nn.Identity()
        self.post_init()

    @can_return_tuple
    def forward(
        self,
        pixel_values: torch.Tensor | None = None,
        labels: torch.Tensor | None = None,
        interpolate_pos_encoding: bool | None = None,
        output_attentions: bool | None = None,
        output_hidden_states: bool | None = None,
        output_token_provenance: bool = False,
        **kwargs,
    ) -> FreqViTImageClassifierOutput:
        r"""
        labels (`torch.LongTensor` of shape `(batch_size,)`): class indices for the loss (cross-entropy, or MSE
            when `num_labels == 1`). See `FreqViTModel.forward` for the other arguments.
        """
        outputs = self.vit(
            pixel_values,
            interpolate_pos_encoding=interpolate_pos_encoding,
            output_attentions=output_attentions,
            output_hidden_states=output_hidden_states,
            output_token_provenance=output_token_provenance,
        )
        logits = self.classifier(outputs.last_hidden_state[:, 0, :])
        loss = self.loss_function(labels, logits, self.config, **kwargs) if labels is not None else None
        return FreqViTImageClassifierOutput(
            loss=loss,
            logits=logits,
            hidden_states=outputs.hidden_states,
            attentions=outputs.attentions,
            token_provenance=outputs.token_provenance,
        )


__all__ = [
    "FreqViTForImageClassification",
    "FreqViTModel",
    "FreqViTPreTrainedModel",
    "TokenProvenance",
]
