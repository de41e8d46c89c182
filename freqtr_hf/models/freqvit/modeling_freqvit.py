"""FreqViT: transformers' ViT with token-reducing blocks (frequency-aware token reduction, Lee et al., NeurIPS 2025,
and the baselines of "Which Tokens to Use?").

The model plumbing is method-agnostic: a block that reduces calls its `token_reducer` (see `reducers.py`) with the
hidden states, the attention maps and the `TokenState`; the reduction math lives in the `reduction_*` modules.
"""

import json
import re
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Self

import torch
from safetensors import safe_open
from torch import nn
from transformers import initialization as init
from transformers.conversion_mapping import get_checkpoint_conversion_mapping, register_checkpoint_conversion_mapping
from transformers.backbone_utils import BackboneMixin
from transformers.modeling_layers import GradientCheckpointingLayer
from transformers.modeling_outputs import BackboneOutput, BaseModelOutputWithPooling, ImageClassifierOutput
from transformers.modeling_utils import ALL_ATTENTION_FUNCTIONS
from transformers.models.vit.modeling_vit import (
    ViTAttention,
    ViTEmbeddings,
    ViTMLP,
    ViTPooler,
    ViTPreTrainedModel,
    eager_attention_forward,
)
from transformers.utils import CONFIG_NAME, SAFE_WEIGHTS_NAME, cached_file
from transformers.utils.generic import can_return_tuple

from .configuration_freqvit import FreqViTConfig
from .reducers import TOKEN_REDUCERS, TokenScore
from .reduction_frequency import received_attention
from .token_schedule import FIXED_OUTPUT_METHODS, check_stages, patch_grid
from .token_state import AttentionMaps, TokenProvenance, TokenState


# FreqViT keeps ViT's module names, so ViT's renaming of the Hub's legacy keys (`encoder.layer.N.attention.attention.
# query` -> `layers.N.attention.q_proj`, ...) applies; transformers applies it to its own classes only.
register_checkpoint_conversion_mapping("freqvit", get_checkpoint_conversion_mapping("ViTModel"), overwrite=True)


def selected_hidden_states(output_hidden_states: bool | int | list[int] | None, count: int) -> set[int]:
    """Which of the `count` hidden states (embeddings, then each block's output) to return: all for True, none for
    False/None, else the given indices (negative ones from the end, as in transformers; out of range select nothing)."""
    if output_hidden_states is None or isinstance(output_hidden_states, bool):
        return set(range(count)) if output_hidden_states else set()
    indices = [output_hidden_states] if isinstance(output_hidden_states, int) else list(output_hidden_states)
    return {index % count for index in indices if -count <= index < count}


# the parameters the reduction adds to a ViT (names matched with re.search): not in a ViT checkpoint; freq's own
# (ω1, ω2, DC position embeddings) start at zero, where they compute the method exactly
FREQ_PARAMETER_NAMES = (r"\.high_pass_gain$", r"\.dc_gain$", r"\.dc_position_embeddings$")
REDUCTION_PARAMETER_NAMES = (*FREQ_PARAMETER_NAMES, r"token_reducer\.")


def unused_reduction_parameters(model: nn.Module, weights_file: str, saved_method: str | None) -> list[str]:
    """The reduction parameters of a safetensors checkpoint saved with `model`'s reduction method that are non-zero
    (trained) and have no parameter of that name in `model`: what loading it into `model` leaves unused."""
    if saved_method != model.config.reduction_method or saved_method == "none":
        return []  # another method's parameters are unused by the user's choice
    own = {name.removeprefix("vit.") for name in model.state_dict()}
    with safe_open(weights_file, "pt") as weights:
        dropped = [
            name for name in weights.keys()
            if any(re.search(pattern, name) for pattern in REDUCTION_PARAMETER_NAMES)
            and current_name(name).removeprefix("vit.") not in own
        ]
        return [current_name(name) for name in dropped if weights.get_tensor(name).any()]


