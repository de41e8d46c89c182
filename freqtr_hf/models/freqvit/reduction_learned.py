"""Learned reductions: DynamicViT's keep predictor and the soft-merging family (SiT, PatchMerger, Sinkhorn).

The predictor is a module (it has weights); the merging math is plain functions on tensors.
Shapes: B batch, t tokens, C channels, k output tokens.
"""

import torch
from torch import nn


class KeepPredictor(nn.Module):
    """DynamicViT's prediction module: an MLP on each token's features concatenated with the mean of the kept
    tokens' features, giving (keep, drop) logits."""

    def __init__(self, hidden_size: int):
        super().__init__()
        self.input = nn.Sequential(nn.LayerNorm(hidden_size), nn.Linear(hidden_size, hidden_size), nn.GELU())
        self.output = nn.Sequential(
            nn.Linear(hidden_size, hidden_size // 2),
            nn.GELU(),
            nn.Linear(hidden_size // 2, hidden_size // 4),
            nn.GELU(),
            nn.Linear(hidden_size // 4, 2),
        )

    def forward(self, tokens: torch.Tensor, keep: torch.Tensor) -> torch.Tensor:
        """tokens (B, t, C), keep (B, t) current keep decisions -> (B, t, 2) logits."""
        features = self.input(tokens)
        local, global_ = features.chunk(2, dim=-1)
        weights = keep[..., None].to(features.dtype)
        global_mean = (global_ * weights).sum(1, keepdim=True) / weights.sum(1, keepdim=True).clamp_min(1e-6)
        return self.output(torch.cat([local, global_mean.expand_as(global_)], dim=-1))


def soft_merge(tokens: torch.Tensor, logits: torch.Tensor, sizes: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """New tokens as weighted sums: for each output j, weights softmax over the tokens of logits[:, :, j].

    tokens (B, t, C), logits (B, t, k), sizes (B, t) -> (B, k, C) and the soft patch counts (B, k).
    """
    weights = logits.float().softmax(dim=1)
    merged = weights.transpose(1, 2) @ tokens.float()
    return merged.to(tokens.dtype), (weights * sizes[..., None]).sum(dim=1)


SINKHORN_TEMPERATURE = 0.1  # sharpens cosine scores in [-1, 1] before the normalisation


def sinkhorn_assignment(scores: torch.Tensor, iterations: int) -> torch.Tensor:
    """Sinkhorn-normalised assignment of tokens to centres from scores (B, t, k): alternately make every token's
    weights sum to 1 and every centre receive the same total. Returns log-weights (B, t, k)."""
    log_weights = scores.float() / SINKHORN_TEMPERATURE
    for _ in range(iterations):
        log_weights = log_weights - log_weights.logsumexp(dim=2, keepdim=True)
        log_weights = log_weights - log_weights.logsumexp(dim=1, keepdim=True)
    return log_weights
