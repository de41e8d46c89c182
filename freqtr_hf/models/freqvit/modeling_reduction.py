"""The model plumbing every reducing family shares (ViT, DINOv2, CLIP, SigLIP): the attention that hands its maps to a
reducer, the block that reduces after its attention, the loop over the blocks with the `TokenState`, the backbone's
full-grid feature maps, and the loading rules. A family module holds only what differs: its embeddings, the names and
order of its block's modules, and what it makes of the final sequence.

The plumbing is method-agnostic: a block that reduces calls its `token_reducer` (see `reducers.py`) with the hidden
states, the attention maps and the `TokenState`; the reduction math lives in the `reduction_*` modules.
"""

import json
import math
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
from transformers.conversion_mapping import get_checkpoint_conversion_mapping
from transformers.modeling_layers import GradientCheckpointingLayer
from transformers.modeling_outputs import BackboneOutput, BaseModelOutputWithPooling, ImageClassifierOutput
from transformers.modeling_utils import ALL_ATTENTION_FUNCTIONS
from transformers.models.vit.modeling_vit import eager_attention_forward
from transformers.utils import CONFIG_NAME, SAFE_WEIGHTS_NAME, cached_file
from transformers.utils.generic import can_return_tuple

from .configuration_reduction import ReductionConfigMixin
from .reducers import TOKEN_REDUCERS, TokenScore
from .reduction_frequency import received_attention
from .token_schedule import FIXED_OUTPUT_METHODS, check_stages, pair, patch_grid
from .token_state import AttentionMaps, TokenProvenance, TokenState


def selected_hidden_states(output_hidden_states: bool | int | list[int] | None, count: int) -> set[int]:
    """Which of the `count` hidden states (embeddings, then each block's output) to return: all for True, none for
    False/None, else the given indices (negative ones from the end, as in transformers; out of range select nothing)."""
    if output_hidden_states is None or isinstance(output_hidden_states, bool):
        return set(range(count)) if output_hidden_states else set()
    indices = [output_hidden_states] if isinstance(output_hidden_states, int) else list(output_hidden_states)
    return {index % count for index in indices if -count <= index < count}


# the parameters the reduction adds to a model (names matched with re.search): not in the family's checkpoints;
# freq's own (ω1, ω2, DC position embeddings) start at zero, where they compute the method exactly
FREQ_PARAMETER_NAMES = (r"\.high_pass_gain$", r"\.dc_gain$", r"\.dc_position_embeddings$")
REDUCTION_PARAMETER_NAMES = (*FREQ_PARAMETER_NAMES, r"token_reducer\.")


def unused_reduction_parameters(model: nn.Module, weights_file: str, saved_method: str | None) -> list[str]:
    """The reduction parameters of a safetensors checkpoint saved with `model`'s reduction method that are non-zero
    (trained) and have no parameter of that name in `model`: what loading it into `model` leaves unused."""
    if saved_method != model.config.reduction_method or saved_method == "none":
        return []  # another method's parameters are unused by the user's choice
    prefix = f"{model.base_model_prefix}."
    own = {name.removeprefix(prefix) for name in model.state_dict()}
    with safe_open(weights_file, "pt") as weights:
        dropped = [
            name for name in weights.keys()
            if any(re.search(pattern, name) for pattern in REDUCTION_PARAMETER_NAMES)
            and current_name(name, model.config.model_type).removeprefix(prefix) not in own
        ]
        return [current_name(name, model.config.model_type) for name in dropped if weights.get_tensor(name).any()]


def current_name(name: str, model_type: str) -> str:
    """A checkpoint key in today's module names (ViT's `encoder.layer.3.` -> `layers.3.`, ...), by the renaming
    transformers applies when it loads one into a model of `model_type`."""
    for renaming in get_checkpoint_conversion_mapping(model_type) or []:
        for source, target in zip(renaming.source_patterns, renaming.target_patterns):
            name = re.sub(source, target, name)
    return name