def current_name(name: str) -> str:
    """A checkpoint key in the module names of today's ViT (`encoder.layer.3.` -> `layers.3.`, ...), by the renaming
    transformers applies when it loads one."""
    for renaming in get_checkpoint_conversion_mapping("freqvit"):
        for source, target in zip(renaming.source_patterns, renaming.target_patterns):
            name = re.sub(source, target, name)
    return name


# queries per chunk of the eager attention when only the attention each key receives is wanted: a (B, h, n, n) tensor is
# never held whole at long sequences (577 tokens at 384 px); up to this length it is one chunk, in the fewest ops
QUERY_CHUNK = 256


def eager_attention(
    module: nn.Module,
    queries: torch.Tensor,
    keys: torch.Tensor,
    values: torch.Tensor,
    attention_mask: torch.Tensor | None,
    scaling: float,
    return_probs: bool,
    return_received: bool,
) -> tuple[torch.Tensor, torch.Tensor | None, torch.Tensor | None]:
    """ViT's eager attention in the fewest ops (in eager mode each is a kernel launch), for the blocks whose reducer
    reads the attention: it also returns the probabilities (B, h, n, n) and/or the attention each key receives (B, n)
    (`received_attention`, fp32). Without the probabilities it runs over chunks of `QUERY_CHUNK` queries, so that no
    (B, h, n, n) tensor exists at long sequences; the result is the same. The softmax runs in the input dtype,
    accumulating in fp32 as PyTorch's kernels do; dropout only in training. queries, keys, values (B, h, n, d), an
    additive bias (B, 1, 1, n) -> the output (B, n, h, d), the probabilities, the received attention (or None)."""
    length = queries.shape[2]
    chunks = [queries] if return_probs or length <= QUERY_CHUNK else queries.split(QUERY_CHUNK, dim=2)
    keys_t = keys.transpose(-1, -2)
    outputs, probs, received = [], None, None
    for chunk in chunks:
        logits = (chunk * scaling) @ keys_t  # the scaling on the (B, h, n, d) queries, not on the (B, h, n, n) logits
        if attention_mask is not None:
            logits = logits + attention_mask
        probs = logits.softmax(dim=-1)
        attended = probs
        if module.training and module.attention_dropout:
            attended = nn.functional.dropout(probs, p=module.attention_dropout)
        outputs.append(attended @ values)
        if return_received and len(chunks) == 1:
            received = received_attention(probs)
        elif return_received:  # column sums over the chunks, then the mean
            column_sums = probs.sum(dim=(1, 2), dtype=torch.float32)
            received = column_sums if received is None else received + column_sums
    if return_received and len(chunks) > 1:
        received = received / (queries.shape[1] * length)
    output = outputs[0] if len(outputs) == 1 else torch.cat(outputs, dim=2)
    return output.transpose(1, 2), probs if return_probs else None, received


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
        need_maps: bool = False,
        need_probs: bool = False,
        attention_mask: torch.Tensor | None = None,
        reweight: bool = True,
        need_received: bool = False,
    ) -> tuple[torch.Tensor, AttentionMaps | None]:
        """hidden_states (B, n, C), the last `num_merged` tokens being DC tokens, and an additive bias on the
        attention logits (B, 1, 1, n) -> (B, n, C) and, when `need_maps`, the `AttentionMaps` (queries, keys, values
        and, when `need_probs`, the probabilities (B, h, n, n), when `need_received` the attention each key receives
        (B, n), both before reweighting, which only eager attention gives). `reweight=False` skips the ω
        reweighting: the model does so when every ω is zero."""
        input_shape = hidden_states.shape[:-1]
        hidden_shape = (*input_shape, -1, self.head_dim)
        query_states = self.q_proj(hidden_states).view(hidden_shape).transpose(1, 2)
        key_states = self.k_proj(hidden_states).view(hidden_shape).transpose(1, 2)
        value_states = self.v_proj(hidden_states).view(hidden_shape).transpose(1, 2)

        values = value_states
        reweight = reweight and self.high_pass_gain is not None
        if reweight:
            row_gain = (1.0 + self.high_pass_gain)[None, :, None].expand(input_shape[0], -1, input_shape[1])
            if self.dc_gain is not None and num_merged:
                dc_rows = torch.arange(input_shape[1], device=hidden_states.device) >= input_shape[1] - num_merged
                row_gain = row_gain + torch.where(dc_rows, self.dc_gain[:, None], 0.0)
            values = value_states * row_gain[..., None].to(value_states.dtype)

        attn_weights, received = None, None
        if need_probs or need_received:
            attn_output, attn_weights, received = eager_attention(
                self, query_states, key_states, values, attention_mask, self.scaling, need_probs, need_received
            )
        else:
            attention_interface: Callable = ALL_ATTENTION_FUNCTIONS.get_interface(
                self.config._attn_implementation, eager_attention_forward
            )
            attn_output, _ = attention_interface(
                self,
                query_states,
                key_states,
                values,
                attention_mask,
                dropout=0.0 if not self.training else self.attention_dropout,
                scaling=self.scaling,
            )
        if reweight:
            # the low-pass part A_LP V = mean over keys of V; (B, 1, h, head_dim) against (B, n, h, head_dim)
            low_pass = value_states.mean(dim=2)[:, None] * self.high_pass_gain[:, None].to(value_states.dtype)
            attn_output = attn_output - low_pass
        attn_output = attn_output.reshape(*input_shape, -1).contiguous()
        maps = None
        if need_maps:
            maps = AttentionMaps(query_states, key_states, value_states, self.scaling, attn_weights, received)
        return self.o_proj(attn_output), maps


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
            self.token_reducer = TOKEN_REDUCERS[config.reduction_method](config, stages, index)

    def forward(
        self,
        hidden_states: torch.Tensor,
        tokens: TokenState,
        output_attentions: bool = False,
        reweight: bool = True,
    ) -> tuple[torch.Tensor, TokenState, torch.Tensor | None]:
        """hidden_states (B, n, C) -> (B, n', C) with n' < n in a reduction block, the new `TokenState`, and the
        attention probabilities (B, h, n, n) when the reducer needs them or `output_attentions`. `reweight`: apply
        the ω reweighting (see `FreqViTModel.reweights_attention`)."""
        reducer = self.token_reducer
        need_probs = output_attentions or (reducer is not None and reducer.needs_attention_probs)
        need_received = reducer is not None and reducer.needs_received_attention
        residual = hidden_states
        hidden_states = self.layernorm_before(hidden_states)
        bias = tokens.attention_bias(hidden_states.dtype)
        hidden_states, maps = self.attention(
            hidden_states, tokens.num_merged, need_probs or reducer is not None, need_probs, bias, reweight,
            need_received,
        )
        hidden_states = self.drop(hidden_states) + residual

        if self.token_reducer is not None:
            hidden_states, tokens = self.token_reducer(hidden_states, maps, tokens)

        residual = hidden_states
        hidden_states = self.layernorm_after(hidden_states)
        hidden_states = self.drop(self.mlp(hidden_states)) + residual
        return hidden_states, tokens, maps.probs if output_attentions else None

    def drop(self, hidden_states: torch.Tensor) -> torch.Tensor:
        """ViT's dropout on a residual branch; outside training not even dispatched (each op costs a launch)."""
        return self.dropout(hidden_states) if self.training and self.dropout.p else hidden_states


