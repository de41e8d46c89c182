"""One token reducer per method: the module a reducing block calls after its attention + residual.

A reducer takes the hidden states (B, n, C), the block's `AttentionMaps` and the `TokenState`, and returns the
reduced hidden states and the new state, always through `TokenState.reduce`. It holds the method's parameters, if
any; the math is in the `reduction_*` modules. Adding a method means adding a class here and a name to the
registry; the attention and layer code stay as they are.
"""

import torch
from torch import nn

from .configuration_reduction import ReductionConfigMixin
from .reduction_clustering import density_peak_centres, k_medoids, pairwise_distances
from .reduction_frequency import (
    absorb_into_kept_tokens,
    given_up_indices,
    given_up_tokens,
    grid_window_members,
    high_frequency_logit_scores,
    merge_into_dc_tokens,
    nearest_destinations,
    split_by_redundancy,
    split_by_score,
    transfer_members,
    window_index,
    window_members,
    window_transfer,
)
from .reduction_learned import KeepPredictor, sinkhorn_assignment, soft_merge
from .reduction_merging import merge_step, merge_to_count
from .reduction_pruning import (
    adaptive_sample,
    cls_attention_scores,
    fuse_tokens,
    gumbel_keep_decisions,
    radial_scores,
    top_k_in_order,
)
from .token_schedule import ReductionStage, merged_counts, patch_grid, stage_output
from .token_state import AttentionMaps, TokenState, gather_tokens, group_means, group_sums


Reduced = tuple[torch.Tensor, TokenState]  # what a reducer returns: the hidden states (B, n', C) and their state


class TokenReducer(nn.Module):
    """Base of the reducers: the stage it runs and the one before it (`None` for the first).

    `needs_attention_probs`: whether it reads the attention probabilities (then its block computes attention
    eagerly); `needs_received_attention`: whether it reads only the attention each key receives (then the eager
    attention runs over chunks of queries, never holding the whole (B, h, n, n) tensor at long sequences); reducers
    that need only queries, keys or values let the block run a fused kernel (sdpa, flash)."""

    needs_attention_probs = True
    needs_received_attention = False

    def __init__(self, config: ReductionConfigMixin, stages: list[ReductionStage], index: int):
        super().__init__()
        self.stage = stages[index]
        self.previous_stage = stages[index - 1] if index else None

    def forward(self, hidden_states: torch.Tensor, maps: AttentionMaps, tokens: TokenState) -> Reduced:
        """The reduced hidden states (B, n', C) and their `TokenState`."""
        raise NotImplementedError


def _empty_keep(hidden_states: torch.Tensor) -> torch.LongTensor:
    return torch.zeros(hidden_states.shape[0], 0, dtype=torch.long, device=hidden_states.device)


def _merge_target(tokens: TokenState, length: int, assignment: torch.LongTensor, first: int) -> torch.LongTensor | None:
    """merge_target for `TokenState.reduce` when tokens `first …` of the old sequence went to `assignment`."""
    if tokens.patch_to_token is None:
        return None
    target = torch.full((assignment.shape[0], length), -1, dtype=torch.long, device=assignment.device)
    target[:, first:] = assignment
    return target