# When only the attention each key receives is wanted, the eager attention runs over chunks of queries, so that no
# (B, h, n, n) tensor is held whole at long sequences. Up to `QUERY_CHUNK` tokens it is one chunk, in the fewest ops;
# beyond, a chunk's probabilities (B, h, c, n) hold about `CHUNK_VALUES` values, c a power of two from 32 to
# `QUERY_CHUNK`, which a CPU's caches keep (DINOv2-S at 1,370 tokens, batch 4: 156 ms a block's attention against 205
# with 256 queries a chunk, and 247 whole; `benchmarks/speed.py --score-study`)
QUERY_CHUNK = 256
CHUNK_VALUES = 2**22


def query_chunk(batch: int, heads: int, length: int) -> int:
    """Queries per chunk of `eager_attention` for a (batch, heads, length) attention, when only the received attention
    is wanted."""
    if length <= QUERY_CHUNK:
        return length
    fitting = max(CHUNK_VALUES // (batch * heads * length), 1)
    nearest = 2 ** round(math.log2(fitting))
    return min(max(nearest, 32), QUERY_CHUNK)


def eager_attention(
    queries: torch.Tensor,
    keys: torch.Tensor,
    values: torch.Tensor,
    attention_mask: torch.Tensor | None,
    scaling: float,
    dropout: float,
    return_probs: bool,
    return_received: bool,
) -> tuple[torch.Tensor, torch.Tensor | None, torch.Tensor | None]:
    """Eager attention in the fewest ops (in eager mode each is a kernel launch), for the blocks whose reducer reads
    the attention: it also returns the probabilities (B, h, n, n) and/or the attention each key receives (B, n)
    (`received_attention`, fp32). Without the probabilities it runs over chunks of queries (`query_chunk`), so that no
    (B, h, n, n) tensor exists at long sequences; the result is the same. The softmax runs in the input dtype,
    accumulating in fp32 as PyTorch's kernels do; `dropout` is the attention dropout (0 outside training).
    queries, keys, values (B, h, n, d), an additive bias (B, 1, 1, n) -> the output (B, n, h, d), the probabilities,
    the received attention (or None)."""
    batch, heads, length = queries.shape[:3]
    chunks = [queries] if return_probs else queries.split(query_chunk(batch, heads, length), dim=2)
    keys_t = keys.transpose(-1, -2)
    outputs, probs, received = [], None, None
    for chunk in chunks:
        logits = (chunk * scaling) @ keys_t  # the scaling on the (B, h, n, d) queries, not on the (B, h, n, n) logits
        if attention_mask is not None:
            logits = logits + attention_mask
        probs = logits.softmax(dim=-1)
        attended = nn.functional.dropout(probs, p=dropout) if dropout else probs
        outputs.append(attended @ values)
        if return_received and len(chunks) == 1:
            received = received_attention(probs)
        elif return_received:  # column sums over the chunks, then the mean
            column_sums = probs.sum(dim=(1, 2), dtype=torch.float32)
            received = column_sums if received is None else received + column_sums
    if return_received and len(chunks) > 1:
        received = received / (heads * length)
    output = outputs[0] if len(outputs) == 1 else torch.cat(outputs, dim=2)
    return output.transpose(1, 2), probs if return_probs else None, received


class ReducingAttention(nn.Module):
    """Mixin for a family's self-attention (put before it in the bases): the frequency-aware reweighting
    `Â = A + ω1·(A − 1/n) + ω2·A⊙M_DC` (per head), and the `AttentionMaps` a reducer reads.

    Â is never materialised: `Â V = A V' − ω1·mean(V)` with `V' = (1 + ω1)·V` and the DC rows `(1 + ω1 + ω2)·V`,
    so any attention kernel (eager, sdpa, flash) computes it. ω1 = ω2 = 0 leaves the attention unchanged.
    The family's attention provides `q_proj`, `k_proj`, `v_proj`, `head_dim`, `config` and, under these names,
    its scaling, its attention dropout and its output projection.
    """

    def __init__(self, config: ReductionConfigMixin, layer_idx: int):
        super().__init__(config)
        if not hasattr(self, "scaling"):  # CLIP's and SigLIP's names for them
            self.scaling, self.attention_dropout = self.scale, self.dropout
        stages = config.reduction_stages
        reweighting = config.attention_reweighting and config.reduction_method == "freq" and bool(stages)
        heads = config.num_attention_heads
        self.high_pass_gain = nn.Parameter(torch.zeros(heads)) if reweighting else None
        sees_dc_tokens = reweighting and layer_idx > stages[0].layer
        self.dc_gain = nn.Parameter(torch.zeros(heads)) if sees_dc_tokens else None

    @property
    def output_projection(self) -> nn.Module:
        """The projection after the heads (`o_proj`; CLIP and SigLIP: `out_proj`)."""
        return self.o_proj if hasattr(self, "o_proj") else self.out_proj

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

        dropout = self.attention_dropout if self.training else 0.0
        attn_weights, received = None, None
        if need_probs or need_received:
            attn_output, attn_weights, received = eager_attention(
                query_states, key_states, values, attention_mask, self.scaling, dropout, need_probs, need_received
            )
        else:
            attention_interface: Callable = ALL_ATTENTION_FUNCTIONS.get_interface(
                self.config._attn_implementation, eager_attention_forward
            )
            attn_output, _ = attention_interface(
                self, query_states, key_states, values, attention_mask, dropout=dropout, scaling=self.scaling
            )
        if reweight:
            # the low-pass part A_LP V = mean over keys of V; (B, 1, h, head_dim) against (B, n, h, head_dim)
            low_pass = value_states.mean(dim=2)[:, None] * self.high_pass_gain[:, None].to(value_states.dtype)
            attn_output = attn_output - low_pass
        attn_output = attn_output.reshape(*input_shape, -1).contiguous()
        maps = None
        if need_maps:
            maps = AttentionMaps(query_states, key_states, value_states, self.scaling, attn_weights, received)
        return self.output_projection(attn_output), maps


class ReducingLayer(GradientCheckpointingLayer):
    """A pre-norm transformer block that, where the schedule says, reduces tokens after its attention + residual,
    before its MLP. A family's block builds its modules under its checkpoint's names and says how they chain:
    `attention` (a `ReducingAttention`), `attention_input` (the norm before it), `attention_branch` (what its output
    goes through before the residual: layer scale, drop path, dropout) and `feed_forward` (norm, MLP and the same)."""

    def __init__(self, config: ReductionConfigMixin, layer_idx: int):
        super().__init__()
        stages = config.reduction_stages
        index = next((i for i, stage in enumerate(stages) if stage.layer == layer_idx), None)
        self.token_reducer = None
        if index is not None:
            self.token_reducer = TOKEN_REDUCERS[config.reduction_method](config, stages, index)

    @property
    def reducing_attention(self) -> ReducingAttention:
        """The block's attention (`attention`; CLIP and SigLIP: `self_attn`)."""
        return self.attention

    def attention_input(self, hidden_states: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def attention_branch(self, attended: torch.Tensor) -> torch.Tensor:
        return attended

    def feed_forward(self, hidden_states: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def forward(
        self,
        hidden_states: torch.Tensor,
        tokens: TokenState,
        output_attentions: bool = False,
        reweight: bool = True,
    ) -> tuple[torch.Tensor, TokenState, torch.Tensor | None]:
        """hidden_states (B, n, C) -> (B, n', C) with n' < n in a reduction block, the new `TokenState`, and the
        attention probabilities (B, h, n, n) when the reducer needs them or `output_attentions`. `reweight`: apply
        the ω reweighting (see `ReducingModelMixin.reweights_attention`)."""
        reducer = self.token_reducer
        need_probs = output_attentions or (reducer is not None and reducer.needs_attention_probs)
        need_received = reducer is not None and reducer.needs_received_attention
        residual = hidden_states
        hidden_states = self.attention_input(hidden_states)
        bias = tokens.attention_bias(hidden_states.dtype)
        hidden_states, maps = self.reducing_attention(
            hidden_states, tokens.num_merged, need_probs or reducer is not None, need_probs, bias, reweight,
            need_received,
        )
        hidden_states = self.attention_branch(hidden_states) + residual
        if reducer is not None:
            hidden_states, tokens = reducer(hidden_states, maps, tokens)
        hidden_states = self.feed_forward(hidden_states) + hidden_states
        return hidden_states, tokens, maps.probs if output_attentions else None

    def dropout_in_training(self, dropout: nn.Module, hidden_states: torch.Tensor) -> torch.Tensor:
        """A residual branch's dropout or drop path; outside training not even dispatched (each op costs a launch)."""
        rate = getattr(dropout, "p", None) or getattr(dropout, "drop_prob", 0.0)  # nn.Dropout's, or drop path's
        return dropout(hidden_states) if self.training and rate else hidden_states


class CLIPStyleLayer(ReducingLayer):
    """The block of CLIP and SigLIP: `layer_norm1`, `self_attn`, `layer_norm2`, `mlp`, plain residuals. A family
    names its attention (a `ReducingAttention`) and MLP classes."""

    attention_class: type[ReducingAttention]
    mlp_class: type[nn.Module]

    def __init__(self, config: ReductionConfigMixin, layer_idx: int):
        super().__init__(config, layer_idx)
        self.self_attn = self.attention_class(config, layer_idx)
        self.layer_norm1 = nn.LayerNorm(config.hidden_size, eps=config.layer_norm_eps)
        self.mlp = self.mlp_class(config)
        self.layer_norm2 = nn.LayerNorm(config.hidden_size, eps=config.layer_norm_eps)

    @property
    def reducing_attention(self) -> ReducingAttention:
        return self.self_attn

    def attention_input(self, hidden_states: torch.Tensor) -> torch.Tensor:
        return self.layer_norm1(hidden_states)

    def feed_forward(self, hidden_states: torch.Tensor) -> torch.Tensor:
        return self.mlp(self.layer_norm2(hidden_states))


class BlockStack(nn.Module):
    """The blocks under the names a family's checkpoints give them: `encoder.layer.N` (DINOv2), `encoder.layers.N`
    (CLIP, SigLIP)."""

    def __init__(self, name: str, blocks: list[ReducingLayer]):
        super().__init__()
        self.blocks_name = name
        self.add_module(name, nn.ModuleList(blocks))

    @property
    def blocks(self) -> nn.ModuleList:
        return getattr(self, self.blocks_name)


@dataclass
class FreqViTModelOutput(BaseModelOutputWithPooling):
    """`BaseModelOutputWithPooling` of a token-reducing model (any family).

    last_hidden_state: (B, n_L, C), n_L the final token count (68 for ViT at 224 px, patch 16, the default schedule).
    hidden_states: when asked, the embeddings and each block's output, (B, n_l, C), n_l the length *after* block l
        (a reduction block's output is already reduced), or with `restore_hidden_states` every patch of the grid.
    attentions: when asked, each block's attention probabilities (B, h, n, n) over its *input* sequence, before
        the ω reweighting.
    token_provenance: when asked, one `TokenProvenance` per reduction stage.
    token_sizes: when asked, (B, n_L) the original patches each final token stands for (CLS and registers 0).
    auxiliary_loss: in training, the loss terms the reduction method adds (DynamicViT's keep-ratio loss), else None.
    """

    token_provenance: tuple[TokenProvenance, ...] | None = None
    token_sizes: torch.Tensor | None = None
    auxiliary_loss: torch.FloatTensor | None = None


@dataclass
class FreqViTImageClassifierOutput(ImageClassifierOutput):
    """`ImageClassifierOutput` with `token_provenance` and `auxiliary_loss` (see `FreqViTModelOutput`); `loss`
    already includes `auxiliary_loss`."""

    token_provenance: tuple[TokenProvenance, ...] | None = None
    auxiliary_loss: torch.FloatTensor | None = None


class ReducingPreTrainedModel:
    """Mixin for a family's `PreTrainedModel` (put before it in the bases): the loading rules of the reduction
    parameters and their initialisation."""

    # Zero-initialised reduction parameters compute the method exactly: a checkpoint without them is complete.
    # Parameters that need training (DynamicViT's predictor, SiT, PatchMerger, Sinkhorn) are still reported missing.
    _keys_to_ignore_on_load_missing = [*FREQ_PARAMETER_NAMES, r"token_reducer\.token_score\."]
    # and a checkpoint loaded with another method (or unreduced) leaves its reduction parameters unused;
    # `from_pretrained` warns when that drops trained ones of the same method (another schedule)
    _keys_to_ignore_on_load_unexpected = list(REDUCTION_PARAMETER_NAMES)
    _can_record_outputs = {}

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
        """The parameters the token reduction adds to the family's model, by name: freq's ω1 (`high_pass_gain`), ω2
        (`dc_gain`) and DC position embeddings, and the learned reducers' own weights. What calibration trains."""
        return {
            name: parameter for name, parameter in self.named_parameters()
            if any(re.search(pattern, name) for pattern in REDUCTION_PARAMETER_NAMES)
        }

    @torch.no_grad()
    def _init_weights(self, module: nn.Module) -> None:
        super()._init_weights(module)
        # the frequency method's parameters start at zero, so a pretrained model is unchanged until fine-tuning
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


class ReducingModelMixin:
    """Mixin for a family's encoder model (put before its `PreTrainedModel` in the bases): the forward pass through
    the reducing blocks. A family keeps its `ReducingLayer`s in `encoder` (a `BlockStack`) or says where they are
    (`blocks`), provides `embed` (pixels -> the sequence of prefix tokens and patches, (B, p + P, C)) and `finish`
    (the final sequence -> last hidden state and pooled output), and says whether its embeddings always interpolate
    position embeddings (DINOv2's do)."""

    always_interpolates = False

    def _start_reduction(self) -> None:
        """Call in `__init__` before building the blocks."""
        self.config.validate_reduction()  # fields may have been changed since the config was made
        self._built_reduction = self.config.reduction_signature()
        self._omega_version, self._omega_nonzero = None, True

    @property
    def blocks(self) -> nn.ModuleList:
        return self.encoder.blocks

    def embed(self, pixel_values: torch.Tensor, interpolate_pos_encoding: bool) -> torch.Tensor:
        raise NotImplementedError

    def finish(self, hidden_states: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None]:
        raise NotImplementedError

    def reweights_attention(self) -> bool:
        """Whether the ω reweighting changes anything. At inference with every ω1 = ω2 = 0 (a model loaded off the
        shelf) it is the identity and is skipped; under `torch.compile`, in training and with gradients on it always
        runs. On the CPU the ω are read at every forward (three small ops). On an accelerator that read would
        synchronise the host, so the answer is kept until an ω changes: a new version counter or storage (in-place
        writes, optimiser steps, `load_state_dict`, `.to()`) or a `train()` / `eval()` call. A write through `.data`
        bumps no version counter: call `model.eval()` after one."""
        attentions = [layer.reducing_attention for layer in self.blocks]
        gains = [
            gain for attention in attentions for gain in (attention.high_pass_gain, attention.dc_gain)
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
        patch_h, patch_w = pair(self.config.patch_size)
        if height < patch_h or width < patch_w:
            raise ValueError(f"pixel_values: a {height}x{width} image is smaller than one {patch_h}x{patch_w} patch")
        image_size = tuple(pair(self.config.image_size))
        if not interpolate and (height, width) != image_size:
            raise ValueError(
                f"pixel_values: input image size ({height}*{width}) doesn't match model "
                f"({image_size[0]}*{image_size[1]}); pass interpolate_pos_encoding=True for other sizes"
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
        # transformers keeps the position embeddings for a square image of the configured grid, else interpolates
        interpolated = interpolate and (grid[0] * grid[1] != configured[0] * configured[1] or height != width)
        if interpolated and (not isinstance(self.config.patch_size, int) or configured[0] != configured[1]):
            raise ValueError(
                "interpolate_pos_encoding: transformers interpolates a square grid of position embeddings cut "
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
        output_token_sizes: bool = False,
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
        restore_hidden_states (`bool`, defaults to `False`): return the hidden states in the unreduced layout,
            (B, p + P, C) (the p CLS and register tokens, then every patch of the grid), the patches that left the
            sequence restored as `config.token_restoration` says (what the backbones read).
        output_token_sizes (`bool`, defaults to `False`): return the patches each final token stands for.
        """
        output_attentions = self.config.output_attentions if output_attentions is None else output_attentions
        output_hidden_states = (
            self.config.output_hidden_states if output_hidden_states is None else output_hidden_states
        )
        interpolate_pos_encoding = bool(interpolate_pos_encoding) or self.always_interpolates
        grid = self._check_pixel_values(pixel_values, interpolate_pos_encoding)
        hidden_states = self.embed(pixel_values, interpolate_pos_encoding)
        restoration = self.config.token_restoration if restore_hidden_states else None
        tokens = TokenState.initial(
            hidden_states.shape[0], grid, hidden_states.device, output_token_provenance, restoration,
            self.config.num_prefix_tokens,
        )

        keep_hidden = selected_hidden_states(output_hidden_states, len(self.blocks) + 1)
        all_hidden_states = (hidden_states,) if 0 in keep_hidden else ()
        all_attentions = () if output_attentions else None
        reweight = self.reweights_attention()
        for index, layer in enumerate(self.blocks, start=1):
            hidden_states, tokens, attention_probs = layer(hidden_states, tokens, output_attentions, reweight)
            if index in keep_hidden:
                all_hidden_states += (tokens.restore(hidden_states) if restoration else hidden_states,)
            if output_attentions:
                all_attentions += (attention_probs,)

        last_hidden_state, pooler_output = self.finish(hidden_states)
        token_sizes = None
        if output_token_sizes:
            token_sizes = tokens.token_sizes()
            token_sizes[:, : tokens.prefix] = 0
        return FreqViTModelOutput(
            last_hidden_state=last_hidden_state,
            pooler_output=pooler_output,
            hidden_states=None if output_hidden_states is None or output_hidden_states is False else all_hidden_states,
            attentions=all_attentions,
            token_provenance=tokens.provenance if output_token_provenance else None,
            token_sizes=token_sizes,
            auxiliary_loss=tokens.auxiliary_loss,
        )


class ReducingClassifierMixin:
    """Mixin for a family's image classifier (put before its `PreTrainedModel` in the bases): the family's reducing
    encoder at `base_model_prefix`, a `classifier` module on what `classifier_input` takes from the encoder's output
    (ViT: the final CLS token), and the loss."""

    needs_token_sizes = False  # whether `classifier_input` reads the final tokens' patch counts

    def classifier_input(self, outputs: FreqViTModelOutput) -> torch.Tensor:
        raise NotImplementedError

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
            when `num_labels == 1`). See `ReducingModelMixin.forward` for the other arguments.
        """
        outputs = self.base_model(
            pixel_values,
            interpolate_pos_encoding=interpolate_pos_encoding,
            output_attentions=output_attentions,
            output_hidden_states=output_hidden_states,
            output_token_provenance=output_token_provenance,
            output_token_sizes=self.needs_token_sizes,
        )
        logits = self.classifier(self.classifier_input(outputs))
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


class ReducingBackboneMixin:
    """Mixin for a family's backbone (bases: this, `BackboneMixin`, the family's reducing model): the feature maps
    of the stages in `config.out_features`, each over the full patch grid whatever the reduction: the tokens that
    are still patches at their place, the others restored (`config.token_restoration`). Any resolution (the position
    embeddings are interpolated); the family's final `layernorm` normalises the maps (`apply_layernorm`)."""

    def _init_backbone_features(self) -> None:
        self.num_features = [self.config.hidden_size] * (self.config.num_hidden_layers + 1)

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
        `reshape_hidden_states=False` (B, p + H/p · W/p, C), CLS (and registers) first; `hidden_states` (when asked)
        every stage in the unreduced layout, restored.
        """
        output_hidden_states = self.config.output_hidden_states if output_hidden_states is None else output_hidden_states
        wanted = [self.stage_names.index(name) for name in self.out_features]
        outputs = ReducingModelMixin.forward(  # BackboneMixin comes first and has a forward of its own
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
        patch_h, patch_w = pair(self.config.patch_size)
        rows, cols = pixel_values.shape[2] // patch_h, pixel_values.shape[3] // patch_w
        prefix = self.config.num_prefix_tokens
        feature_maps = ()
        for hidden_state in selected:
            if self.config.apply_layernorm:
                hidden_state = self.layernorm(hidden_state)
            if self.config.reshape_hidden_states:
                hidden_state = hidden_state[:, prefix:].unflatten(1, (rows, cols)).permute(0, 3, 1, 2).contiguous()
            feature_maps += (hidden_state,)
        return BackboneOutput(
            feature_maps=feature_maps,
            hidden_states=outputs.hidden_states if output_hidden_states else None,
            attentions=outputs.attentions,
        )