@dataclass
class FreqViTModelOutput(BaseModelOutputWithPooling):
    """`BaseModelOutputWithPooling` of a token-reducing ViT.

    last_hidden_state: (B, n_L, C), n_L the final token count (68 for 224 px, patch 16, the default schedule).
    hidden_states: when asked, the embeddings and each block's output, (B, n_l, C), n_l the length *after* block l
        (a reduction block's output is already reduced).
    attentions: when asked, each block's attention probabilities (B, h, n, n) over its *input* sequence, before
        the ω reweighting.
    token_provenance: when asked, one `TokenProvenance` per reduction stage.
    auxiliary_loss: in training, the loss terms the reduction method adds (DynamicViT's keep-ratio loss), else None.
    """

    token_provenance: tuple[TokenProvenance, ...] | None = None
    auxiliary_loss: torch.FloatTensor | None = None


@dataclass
class FreqViTImageClassifierOutput(ImageClassifierOutput):
    """`ImageClassifierOutput` with `token_provenance` and `auxiliary_loss` (see `FreqViTModelOutput`); `loss`
    already includes `auxiliary_loss`."""

    token_provenance: tuple[TokenProvenance, ...] | None = None
    auxiliary_loss: torch.FloatTensor | None = None


class FreqViTPreTrainedModel(ViTPreTrainedModel):
    config_class = FreqViTConfig
    config: FreqViTConfig
    _no_split_modules = ["ViTEmbeddings", "FreqViTLayer"]
    _can_record_outputs = {}
    # Zero-initialised reduction parameters compute the method exactly: a ViT checkpoint without them is complete.
    # Parameters that need training (DynamicViT's predictor, SiT, PatchMerger, Sinkhorn) are still reported missing.
    _keys_to_ignore_on_load_missing = [*FREQ_PARAMETER_NAMES, r"token_reducer\.token_score\."]
    # and a FreqViT checkpoint loaded with another method (or unreduced) leaves its reduction parameters unused;
    # `from_pretrained` warns when that drops trained ones of the same method (another schedule)
    _keys_to_ignore_on_load_unexpected = list(REDUCTION_PARAMETER_NAMES)

    @classmethod
    def from_pretrained(cls, pretrained_model_name_or_path, *args, **kwargs):
        """`PreTrainedModel.from_pretrained`; warns when the checkpoint holds trained (non-zero) reduction parameters
        of the same method that this model has no place for (another `reduction_layers`, say): they are not used."""
        loaded = super().from_pretrained(pretrained_model_name_or_path, *args, **kwargs)
        if pretrained_model_name_or_path is None:  # weights given as `state_dict`: no checkpoint to look at
            return loaded
        model = loaded[0] if isinstance(loaded, tuple) else loaded
        options = dict(_raise_exceptions_for_missing_entries=False, _raise_exceptions_for_connection_errors=False)
        options |= {key: kwargs[key] for key in ("revision", "cache_dir", "token", "subfolder", "local_files_only")
                    if key in kwargs}
        source = str(pretrained_model_name_or_path)
        weights = cached_file(source, SAFE_WEIGHTS_NAME, **options)
        saved_config = cached_file(source, CONFIG_NAME, **options)
        unused = []
        if weights and saved_config:
            saved_method = json.loads(Path(saved_config).read_text()).get("reduction_method")
            unused = unused_reduction_parameters(model, weights, saved_method)
        if unused:
            warnings.warn(
                f"{pretrained_model_name_or_path}: {len(unused)} trained reduction parameter(s) of "
                f"{model.config.reduction_method!r} have no place in this model's reduction (reduction_layers "
                f"{list(model.config.reduction_layers)}, dc_window_sizes {list(model.config.dc_window_sizes)}) and are "
                f"not used: {', '.join(unused[:3])}{', ...' if len(unused) > 3 else ''}; load it with the schedule it "
                "was trained with to use them",
                stacklevel=2,
            )
        return loaded

    def reduction_parameters(self) -> dict[str, nn.Parameter]:
        """The parameters the token reduction adds to ViT, by name: freq's ω1 (`high_pass_gain`), ω2 (`dc_gain`)
        and DC position embeddings, and the learned reducers' own weights. What calibration trains."""
        return {
            name: parameter for name, parameter in self.named_parameters()
            if any(re.search(pattern, name) for pattern in REDUCTION_PARAMETER_NAMES)
        }

    @torch.no_grad()
    def _init_weights(self, module: nn.Module) -> None:
        super()._init_weights(module)
        # the frequency method's parameters start at zero, so a pretrained ViT is unchanged until fine-tuning
        for name in ("high_pass_gain", "dc_gain", "dc_position_embeddings"):
            parameter = getattr(module, name, None)
            if isinstance(parameter, nn.Parameter):
                init.zeros_(parameter)
        # DPC-KNN's token score starts at zero: plain cluster means until fine-tuning
        if isinstance(module, TokenScore):
            init.zeros_(module.weight)
            init.zeros_(module.bias)
        for name in ("queries", "centres"):  # PatchMerger's queries, Sinkhorn's centres
            parameter = getattr(module, name, None)
            if isinstance(parameter, nn.Parameter):
                init.trunc_normal_(parameter, std=self.config.initializer_range)


