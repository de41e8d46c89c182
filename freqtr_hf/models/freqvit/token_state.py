"""What the blocks know about the current token sequence, and the one reduction step every method goes through.

Sequence layout everywhere: `[prefix, candidates, merged]`. The prefix tokens are never candidates: ViT's CLS token,
DINOv2's CLS and register tokens, none for SigLIP. Candidates are original patches (their patch index is tracked);
merged tokens (DC tokens, a fused token, clusters) stand for several patches (their patch count is tracked).
"""

import math
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from functools import lru_cache, wraps

import torch
from torch import nn


def grid_constant(function: Callable[..., torch.Tensor]) -> Callable[..., torch.Tensor]:
    """Cache a tensor that depends only on its (hashable) arguments, such as a patch grid's window map: computed
    once per grid and device, not in every forward. Built outside inference mode, so training can use it too.
    Under `torch.compile` the function is traced as it is (the compiler folds the constant)."""

    @lru_cache(maxsize=64)
    def cached(*args, **kwargs) -> torch.Tensor:
        with torch.inference_mode(False), torch.no_grad():
            return function(*args, **kwargs)

    @wraps(function)
    def constant(*args, **kwargs) -> torch.Tensor:
        if torch.compiler.is_compiling():
            return function(*args, **kwargs)
        return cached(*args, **kwargs)

    return constant


@dataclass
class AttentionMaps:
    """What a reducing block's attention hands to its reducer: queries, keys and values (B, h, n, head_dim), the
    attention scaling, the probabilities (B, h, n, n) before any reweighting when the reducer needs them, and the
    attention each key receives (B, n, fp32: the mean over heads and queries) when it needs only that (None
    otherwise: with neither the block runs a fused attention kernel)."""

    queries: torch.Tensor
    keys: torch.Tensor
    values: torch.Tensor
    scaling: float
    probs: torch.Tensor | None = None
    received: torch.Tensor | None = None


@dataclass
class TokenProvenance:
    """Where the original patches went at one reduction stage.

    layer: the block after whose attention the reduction happened.
    patch_to_token: (B, P) LongTensor, for every original patch (row-major on the patch grid) the index, in the
        sequence after this stage, of the token that carries it; -1 if it was dropped.
    num_kept: the `num_kept` tokens after the prefix are the kept tokens; higher indices are merged tokens.
    kept: (B, P) BoolTensor, the patches that are still a token of their own (which may carry other patches that
        joined it). A patch carried by a kept token that is not its own (merged into it by the nearest-token merge,
        or in EViT's fused token kept as a whole) counts as merged.
    """

    layer: int
    patch_to_token: torch.LongTensor
    num_kept: int
    kept: torch.BoolTensor
    num_prefix: int = 1

    @property
    def first_merged(self) -> int:
        """The sequence index of the first merged token: the tokens from there on each stand for several patches."""
        return self.num_prefix + self.num_kept

    @property
    def merged(self) -> torch.BoolTensor:
        """(B, P): the patches carried by a token that is not their own (DC token, fused token, cluster, or a kept
        token they joined)."""
        return (self.patch_to_token >= 0) & ~self.kept

    @property
    def dropped(self) -> torch.BoolTensor:
        """(B, P): the patches no token carries any more."""
        return self.patch_to_token < 0


@grid_constant
def row_offsets(batch: int, stride: int, first: int = 0, device: torch.device | None = None) -> torch.Tensor:
    """(batch, 1): row `first` of each image in a (batch · stride)-row flattening. A constant: cached."""
    return torch.arange(batch, device=device)[:, None] * stride + first


def gather_tokens(tokens: torch.Tensor, index: torch.LongTensor, first: int = 0) -> torch.Tensor:
    """tokens (B, n, C), index (B, k) -> (B, k, C): the tokens at `first + index` (`first` skips the prefix).

    Whole rows of the flattened batch, looked up as an embedding table: one op (in eager mode each is a kernel
    launch) that copies rows like `index_select`, 2-6x faster on CPU than `gather` with an index expanded over the
    channels (which indexes every element) and 4x faster than advanced indexing."""
    batch, length, channels = tokens.shape
    rows = index + row_offsets(batch, length, first, index.device)
    return nn.functional.embedding(rows, tokens.reshape(batch * length, channels))


