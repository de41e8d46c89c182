"""Pruning-family reductions (Top-K, EViT, radial, ATS, DynamicViT's selection) as plain functions on tensors.

Shapes: B batch, h heads, n tokens, m candidate tokens, C channels, K kept.
"""

import torch

from .token_state import grid_constant


def cls_attention_scores(attention_probs: torch.Tensor) -> torch.Tensor:
    """Attention from the CLS token to every token, averaged over heads in fp32 (half-precision means tie and
    reorder tokens): (B, h, n, n) -> (B, n)."""
    return attention_probs[:, :, 0].mean(dim=1, dtype=torch.float32)


def top_k_in_order(scores: torch.Tensor, num_keep: int) -> torch.LongTensor:
    """Indices of the `num_keep` highest scores (B, m), in their original order: (B, num_keep)."""
    return scores.topk(num_keep, dim=1).indices.sort(dim=1).values


def fuse_tokens(tokens: torch.Tensor, weights: torch.Tensor) -> torch.Tensor:
    """EViT's fused token: the tokens' sum weighted by their CLS attention, (B, l, C), (B, l) -> (B, 1, C)."""
    return (tokens * weights[..., None].to(tokens.dtype)).sum(dim=1, keepdim=True)


@grid_constant
def radial_scores(grid: tuple[int, int], norm: str = "l2", device: torch.device | None = None) -> torch.Tensor:
    """Every patch ranked by the distance of its centre to the image centre under the L1, L2 or L∞ norm, nearest
    first, as minus its rank: (P,), all different. Equal distances rank by patch index, so the pattern is the same
    on every device whatever its top-k does with ties. A constant per grid: computed once and cached (callers must
    not modify it)."""
    rows, cols = grid
    # twice the offset from the centre, in integers: exact on any device, so equal distances are equal
    row = 2 * torch.arange(rows, device=device) - (rows - 1)
    col = 2 * torch.arange(cols, device=device) - (cols - 1)
    row, col = (offset.abs().flatten() for offset in torch.meshgrid(row, col, indexing="ij"))
    distance = {"l1": row + col, "l2": row * row + col * col, "linf": torch.maximum(row, col)}[norm]
    order = torch.sort(distance, stable=True).indices  # stable: equal distances stay in patch order
    ranks = torch.empty_like(order).scatter_(0, order, torch.arange(rows * cols, device=device))
    return -ranks.float()


def adaptive_sample(scores: torch.Tensor, num_samples: int, valid: torch.BoolTensor) -> tuple[torch.Tensor, torch.Tensor]:
    """ATS's inverse-transform sampling: `num_samples` evenly spaced quantiles of the distribution of the scores.

    scores: (B, m) non-negative significance, valid: (B, m) False for padding. Tokens hit by several quantiles count
    once, so each image keeps a different number. Returns indices (B, num_samples) (valid ones first, in original
    order) and their validity (B, num_samples).
    """
    weights = torch.where(valid, scores.clamp_min(0), 0.0).double()
    weights = torch.where(weights.sum(1, keepdim=True) > 0, weights, valid.double())  # all-zero scores: uniform
    cdf = weights.cumsum(1) / weights.sum(1, keepdim=True)
    quantiles = (torch.arange(num_samples, device=scores.device, dtype=torch.float64) + 0.5) / num_samples
    picked = torch.searchsorted(cdf, quantiles.expand(scores.shape[0], -1).contiguous())
    picked = picked.clamp_max(scores.shape[1] - 1)  # quantiles are ascending, so `picked` is already sorted
    repeated = torch.zeros_like(picked, dtype=torch.bool)
    repeated[:, 1:] = picked[:, 1:] == picked[:, :-1]
    # move the repeats to the end, keeping the unique indices in order
    order = (repeated.long() * scores.shape[1] + picked).argsort(dim=1)
    return picked.gather(1, order), ~repeated.gather(1, order)


def gumbel_keep_decisions(keep_logits: torch.Tensor) -> torch.Tensor:
    """DynamicViT's training-time decisions: hard Gumbel-softmax samples (temperature 1) of (keep, drop) logits
    (B, m, 2), with straight-through gradients; returns (B, m), 1 = keep."""
    return torch.nn.functional.gumbel_softmax(keep_logits, tau=1.0, hard=True)[..., 0]