class FreqViTModel(FreqViTPreTrainedModel):
    """ViT encoder whose blocks reduce tokens as `config` says; loads any ViT/DeiT checkpoint."""

    def __init__(self, config: FreqViTConfig, add_pooling_layer: bool = True):
        config.validate_reduction()  # fields may have been changed since the config was made
        super().__init__(config)
        self._built_reduction = config.reduction_signature()
        self.embeddings = ViTEmbeddings(config)
        self.layers = nn.ModuleList([FreqViTLayer(config, i) for i in range(config.num_hidden_layers)])
        self.layernorm = nn.LayerNorm(config.hidden_size, eps=config.layer_norm_eps)
        self.pooler = ViTPooler(config) if add_pooling_layer else None
        self._omega_version, self._omega_nonzero = None, True
        self.post_init()

    def reweights_attention(self) -> bool:
        """Whether the ω reweighting changes anything. At inference with every ω1 = ω2 = 0 (a model loaded off the
        shelf) it is the identity and is skipped; under `torch.compile`, in training and with gradients on it always
        runs. On the CPU the ω are read at every forward (three small ops). On an accelerator that read would
        synchronise the host, so the answer is kept until an ω changes: a new version counter or storage (in-place
        writes, optimiser steps, `load_state_dict`, `.to()`) or a `train()` / `eval()` call. A write through `.data`
        bumps no version counter: call `model.eval()` after one."""
        gains = [
            gain for layer in self.layers for gain in (layer.attention.high_pass_gain, layer.attention.dc_gain)
            if gain is not None
        ]
        if not gains:
            return False
        if self.training or torch.is_grad_enabled() or torch.compiler.is_compiling():
            return True
        devices = {gain.device for gain in gains}
        if any(device.type == "meta" for device in devices):  # offloaded layers (accelerate) hold no values yet
            return True
        # built in inference mode, a tensor has no version counter
        if devices == {torch.device("cpu")} or any(gain.is_inference() for gain in gains):
            return self._any_nonzero(gains, devices)
        version = tuple((gain.data_ptr(), gain._version) for gain in gains)
        if self._omega_version != version:
            self._omega_version, self._omega_nonzero = version, self._any_nonzero(gains, devices)
        return self._omega_nonzero

    @staticmethod
    def _any_nonzero(gains: list[torch.Tensor], devices: set[torch.device]) -> bool:
        # one op on one device; one by one where layers sit on several (device_map)
        return bool(torch.cat(gains).any()) if len(devices) == 1 else any(bool(gain.any()) for gain in gains)

    def train(self, mode: bool = True) -> Self:
        """`nn.Module.train`; it also drops the cached zero-ω answer (see `reweights_attention`)."""
        self._omega_version = None
        return super().train(mode)

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
        signature = self.config.reduction_signature()
        changed = [name for name, value in signature.items() if self._built_reduction[name] != value]
        if changed:
            raise ValueError(
                f"config: {', '.join(changed)} changed after the model was built, so the model would not compute "
                "what the config says; build a new model from the changed config"
            )
        method = self.config.reduction_method
        if self.config.weights_attention_keys and self.config._attn_implementation not in ("eager", "sdpa"):
            raise ValueError(
                f"attn_implementation: {method!r} weights attention keys (an additive bias), which only 'eager' and "
                f"'sdpa' take; got {self.config._attn_implementation!r}"
            )
        grid = (height // patch_h, width // patch_w)
        configured = patch_grid(self.config.image_size, self.config.patch_size)
        # transformers' ViT keeps its position embeddings for a square image of the configured grid, else interpolates
        interpolated = interpolate and (grid[0] * grid[1] != configured[0] * configured[1] or height != width)
        if interpolated and (not isinstance(self.config.patch_size, int) or configured[0] != configured[1]):
            raise ValueError(
                "interpolate_pos_encoding: transformers' ViT interpolates a square grid of position embeddings cut "
                f"by one int patch_size; this model has image_size {self.config.image_size} and patch_size "
                f"{self.config.patch_size}"
            )
        if method in FIXED_OUTPUT_METHODS and grid != configured and self.config.reduction_stages:
            raise ValueError(
                f"reduction_method: {method!r} merges into as many learned outputs as its {configured[0]}x"
                f"{configured[1]} patch grid gives, so it runs on that grid only; got {grid[0]}x{grid[1]} patches"
            )
        check_stages(method, self.config.reduction_stages, grid)
        return grid

    @can_return_tuple
    def forward(
        self,
        pixel_values: torch.Tensor | None = None,
        interpolate_pos_encoding: bool | None = None,
        output_attentions: bool | None = None,
        output_hidden_states: bool | int | list[int] | None = None,
        output_token_provenance: bool = False,
        restore_hidden_states: bool = False,
        **kwargs,
    ) -> FreqViTModelOutput:
        r"""
        pixel_values (`torch.FloatTensor` of shape `(batch_size, num_channels, height, width)`): the images.
        interpolate_pos_encoding (`bool`): interpolate the position embeddings to another resolution; the DC windows
            follow the actual patch grid.
        output_hidden_states (`bool`, `int` or `list[int]`): all hidden states, or those at the given indices
            (0 is the embeddings, i the output of block i; negative indices count from the end).
        output_token_provenance (`bool`, defaults to `False`): return, per reduction stage, where every original
            patch went (`TokenProvenance`). Costs nothing when off.
        restore_hidden_states (`bool`, defaults to `False`): return the hidden states in ViT's layout, (B, 1 + P, C)
            (CLS, then every patch of the grid), the patches that left the sequence restored as
            `config.token_restoration` says (what `FreqViTBackbone` reads).
        """
        output_attentions = self.config.output_attentions if output_attentions is None else output_attentions
        output_hidden_states = (
            self.config.output_hidden_states if output_hidden_states is None else output_hidden_states
        )
        interpolate_pos_encoding = bool(interpolate_pos_encoding)
        grid = self._check_pixel_values(pixel_values, interpolate_pos_encoding)
        pixel_values = pixel_values.to(self.embeddings.patch_embeddings.projection.weight.dtype)
        hidden_states = self.embeddings(pixel_values, interpolate_pos_encoding=interpolate_pos_encoding)
        restoration = self.config.token_restoration if restore_hidden_states else None
        tokens = TokenState.initial(
            hidden_states.shape[0], grid, hidden_states.device, output_token_provenance, restoration
        )

        keep_hidden = selected_hidden_states(output_hidden_states, len(self.layers) + 1)
        all_hidden_states = (hidden_states,) if 0 in keep_hidden else ()
        all_attentions = () if output_attentions else None
        reweight = self.reweights_attention()
        for index, layer in enumerate(self.layers, start=1):
            hidden_states, tokens, attention_probs = layer(hidden_states, tokens, output_attentions, reweight)
            if index in keep_hidden:
                all_hidden_states += (tokens.restore(hidden_states) if restoration else hidden_states,)
            if output_attentions:
                all_attentions += (attention_probs,)

        sequence_output = self.layernorm(hidden_states)
        return FreqViTModelOutput(
            last_hidden_state=sequence_output,
            pooler_output=self.pooler(sequence_output) if self.pooler is not None else None,
            hidden_states=None if output_hidden_states is None or output_hidden_states is False else all_hidden_states,
            attentions=all_attentions,
            token_provenance=tokens.provenance if output_token_provenance else None,
            auxiliary_loss=tokens.auxiliary_loss,
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
        output_hidden_states: bool | int | list[int] | None = None,
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
        if loss is not None and outputs.auxiliary_loss is not None:
            loss = loss + outputs.auxiliary_loss
        return FreqViTImageClassifierOutput(
            loss=loss,
            logits=logits,
            hidden_states=outputs.hidden_states,
            attentions=outputs.attentions,
            token_provenance=outputs.token_provenance,
            auxiliary_loss=outputs.auxiliary_loss,
        )


class FreqViTBackbone(BackboneMixin, FreqViTModel):
    """FreqViT as a backbone for dense heads (UperNet, DPT, ...), in transformers' backbone convention: the feature
    maps of the stages in `config.out_features`, each over the full patch grid whatever the reduction: the tokens
    that are still patches at their place, the others restored (`config.token_restoration`). Any resolution (the
    position embeddings are interpolated) and any ViT/DeiT checkpoint."""

    def __init__(self, config: FreqViTConfig):
        super().__init__(config, add_pooling_layer=False)
        self.num_features = [config.hidden_size] * (config.num_hidden_layers + 1)

    @can_return_tuple
    def forward(
        self,
        pixel_values: torch.Tensor | None = None,
        output_hidden_states: bool | None = None,
        output_attentions: bool | None = None,
        **kwargs,
    ) -> BackboneOutput:
        r"""
        pixel_values (`torch.FloatTensor` of shape `(batch_size, num_channels, height, width)`): the images, any size
            of whole patches.

        Returns `BackboneOutput`: `feature_maps`, one per stage of `out_features`, (B, C, H/p, W/p), or with
        `reshape_hidden_states=False` (B, 1 + H/p · W/p, C), CLS first; `hidden_states` (when asked) every stage in
        ViT's layout, restored.
        """
        output_hidden_states = self.config.output_hidden_states if output_hidden_states is None else output_hidden_states
        wanted = [self.stage_names.index(name) for name in self.out_features]
        outputs = FreqViTModel.forward(  # BackboneMixin comes first and has a forward of its own
            self,
            pixel_values,
            interpolate_pos_encoding=True,
            output_attentions=output_attentions,
            output_hidden_states=True if output_hidden_states else wanted,
            restore_hidden_states=True,
        )
        selected = outputs.hidden_states
        if output_hidden_states:
            selected = tuple(outputs.hidden_states[index] for index in wanted)
        patch_h, patch_w = self.embeddings.patch_embeddings.patch_size
        rows, cols = pixel_values.shape[2] // patch_h, pixel_values.shape[3] // patch_w
        feature_maps = ()
        for hidden_state in selected:
            if self.config.apply_layernorm:
                hidden_state = self.layernorm(hidden_state)
            if self.config.reshape_hidden_states:
                hidden_state = hidden_state[:, 1:].unflatten(1, (rows, cols)).permute(0, 3, 1, 2).contiguous()
            feature_maps += (hidden_state,)
        return BackboneOutput(
            feature_maps=feature_maps,
            hidden_states=outputs.hidden_states if output_hidden_states else None,
            attentions=outputs.attentions,
        )


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
