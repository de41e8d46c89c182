"""Frequency-aware token reduction (Lee et al., NeurIPS 2025) as plain functions on tensors.

Shapes: B batch, h heads, n tokens, m candidate tokens, C channels, P original patches, W = w² DC windows.
"""

import torch

from .token_state import gather_tokens, grid_constant, group_means


def received_attention(attention_probs: torch.Tensor) -> torch.Tensor:
    """The attention each key token receives: the column mean of the attention over heads and queries, in fp32.
    It ranks tokens as the high-frequency score does (they differ by the constant 1/n).

    attention_probs: (B, h, n, n) row-stochastic attention, before any reweighting. Returns (B, n).
    """
    return attention_probs.mean(dim=(1, 2), dtype=torch.float32)


def high_frequency_scores(attention_probs: torch.Tensor) -> torch.Tensor:
    """Score of each key token: the column mean of the high-pass attention `A_HP = A − 11ᵀ/n`, averaged over heads,
    in fp32.

    attention_probs: (B, h, n, n) row-stochastic attention, before any reweighting. Returns (B, n).
    """
    return received_attention(attention_probs) - 1.0 / attention_probs.shape[-1]


def high_frequency_logit_scores(queries: torch.Tensor, keys: torch.Tensor, scaling: float) -> torch.Tensor:
    """The paper's attention-free score (App. J): the column sums of the attention logits,
    `s_j = (Σ_i q_i)·k_j · scaling`, averaged over heads, in fp32. It ranks tokens without the attention matrix, so
    the block runs a fused attention kernel.

    queries, keys: (B, h, n, d). Returns (B, n).
    """
    query_sum = queries.float().sum(dim=2, keepdim=True)  # (B, h, 1, d)
    return (query_sum @ keys.float().transpose(-1, -2)).squeeze(2).mean(dim=1) * scaling


def split_by_score(scores: torch.Tensor, num_keep: int) -> torch.Tensor:
    """Indices of the `num_keep` highest scores, in no particular order (the blocks after a reduction do not read
    the token order). scores: (B, m). Returns (B, num_keep)."""
    return scores.topk(num_keep, dim=1, sorted=False).indices


def given_up_tokens(keep_idx: torch.LongTensor, scores: torch.Tensor) -> torch.Tensor:
    """(B, m) 1.0 for the candidates not in `keep_idx` (B, k), 0.0 for the kept ones, in the scores' dtype."""
    return torch.ones_like(scores).scatter_(1, keep_idx, 0.0)


def given_up_indices(given_up: torch.Tensor, num_given_up: int) -> torch.LongTensor:
    """(B, m) mask from `given_up_tokens` -> the indices of the tokens given up (B, num_given_up), in order."""
    return given_up.argsort(dim=1, descending=True, stable=True)[:, :num_given_up]