def group_means(
    tokens: torch.Tensor, groups: torch.LongTensor, weights: torch.Tensor, num_groups: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """Weighted mean of the tokens of each group, in fp32 (a bf16 sum over many tokens loses precision).

    tokens (B, t, C), groups (B, t) in [0, num_groups), weights (B, t) -> means (B, num_groups, C) (zeros for a
    group of no weight) and the groups' total weights (B, num_groups).
    """
    weights = weights.float()
    # the weights ride along as one more channel: one pass sums both
    sums = group_sums(torch.cat([tokens.float() * weights[..., None], weights[..., None]], dim=-1), groups, num_groups)
    totals = sums[..., -1]
    return sums[..., :-1] / totals.clamp_min(1e-12)[..., None], totals


def group_sums(values: torch.Tensor, groups: torch.LongTensor, num_groups: int) -> torch.Tensor:
    """values (B, t, ...), groups (B, t) in [0, num_groups) -> the sum of each group's values (B, num_groups, ...).

    Whole rows by `index_add_` on the flattened batch: 3x faster on CPU than `scatter_add_` with an expanded index.
    One group is a plain sum: inductor's CUDA code for a scatter-add into a size-1 target reads the result before
    the adds land (pytorch/pytorch#191571; seen with torch 2.11 on an H100), which made a compiled `freq`'s last DC
    token, the one window of the last stages, wrong."""
    if num_groups == 1:
        return values.sum(1, keepdim=True)
    batch, length = groups.shape
    rows = (groups + row_offsets(batch, num_groups, 0, groups.device)).flatten()
    flat = values.reshape(batch * length, math.prod(values.shape[2:]))  # -1 cannot size an empty batch
    sums = flat.new_zeros(batch * num_groups, flat.shape[1]).index_add_(0, rows, flat)
    return sums.view(batch, num_groups, *values.shape[2:])


@dataclass
class TokenState:
    """The state of a sequence `[prefix, candidates, merged]` as it goes through the blocks.

    grid: (rows, cols) of the original patch grid.
    prefix: the number of leading tokens that are never candidates (CLS and registers; 0 without CLS).
    patch_ids: (B, m) original patch index of every candidate token (-1 for an earlier merged token that a method
        keeps as a candidate: EViT's fused token).
    merged_sizes: (B, d) number of original patches each merged token stands for (None: no merged tokens).
    candidate_sizes: (B, m) the same for the candidates, or None when every candidate is one patch.
    key_weights: (B, n) multiplicative weight of every token as an attention key, `softmax(qkᵀ)·w` renormalised,
        or None: ToMe's proportional attention (w = size), padding (w = 0), DynamicViT's training mask.
    valid: (B, n) False for padding tokens (a method that keeps a different number per image), or None.
    patch_to_token, provenance: the provenance map and its per-stage records, when tracked (see `TokenProvenance`).
    auxiliary_loss: the sum of the loss terms reducers ask the training loop to add (DynamicViT's keep ratio).
    restoration: how `restore` puts every patch back on the grid (one of `TOKEN_RESTORATIONS`), or None: not tracked.
    patch_carrier: (B, P) the sequence index of the token whose feature a patch follows (the token itself while
        it is one); patch_offset: (B, P, C) what the patch's feature differs from it by (residual restorations), or
        None while it is zero.
    """

    grid: tuple[int, int]
    patch_ids: torch.LongTensor
    prefix: int = 1
    merged_sizes: torch.Tensor | None = None
    candidate_sizes: torch.Tensor | None = None
    key_weights: torch.Tensor | None = None
    valid: torch.BoolTensor | None = None
    patch_to_token: torch.LongTensor | None = None
    provenance: tuple[TokenProvenance, ...] = field(default=())
    auxiliary_loss: torch.Tensor | None = None
    restoration: str | None = None
    patch_carrier: torch.LongTensor | None = None
    patch_offset: torch.Tensor | None = None

    @classmethod
    def initial(
        cls, batch_size: int, grid: tuple[int, int], device: torch.device | str, track_provenance: bool,
        restoration: str | None = None, prefix: int = 1,
    ) -> "TokenState":
        """The state of `[prefix tokens, every patch]`; `restoration` also tracks what `restore` needs (and the
        provenance)."""
        num_patches = grid[0] * grid[1]
        patch_ids = torch.arange(num_patches, device=device).expand(batch_size, -1)
        tracked = track_provenance or restoration is not None
        return cls(
            grid, patch_ids, prefix, patch_to_token=patch_ids + prefix if tracked else None, restoration=restoration,
            patch_carrier=patch_ids + prefix if restoration is not None else None,
        )

    def restore(self, hidden_states: torch.Tensor) -> torch.Tensor:
        """hidden_states (B, n, C) of this state's sequence -> (B, p + P, C): the p prefix tokens, then every patch of
        the grid in row-major order, as the unreduced model lays them out: a patch that is still a token of its own is that token (in the
        residual restorations, less what merging other tokens into it changed), the others are restored as
        `restoration` says."""
        patches = gather_tokens(hidden_states, self.patch_carrier)
        if self.patch_offset is not None:
            patches = patches + self.patch_offset
        return torch.cat([hidden_states[:, : self.prefix], patches], dim=1)

    @property
    def num_candidates(self) -> int:
        return self.patch_ids.shape[1]

    @property
    def num_merged(self) -> int:
        return 0 if self.merged_sizes is None else self.merged_sizes.shape[1]

    def token_sizes(self) -> torch.Tensor:
        """(B, n): original patches per token; a prefix token counts 1."""
        batch, device = self.patch_ids.shape[0], self.patch_ids.device
        if self.candidate_sizes is None:  # prefix tokens and candidates that are one patch each
            sizes = [torch.ones(batch, self.prefix + self.num_candidates, device=device)]
        else:
            sizes = [torch.ones(batch, self.prefix, device=device), self.candidate_sizes]
        if self.merged_sizes is not None:
            sizes.append(self.merged_sizes)
        return torch.cat(sizes, dim=1) if len(sizes) > 1 else sizes[0]

    def with_auxiliary_loss(self, loss: torch.Tensor) -> "TokenState":
        total = loss if self.auxiliary_loss is None else self.auxiliary_loss + loss
        return replace(self, auxiliary_loss=total)

    def attention_bias(self, dtype: torch.dtype) -> torch.Tensor | None:
        """(B, 1, 1, n) additive attention bias `log w` of the key weights (w = 0 masks the key), or None."""
        if self.key_weights is None:
            return None
        weights = self.key_weights
        bias = torch.where(weights > 0, weights.clamp_min(1e-30).log(), torch.finfo(dtype).min)
        return bias[:, None, None, :].to(dtype)

    def reduce(
        self,
        layer: int,
        hidden_states: torch.Tensor,
        keep_idx: torch.LongTensor,
        merged_tokens: torch.Tensor | None = None,
        merged_sizes: torch.Tensor | None = None,
        merge_target: torch.LongTensor | None = None,
        join_target: torch.LongTensor | None = None,
        valid: torch.BoolTensor | None = None,
        key_weights: torch.Tensor | None = None,
        kept_sizes: torch.Tensor | None = None,
        kept_tokens: torch.Tensor | None = None,
        proportional_attention: bool = False,
        merged_key_exponent: float = 1.0,
    ) -> tuple[torch.Tensor, "TokenState"]:
        """Build `[prefix, kept tokens, merged tokens]` and the state that goes with it.

        keep_idx: (B, k) tokens kept, as indices among the non-prefix tokens (candidates first, then merged tokens),
            in the order they take. Only EViT keeps merged tokens; it passes their sizes as `kept_sizes` (B, k).
        merged_tokens: (B, d, C) new merged tokens with their patch counts merged_sizes (B, d).
        merge_target: (B, n) for every token of the old sequence, the merged token (0 … d-1) it went into, or -1
            (kept or dropped); join_target: (B, n) the kept token (0 … k-1) it joined, or -1. Only read when
            provenance is tracked.
        valid: (B, p + k + d) False for padding (p prefix tokens); key_weights: (B, p + k + d) attention key weights.
        kept_tokens: (B, k, C) the kept tokens as the reducer changed them (tokens merged into them), or None: as
            they are in `hidden_states`.
        proportional_attention: every token weighs as many attention keys as the patches it stands for (a prefix token 1):
            the key weights are made here from the sizes (in place of `key_weights`). A merged token then weighs
            `size ** merged_key_exponent` keys (size 0 stays masked).
        """
        batch, length = hidden_states.shape[:2]
        num_kept, prefix = keep_idx.shape[1], self.prefix
        if proportional_attention:
            if key_weights is not None:
                raise ValueError("key_weights: give them or proportional_attention, not both")
            sizes = [hidden_states.new_ones(batch, prefix, dtype=torch.float32)]  # a prefix token weighs 1
            if kept_sizes is not None:
                sizes.append(kept_sizes)
            elif num_kept:
                sizes.append(self.token_sizes()[:, prefix:].gather(1, keep_idx))
            tempered = merged_sizes is not None and merged_key_exponent != 1.0
            if tempered:
                sizes.append(torch.where(merged_sizes > 0, merged_sizes.pow(merged_key_exponent), 0.0))
            elif merged_sizes is not None:
                sizes.append(merged_sizes)
            key_weights = torch.cat(sizes, dim=1)
            # the state keeps slices of the weights, not the tensors concatenated: inductor (torch 2.13) can free
            # a concatenation's buffer while a tensor it wrote there is still in use (ToMe's sizes, next stage)
            kept_sizes = key_weights[:, prefix : prefix + num_kept] if kept_sizes is not None else None
            if merged_sizes is not None and not tempered:
                merged_sizes = key_weights[:, prefix + num_kept :]
        kept = kept_tokens if kept_tokens is not None else gather_tokens(hidden_states, keep_idx, first=prefix)
        parts = [hidden_states[:, :prefix], kept] + ([merged_tokens] if merged_tokens is not None else [])
        reduced = torch.cat(parts, dim=1)
        patch_ids = self.patch_ids
        if kept_sizes is not None and self.num_merged:  # merged tokens can be kept: they have no patch index
            patch_ids = torch.cat([patch_ids, patch_ids.new_full((patch_ids.shape[0], self.num_merged), -1)], dim=1)
        state = replace(
            self,
            patch_ids=patch_ids.gather(1, keep_idx),
            merged_sizes=merged_sizes,
            candidate_sizes=kept_sizes,
            key_weights=key_weights,
            valid=valid,
        )
        if self.patch_to_token is None:
            return reduced, state

        # one spare column takes the writes of padding slots, so they never overwrite a real token's entry
        token_to_new = torch.full((batch, length + 1), -1, dtype=torch.long, device=hidden_states.device)
        token_to_new[:, :prefix] = torch.arange(prefix, device=hidden_states.device)
        all_valid = torch.ones_like(keep_idx, dtype=torch.bool)
        kept_valid = valid[:, prefix : prefix + num_kept] if valid is not None else all_valid
        positions = torch.arange(prefix, prefix + num_kept, device=hidden_states.device).expand_as(keep_idx)
        token_to_new.scatter_(1, torch.where(kept_valid, prefix + keep_idx, length), positions)
        if merge_target is not None:
            merged = merge_target >= 0
            token_to_new[:, :length] = torch.where(merged, prefix + num_kept + merge_target, token_to_new[:, :length])
        if join_target is not None:
            token_to_new[:, :length] = torch.where(join_target >= 0, prefix + join_target, token_to_new[:, :length])
        new_index = token_to_new.gather(1, self.patch_to_token.clamp_min(0))
        patch_to_token = torch.where(self.patch_to_token >= 0, new_index, -1)
        if self.restoration is not None:
            # without merged tokens a reduction drops what it does not keep
            drops = merged_tokens is None
            state = self._follow_carriers(state, hidden_states, reduced, token_to_new[:, :length], keep_idx, drops)
        # a patch is kept when the kept token that carries it is that patch's own token
        kept = (patch_to_token >= prefix) & (patch_to_token < prefix + num_kept)
        if num_kept:
            carrier = state.patch_ids.gather(1, (patch_to_token - prefix).clamp(0, num_kept - 1))
            kept &= carrier == torch.arange(patch_to_token.shape[1], device=carrier.device)
        stage = TokenProvenance(layer, patch_to_token, num_kept, kept, prefix)
        return reduced, replace(state, patch_to_token=patch_to_token, provenance=(*self.provenance, stage))

    def _follow_carriers(
        self, state: "TokenState", hidden_states: torch.Tensor, reduced: torch.Tensor, successor: torch.LongTensor,
        keep_idx: torch.LongTensor, drops: bool,
    ) -> "TokenState":
        """`state` with every patch's carrier moved to the reduced sequence and, for the residual restorations, the
        offset grown by what its old carrier was at this step less what its new carrier is.

        hidden_states (B, n, C) before the step, reduced (B, n', C) after it, successor (B, n): the token of the
        reduced sequence each old token went into (-1: dropped), keep_idx (B, k) the old tokens kept as themselves
        (among the non-prefix ones); drops: whether the step dropped tokens."""
        prefix = self.prefix
        if self.restoration == "nearest":  # every token that is not kept as itself
            lost = torch.ones_like(successor, dtype=torch.bool).scatter_(1, prefix + keep_idx, False)
            lost[:, :prefix] = False
        else:
            lost = successor < 0
        if drops or self.restoration == "nearest":
            # the most similar token of the reduced sequence (prefix aside), by cosine of the features at this step
            unit = nn.functional.normalize(hidden_states.float(), dim=-1)
            targets = nn.functional.normalize(reduced[:, prefix:].float(), dim=-1)
            nearest = prefix + (unit @ targets.transpose(1, 2)).argmax(dim=-1)
            successor = torch.where(lost, nearest, successor)
        carrier = successor.gather(1, self.patch_carrier)
        offset = self.patch_offset
        if self.restoration != "carrier":
            step = hidden_states - gather_tokens(reduced, successor)  # (B, n, C): zero for a token kept as it was
            gained = gather_tokens(step, self.patch_carrier)
            offset = gained if offset is None else offset + gained
        return replace(state, patch_carrier=carrier, patch_offset=offset)