class FrequencyReducer(TokenReducer):
    """Frequency-aware: keep the high-frequency candidates, average the rest into `w × w` DC tokens. DC tokens
    persist: those of the previous stage fold into the window holding their centre.

    With `low_frequency_merge="nearest"` a low-frequency token joins the most similar of the kept tokens and its
    window's DC centre instead, with `proportional_attention` every token weighs as many attention keys as the
    patches it stands for, and with `low_frequency_pool` the tokens given up are the most redundant of the
    lowest-scoring ones (see docs/training_free.md)."""

    def __init__(self, config: ReductionConfigMixin, stages: list[ReductionStage], index: int):
        super().__init__(config, stages, index)
        self.count_weighted = config.dc_update == "count_weighted"
        self.fill_global_mean = config.dc_empty_fill == "global_mean"
        self.needs_attention_probs = False
        self.needs_received_attention = config.score_source == "attention"
        self.merge_nearest = config.low_frequency_merge == "nearest"
        self.merge_on_keys = config.merge_features == "keys"
        self.proportional_attention = config.proportional_attention
        self.dc_key_weight_exponent = config.dc_key_weight_exponent
        self.low_frequency_pool = config.low_frequency_pool
        num_windows = self.stage.window_size**2
        self.dc_position_embeddings = (
            nn.Parameter(torch.zeros(num_windows, config.hidden_size)) if config.dc_position_embedding else None
        )

    def window_members(self, tokens: TokenState, device: torch.device) -> torch.Tensor | None:
        """(1 or B, W, m + d): the candidates and earlier DC tokens each of this stage's windows takes in; None for
        one window (it takes in all)."""
        window_size = self.stage.window_size
        if window_size == 1:
            return None
        if self.previous_stage is None:  # the candidates are the whole patch grid, in order: a constant
            return grid_window_members(tokens.grid, window_size, device)[None]
        candidates = window_members(window_index(tokens.grid, window_size, device)[tokens.patch_ids], window_size**2)
        if not tokens.num_merged:
            return candidates
        earlier = transfer_members(tokens.grid, self.previous_stage.window_size, window_size, device)
        return torch.cat([candidates, earlier.expand(candidates.shape[0], -1, -1)], dim=2)

    def dc_tokens(
        self, tokens_in: torch.Tensor, members: torch.Tensor | None, sizes: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """The DC tokens (B, W, C) of `tokens_in` (B, m + d, C) weighted by `sizes` (B, m + d), their patch counts."""
        return merge_into_dc_tokens(
            tokens_in, members, sizes, count_weighted=self.count_weighted, fill_global_mean=self.fill_global_mean
        )

    def forward(self, hidden_states: torch.Tensor, maps: AttentionMaps, tokens: TokenState) -> Reduced:
        p = tokens.prefix  # the tokens before the candidates (CLS, registers)
        num_candidates = tokens.num_candidates
        if self.needs_received_attention:
            scores = maps.received  # ranks as the paper's score, which subtracts 1/n
        else:
            scores = high_frequency_logit_scores(maps.queries, maps.keys, maps.scaling)
        scores = scores[:, p : p + num_candidates]
        num_keep = self.stage.kept(num_candidates)
        # the pool leaves at least one token outside it to compare with; a pool no larger than the tokens given up is
        # the paper's choice
        num_given_up = num_candidates - num_keep
        pool_size = max(num_given_up, min(round(self.low_frequency_pool * num_candidates), num_candidates - 1))
        use_pool = pool_size > num_given_up
        # the head-averaged keys, once, when the pool or the nearest merge compares keys
        keys = maps.keys.mean(dim=1) if self.merge_on_keys and (use_pool or self.merge_nearest) else None
        low_idx = None
        if use_pool:
            features = hidden_states if keys is None else keys
            keep_idx, low_idx = split_by_redundancy(scores, features[:, p : p + num_candidates], num_keep, pool_size)
        else:
            keep_idx = split_by_score(scores, num_keep)
        given_up = given_up_tokens(keep_idx, scores)  # (B, m)
        if low_idx is None and (self.merge_nearest or tokens.patch_to_token is not None):
            low_idx = given_up_indices(given_up, num_given_up)
        device = hidden_states.device
        members = self.window_members(tokens, device)
        # what each candidate and earlier DC token brings to the DC tokens: its patch count if given up, else nothing
        sizes = given_up if tokens.candidate_sizes is None else given_up * tokens.candidate_sizes
        if tokens.num_merged:
            sizes = torch.cat([sizes, tokens.merged_sizes], dim=1)
        kept = gather_tokens(hidden_states, keep_idx, first=p)
        kept_sizes, destinations, low_windows = None, None, None
        if low_idx is not None:
            candidate_windows = window_index(tokens.grid, self.stage.window_size, device)[tokens.patch_ids]
            low_windows = candidate_windows.gather(1, low_idx)
        if self.merge_nearest:
            # compare in feature space with the DC token the paper's rule would make for the window
            low = gather_tokens(hidden_states, low_idx, first=p)
            low_features, kept_features, features = low, kept, hidden_states
            if keys is not None:
                features = keys
                low_features, kept_features = gather_tokens(keys, low_idx, first=p), gather_tokens(keys, keep_idx, first=p)
            centres, _ = self.dc_tokens(features[:, p:], members, sizes)
            destinations = nearest_destinations(low_features, kept_features, centres, low_windows)
            candidate_sizes = tokens.token_sizes()[:, p : p + num_candidates]
            kept, kept_sizes = absorb_into_kept_tokens(
                kept, candidate_sizes.gather(1, keep_idx), low, candidate_sizes.gather(1, low_idx), destinations
            )
            # those that joined a kept token no longer reach the DC tokens
            joined = torch.zeros(sizes.shape, dtype=torch.bool, device=device).scatter_(1, low_idx, destinations >= 0)
            sizes = sizes.masked_fill(joined, 0.0)
        dc_tokens, dc_sizes = self.dc_tokens(hidden_states[:, p:], members, sizes)
        if self.dc_position_embeddings is not None:
            dc_tokens = dc_tokens + self.dc_position_embeddings
        merge_target, join_target = None, None
        if tokens.patch_to_token is not None:
            low_at = p + low_idx
            merge_target = torch.full(hidden_states.shape[:2], -1, dtype=torch.long, device=device)
            low_targets = low_windows
            if destinations is not None:  # a token that joined a kept token is in no DC token
                join_target = merge_target.scatter(1, low_at, destinations)
                low_targets = torch.where(destinations >= 0, -1, low_windows)
            merge_target.scatter_(1, low_at, low_targets)
            if tokens.num_merged:
                merge_target[:, p + num_candidates :] = window_transfer(
                    tokens.grid, self.previous_stage.window_size, self.stage.window_size, device
                )
        return tokens.reduce(
            self.stage.layer, hidden_states, keep_idx, dc_tokens, dc_sizes, merge_target, join_target,
            kept_sizes=kept_sizes, kept_tokens=kept, proportional_attention=self.proportional_attention,
            merged_key_exponent=self.dc_key_weight_exponent,
        )


class TopKReducer(TokenReducer):
    """Top-K: keep the candidates the CLS token attends to most (head-averaged); drop the rest."""

    def scores(self, maps: AttentionMaps, tokens: TokenState) -> torch.Tensor:
        p = tokens.prefix  # the tokens before the candidates (CLS, registers)
        return cls_attention_scores(maps.probs)[:, p : p + tokens.num_candidates]

    def forward(self, hidden_states: torch.Tensor, maps: AttentionMaps, tokens: TokenState) -> Reduced:
        keep_idx = top_k_in_order(self.scores(maps, tokens), self.stage.kept(tokens.num_candidates))
        return tokens.reduce(self.stage.layer, hidden_states, keep_idx)


class RadialReducer(TopKReducer):
    """Static pattern: keep the patches closest to the image centre (L1, L2 or L∞)."""

    needs_attention_probs = False

    def __init__(self, config: ReductionConfigMixin, stages: list[ReductionStage], index: int):
        super().__init__(config, stages, index)
        self.norm = config.radial_norm

    def scores(self, maps: AttentionMaps, tokens: TokenState) -> torch.Tensor:
        return radial_scores(tokens.grid, self.norm, tokens.patch_ids.device)[tokens.patch_ids]


class EViTReducer(TokenReducer):
    """EViT, by its official rule: keep the `⌈r·(N − 1)⌉` non-CLS tokens the CLS token attends to most (head
    average), an earlier fused token competing like any token; fuse the rest into one new token, their sum weighted
    by that attention, appended last."""

    def forward(self, hidden_states: torch.Tensor, maps: AttentionMaps, tokens: TokenState) -> Reduced:
        p = tokens.prefix  # the tokens before the candidates (CLS, registers)
        cls_attention = cls_attention_scores(maps.probs)[:, p:]
        num_keep, _ = stage_output("evit", self.stage, tokens.num_candidates, tokens.num_merged)
        keep_idx = top_k_in_order(cls_attention, num_keep)
        fused = torch.ones_like(cls_attention, dtype=torch.bool).scatter_(1, keep_idx, False)
        fused_token = fuse_tokens(hidden_states[:, p:], torch.where(fused, cls_attention, 0.0))
        sizes = tokens.token_sizes()[:, p:]
        fused_size = (sizes * fused).sum(1, keepdim=True)
        merge_target = _merge_target(tokens, hidden_states.shape[1], torch.where(fused, 0, -1), first=p)
        return tokens.reduce(
            self.stage.layer, hidden_states, keep_idx, fused_token, fused_size, merge_target,
            kept_sizes=sizes.gather(1, keep_idx),
        )


class ATSReducer(TokenReducer):
    """ATS: significance = CLS attention × value norm (summed over heads); inverse-transform sampling at evenly
    spaced quantiles keeps each image's own number of tokens; padding is masked out of attention."""

    def forward(self, hidden_states: torch.Tensor, maps: AttentionMaps, tokens: TokenState) -> Reduced:
        p = tokens.prefix  # the tokens before the candidates (CLS, registers)
        num_candidates = tokens.num_candidates
        significance = (maps.probs[:, :, 0] * maps.values.norm(dim=-1)).sum(dim=1)[:, p : p + num_candidates]
        valid = tokens.valid[:, p : p + num_candidates] if tokens.valid is not None else torch.ones_like(
            significance, dtype=torch.bool
        )
        keep_idx, kept_valid = adaptive_sample(significance, self.stage.kept(num_candidates), valid)
        new_valid = torch.cat([kept_valid.new_ones(kept_valid.shape[0], p), kept_valid], dim=1)
        return tokens.reduce(
            self.stage.layer, hidden_states, keep_idx, valid=new_valid, key_weights=new_valid.float()
        )


class DynamicViTReducer(TokenReducer):
    """DynamicViT: a learned predictor scores every candidate. Training: hard Gumbel-softmax keep decisions mask
    the attention (tokens are not removed) and a keep-ratio loss pulls the kept share to the target. Inference:
    keep the candidates with the highest keep probability.

    The mask enters attention as `log w` on the logits (the same mechanism as padding), so the straight-through
    gradient reaches the predictor through the kept decisions (w = 1) and the keep-ratio loss, not through the
    dropped ones (w = 0: a constant bias)."""

    needs_attention_probs = False

    def __init__(self, config: ReductionConfigMixin, stages: list[ReductionStage], index: int):
        super().__init__(config, stages, index)
        self.predictor = KeepPredictor(config.hidden_size)
        self.ratio_weight = config.dynamicvit_ratio_weight
        self.target_ratio = 1.0
        for stage in stages[: index + 1]:
            self.target_ratio *= stage.keep_rate

    def forward(self, hidden_states: torch.Tensor, maps: AttentionMaps, tokens: TokenState) -> Reduced:
        p = tokens.prefix  # the tokens before the candidates (CLS, registers)
        num_candidates = tokens.num_candidates
        candidates = hidden_states[:, p : p + num_candidates]
        current = tokens.key_weights[:, p : p + num_candidates] if tokens.key_weights is not None else torch.ones(
            candidates.shape[:2], device=candidates.device
        )
        logits = self.predictor(candidates, current)
        if not self.training:
            keep_idx = top_k_in_order(logits.softmax(-1)[..., 0], self.stage.kept(num_candidates))
            return tokens.reduce(self.stage.layer, hidden_states, keep_idx)
        decisions = gumbel_keep_decisions(logits) * current
        ratio_loss = self.ratio_weight * (decisions.mean(dim=1) - self.target_ratio).pow(2).mean()
        all_idx = torch.arange(num_candidates, device=candidates.device).expand(candidates.shape[0], -1)
        key_weights = torch.cat([decisions.new_ones(decisions.shape[0], p), decisions], dim=1)
        hidden_states, tokens = tokens.reduce(self.stage.layer, hidden_states, all_idx, key_weights=key_weights)
        return hidden_states, tokens.with_auxiliary_loss(ratio_loss)


class ToMeReducer(TokenReducer):
    """ToMe. Per stage (the form of "Which Tokens to Use?"): rounds of bipartite soft matching over the non-CLS
    tokens merge them down to the kept count. Per layer (`tome_r`, the original): one round over the whole sequence,
    CLS first in set A and never merged, at most ⌊(t − 1)/2⌋ merges. Either way: cosine of head-averaged keys,
    size-weighted averages, and proportional attention (log size on the attention logits) in later blocks."""

    needs_attention_probs = False

    def forward(self, hidden_states: torch.Tensor, maps: AttentionMaps, tokens: TokenState) -> Reduced:
        p = tokens.prefix  # the tokens before the candidates (CLS, registers)
        keys = maps.keys.mean(dim=1)
        sizes = tokens.token_sizes()
        if self.stage.remove is not None:
            count = hidden_states.shape[1] - 1  # one CLS, in set A (the config allows per-layer ToMe only so)
            merged, new_sizes, positions = merge_step(hidden_states, keys, sizes, count - self.stage.kept(count))
            merged, new_sizes, positions = merged[:, 1:], new_sizes[:, 1:], positions[:, 1:] - 1
        else:
            merged, new_sizes, positions = merge_to_count(
                hidden_states[:, p:], keys[:, p:], sizes[:, p:], self.stage.kept(hidden_states.shape[1] - p)
            )
        merge_target = _merge_target(tokens, hidden_states.shape[1], positions, first=p)
        return tokens.reduce(
            self.stage.layer, hidden_states, _empty_keep(hidden_states), merged, new_sizes, merge_target,
            proportional_attention=True,
        )


class KMedoidsReducer(TokenReducer):
    """K-Medoids: a few k-medoids iterations on the token features, started from the tokens that receive the most
    attention; the sequence becomes the medoid tokens."""

    def __init__(self, config: ReductionConfigMixin, stages: list[ReductionStage], index: int):
        super().__init__(config, stages, index)
        self.iterations = config.cluster_iterations

    def forward(self, hidden_states: torch.Tensor, maps: AttentionMaps, tokens: TokenState) -> Reduced:
        p = tokens.prefix  # the tokens before the candidates (CLS, registers)
        tokens_in = hidden_states[:, p:]
        num_clusters = self.stage.kept(tokens_in.shape[1])
        received = maps.probs.mean(dim=(1, 2), dtype=torch.float32)[:, p:]  # a bf16 mean ties many tokens
        initial = received.topk(num_clusters, dim=1).indices.sort(dim=1).values
        medoids, assignment = k_medoids(pairwise_distances(tokens_in), initial, self.iterations)
        token_sizes = tokens.token_sizes()[:, p:]
        sizes = group_sums(token_sizes, assignment, num_clusters)
        merged = gather_tokens(hidden_states, medoids, first=p)
        merge_target = _merge_target(tokens, hidden_states.shape[1], assignment, first=p)
        return tokens.reduce(self.stage.layer, hidden_states, _empty_keep(hidden_states), merged, sizes, merge_target)


class TokenScore(nn.Linear):
    """DPC-KNN's learned log-weight of a token in its cluster's average: (B, t, C) -> (B, t, 1). Zero-initialised
    (in `FreqViTPreTrainedModel._init_weights`, which sees this module and not its parent: a module without
    parameters of its own is skipped), so the average is plain until trained."""

    def __init__(self, hidden_size: int):
        super().__init__(hidden_size, 1)


class DPCKNNReducer(TokenReducer):
    """DPC-KNN: density-peaks clustering picks the centres, every token joins the nearest; each cluster becomes
    the average of its tokens weighted by exp(learned score) (zero-initialised: a plain average at first)."""

    needs_attention_probs = False

    def __init__(self, config: ReductionConfigMixin, stages: list[ReductionStage], index: int):
        super().__init__(config, stages, index)
        self.neighbours = config.dpc_neighbours
        self.token_score = TokenScore(config.hidden_size)

    def forward(self, hidden_states: torch.Tensor, maps: AttentionMaps, tokens: TokenState) -> Reduced:
        p = tokens.prefix  # the tokens before the candidates (CLS, registers)
        tokens_in = hidden_states[:, p:]
        num_clusters = self.stage.kept(tokens_in.shape[1])
        _, assignment = density_peak_centres(pairwise_distances(tokens_in), num_clusters, self.neighbours)
        sizes = tokens.token_sizes()[:, p:]
        weights = self.token_score(tokens_in).squeeze(-1).float().exp() * sizes
        merged, _ = group_means(tokens_in, assignment, weights, num_clusters)
        merged = merged.to(tokens_in.dtype)
        merged_sizes = group_sums(sizes, assignment, num_clusters)
        merge_target = _merge_target(tokens, hidden_states.shape[1], assignment, first=p)
        return tokens.reduce(
            self.stage.layer, hidden_states, _empty_keep(hidden_states), merged, merged_sizes, merge_target
        )


class SoftMergeReducer(TokenReducer):
    """Soft merging into a fixed number of tokens (the kept count at the configured image size): every output is a
    weighted sum of all non-CLS tokens, the weights a softmax over tokens of `assignment_logits`."""

    needs_attention_probs = False

    def __init__(self, config: ReductionConfigMixin, stages: list[ReductionStage], index: int):
        super().__init__(config, stages, index)
        grid = patch_grid(config.image_size, config.patch_size)
        self.num_outputs = merged_counts(config.reduction_method, stages, grid)[index]

    def assignment_logits(self, tokens_in: torch.Tensor) -> torch.Tensor:
        """(B, t, C) -> (B, t, k)."""
        raise NotImplementedError

    def forward(self, hidden_states: torch.Tensor, maps: AttentionMaps, tokens: TokenState) -> Reduced:
        p = tokens.prefix  # the tokens before the candidates (CLS, registers)
        tokens_in = hidden_states[:, p:]
        logits = self.assignment_logits(tokens_in)
        merged, sizes = soft_merge(tokens_in, logits, tokens.token_sizes()[:, p:])
        merge_target = _merge_target(tokens, hidden_states.shape[1], logits.argmax(dim=-1), first=p)
        return tokens.reduce(self.stage.layer, hidden_states, _empty_keep(hidden_states), merged, sizes, merge_target)


class SiTReducer(SoftMergeReducer):
    """SiT: an MLP predicts each token's assignment logits to the output tokens."""

    def __init__(self, config: ReductionConfigMixin, stages: list[ReductionStage], index: int):
        super().__init__(config, stages, index)
        self.assign = nn.Sequential(
            nn.LayerNorm(config.hidden_size),
            nn.Linear(config.hidden_size, config.hidden_size),
            nn.GELU(),
            nn.Linear(config.hidden_size, self.num_outputs),
        )

    def assignment_logits(self, tokens_in: torch.Tensor) -> torch.Tensor:
        return self.assign(tokens_in)


class PatchMergerReducer(SoftMergeReducer):
    """PatchMerger: learnable queries attend over the (normalised) tokens."""

    def __init__(self, config: ReductionConfigMixin, stages: list[ReductionStage], index: int):
        super().__init__(config, stages, index)
        self.norm = nn.LayerNorm(config.hidden_size)
        self.queries = nn.Parameter(torch.empty(self.num_outputs, config.hidden_size))

    def assignment_logits(self, tokens_in: torch.Tensor) -> torch.Tensor:
        return self.norm(tokens_in) @ self.queries.T * tokens_in.shape[-1] ** -0.5


class SinkhornReducer(SoftMergeReducer):
    """Sinkhorn: cosine scores against learnable cluster centres, Sinkhorn-normalised into an assignment."""

    def __init__(self, config: ReductionConfigMixin, stages: list[ReductionStage], index: int):
        super().__init__(config, stages, index)
        self.centres = nn.Parameter(torch.empty(self.num_outputs, config.hidden_size))
        self.iterations = config.sinkhorn_iterations

    def assignment_logits(self, tokens_in: torch.Tensor) -> torch.Tensor:
        centres = nn.functional.normalize(self.centres.float(), dim=-1)
        cosine = nn.functional.normalize(tokens_in.float(), dim=-1) @ centres.T
        return sinkhorn_assignment(cosine, self.iterations)


TOKEN_REDUCERS: dict[str, type[TokenReducer]] = {
    "freq": FrequencyReducer,
    "topk": TopKReducer,
    "radial": RadialReducer,
    "evit": EViTReducer,
    "ats": ATSReducer,
    "dynamicvit": DynamicViTReducer,
    "tome": ToMeReducer,
    "kmedoids": KMedoidsReducer,
    "dpcknn": DPCKNNReducer,
    "sit": SiTReducer,
    "patchmerger": PatchMergerReducer,
    "sinkhorn": SinkhornReducer,
}