def split_by_redundancy(
    scores: torch.Tensor, features: torch.Tensor, num_keep: int, pool_size: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """Like `split_by_score`, but the tokens given up are chosen by redundancy among the `pool_size` lowest-scoring
    ones: the `m − num_keep` of them most similar (cosine, in fp32) to their nearest token outside the pool. The
    `m − pool_size` highest-scoring tokens are always kept, so only low-frequency tokens are given up, and each of
    those has a near twin that stays. `pool_size = m − num_keep` is `split_by_score`.

    scores: (B, m), features: (B, m, c); m − num_keep <= pool_size < m. Returns (B, num_keep) in their original
    order and (B, m − num_keep), most redundant first.
    """
    num_candidates = scores.shape[1]
    order = scores.argsort(dim=1, descending=True)
    always_kept, pool = order[:, : num_candidates - pool_size], order[:, num_candidates - pool_size :]
    unit = torch.nn.functional.normalize(features.float(), dim=-1)
    redundancy = (gather_tokens(unit, pool) @ gather_tokens(unit, always_kept).transpose(1, 2)).amax(dim=-1)
    by_redundancy = pool.gather(1, redundancy.argsort(dim=1, descending=True))
    num_given_up = num_candidates - num_keep
    keep = torch.cat([always_kept, by_redundancy[:, num_given_up:]], dim=1)
    return keep.sort(dim=1).values, by_redundancy[:, :num_given_up]


@grid_constant
def window_index(grid: tuple[int, int], window_size: int, device: torch.device | None = None) -> torch.Tensor:
    """Window of every patch of a (rows, cols) grid cut into w × w windows: `⌊r·w/H⌋·w + ⌊c·w/W⌋`. Returns (P,).
    A constant per grid: computed once and cached (callers must not modify it)."""
    rows, cols = grid
    row_window = torch.arange(rows, device=device) * window_size // rows
    col_window = torch.arange(cols, device=device) * window_size // cols
    return (row_window[:, None] * window_size + col_window[None, :]).flatten()


@grid_constant
def window_transfer(
    grid: tuple[int, int], old_size: int, new_size: int, device: torch.device | None = None
) -> torch.Tensor:
    """For each old w × w window, the new window that holds its centre (the mean position of its patches).

    Returns (old_size²,): where each existing DC token is folded when the window size changes (e.g. 2 → 1).
    A constant per grid: computed once and cached (callers must not modify it).
    """
    rows, cols = grid
    # integer sums over a membership matrix on the target device: exact, and no scatter-add (inductor's CPU code
    # for one fails on 14 x 14 grids), no float64 and no host tensor in a compiled graph
    windows = torch.arange(old_size**2, device=device)
    members = (window_index(grid, old_size, device) == windows[:, None]).long()  # (old_size², P)
    positions = torch.stack(
        torch.meshgrid(torch.arange(rows, device=device), torch.arange(cols, device=device), indexing="ij"), -1
    ).reshape(-1, 2)  # (P, 2) row, col
    sums = (members[..., None] * positions).sum(1)  # (old_size², 2)
    extent = torch.tensor([rows, cols], device=device)
    # ⌊centre · new_size / extent⌋ with centre = sum / count, in integers; an empty window (one wider than the
    # grid, which the schedule check refuses) counts 1
    counts = members.sum(1, keepdim=True).clamp_min(1)
    new_rows, new_cols = (sums * new_size // (counts * extent)).unbind(-1)
    return new_rows * new_size + new_cols


def window_members(windows: torch.LongTensor, num_windows: int) -> torch.BoolTensor:
    """windows (B, t) (or (t,)): the window of each token -> (B, W, t) (or (W, t)): which tokens each window holds."""
    return windows.unsqueeze(-2) == window_numbers(num_windows, windows.device)


@grid_constant
def window_numbers(num_windows: int, device: torch.device | None = None) -> torch.Tensor:
    """(W, 1): 0 … W − 1 as a column, to compare windows with. A constant: cached."""
    return torch.arange(num_windows, device=device)[:, None]


@grid_constant
def grid_window_members(grid: tuple[int, int], window_size: int, device: torch.device | None = None) -> torch.Tensor:
    """(W, P): the patches of a grid each w × w window holds. A constant per grid: cached."""
    return window_members(window_index(grid, window_size, device), window_size**2)


@grid_constant
def transfer_members(
    grid: tuple[int, int], old_size: int, new_size: int, device: torch.device | None = None
) -> torch.Tensor:
    """(new_size², old_size²): the old windows' DC tokens each new window takes in (see `window_transfer`)."""
    return window_members(window_transfer(grid, old_size, new_size, device), new_size**2)


def merge_into_dc_tokens(
    tokens: torch.Tensor,
    members: torch.Tensor | None,
    sizes: torch.Tensor,
    count_weighted: bool = True,
    fill_global_mean: bool = True,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Average each window's tokens (low-frequency candidates and the earlier DC tokens folded into it) into one DC
    token, as one batched matmul of averaging weights with the tokens (which accumulates in fp32 on accelerators and
    copies no token).

    tokens: (B, t, C). members: (1 or B, W, t) bool, the tokens each window takes in, or None: one window takes in
    every token. sizes: (B, t), the original patches each token stands for; 0 leaves a token out (a kept one).
    With `count_weighted` a token weighs as many patches as it stands for, otherwise as one token (a token of no
    patch, such as an empty window's filler, weighs nothing). A window that takes in nothing gets the mean of all
    the tokens given (`fill_global_mean`) or zeros. The weights are computed in fp32 and rounded to the tokens'
    dtype. Returns the DC tokens (B, W, C) and their patch counts (B, W).
    """
    weights = (sizes if count_weighted else (sizes > 0).to(sizes.dtype)).unsqueeze(1)  # (B, 1, t)
    shares = per_window(members, weights)
    totals = shares.sum(-1, keepdim=True)  # (B, W, 1)
    norms = totals
    if fill_global_mean and members is not None:
        shares = torch.where(totals > 0, shares, weights)
        norms = shares.sum(-1, keepdim=True)
    shares = shares / norms.clamp_min(1e-12)
    dc_tokens = (shares if shares.dtype == tokens.dtype else shares.to(tokens.dtype)) @ tokens
    if not count_weighted:  # the patch counts, where the weights counted tokens
        totals = per_window(members, sizes.unsqueeze(1)).sum(-1, keepdim=True)
    return dc_tokens, totals.squeeze(-1)


def per_window(members: torch.Tensor | None, values: torch.Tensor) -> torch.Tensor:
    """values (B, 1, t) -> (B, W, t): each window's share of them (all of them for one window, `members` None)."""
    return values if members is None else members * values


def nearest_destinations(
    low_features: torch.Tensor,
    kept_features: torch.Tensor,
    centre_features: torch.Tensor,
    low_windows: torch.Tensor,
) -> torch.LongTensor:
    """Where each low-frequency token goes: the most similar (cosine, in fp32) of the kept tokens and its own
    window's DC centre. A token that is no closer to any kept token than to its window's low-frequency mean is
    low-frequency content and stays with the DC token; one that duplicates a kept token joins it.

    low_features (B, l, c), kept_features (B, k, c), centre_features (B, W, c) the windows' DC centres, low_windows
    (B, l). Returns (B, l): the index of the kept token it joins, or -1 for its window's DC token.
    """
    low = torch.nn.functional.normalize(low_features.float(), dim=-1)
    kept = torch.nn.functional.normalize(kept_features.float(), dim=-1)
    centres = torch.nn.functional.normalize(centre_features.float(), dim=-1)
    best_kept, nearest_kept = (low @ kept.transpose(1, 2)).max(dim=-1)
    own_centre = gather_tokens(centres, low_windows)
    to_centre = (low * own_centre).sum(-1)
    return torch.where(best_kept > to_centre, nearest_kept, -1)


def absorb_into_kept_tokens(
    kept_tokens: torch.Tensor,
    kept_sizes: torch.Tensor,
    low_tokens: torch.Tensor,
    low_sizes: torch.Tensor,
    destinations: torch.LongTensor,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Each kept token becomes the size-weighted mean of itself and the low-frequency tokens that join it
    (`destinations` from `nearest_destinations`; -1: not joining any kept token).

    kept_tokens (B, k, C) with their patch counts (B, k); low_tokens (B, l, C), low_sizes (B, l). Returns the kept
    tokens (B, k, C) and their new patch counts (B, k).
    """
    num_kept = kept_tokens.shape[1]
    joins = destinations >= 0
    groups = torch.cat(
        [torch.arange(num_kept, device=kept_tokens.device).expand(kept_tokens.shape[0], -1),
         torch.where(joins, destinations, num_kept)],  # a spare group takes the DC-bound tokens
        dim=1,
    )
    weights = torch.cat([kept_sizes.float(), torch.where(joins, low_sizes.float(), 0.0)], dim=1)
    means, totals = group_means(torch.cat([kept_tokens, low_tokens], dim=1), groups, weights, num_kept + 1)
    return means[:, :num_kept].to(kept_tokens.dtype), totals[:, :num_kept]
