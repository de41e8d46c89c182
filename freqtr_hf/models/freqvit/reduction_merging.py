"""ToMe's token merging (bipartite soft matching with size-weighted averages) as plain functions on tensors.

Shapes: B batch, t tokens being merged, c key channels, C channels.
"""

import torch

from .token_state import group_means


def bipartite_merge_plan(keys: torch.Tensor, num_merge: int, protect_first: bool = False) -> torch.LongTensor:
    """One round of bipartite soft matching: tokens alternate between sets A (even positions) and B (odd); each A
    token picks its most similar B token (cosine of keys, in fp32); the `num_merge` best pairs merge. With
    `protect_first`, token 0 (CLS, in A) never merges.

    keys: (B, t, c). Returns (B, t) the new position of every token: unmerged A tokens first (in order), then the
    B tokens; a merged A token gets its partner's position. `num_merge` is at most the size of A (less one when
    protected).
    """
    keys = keys.float()
    keys = keys / keys.norm(dim=-1, keepdim=True).clamp_min(1e-12)
    set_a, set_b = keys[:, ::2], keys[:, 1::2]
    similarity = set_a @ set_b.transpose(1, 2)
    if protect_first:
        similarity[:, 0] = -torch.inf
    best, partner = similarity.max(dim=-1)
    order = best.argsort(dim=-1, descending=True)
    merged_a, unmerged_a = order[:, :num_merge], order[:, num_merge:].sort(dim=-1).values
    num_unmerged = unmerged_a.shape[1]
    positions_a = torch.empty_like(partner)
    positions_a.scatter_(1, unmerged_a, torch.arange(num_unmerged, device=keys.device).expand_as(unmerged_a))
    positions_a.scatter_(1, merged_a, num_unmerged + partner.gather(1, merged_a))
    positions_b = num_unmerged + torch.arange(set_b.shape[1], device=keys.device).expand(keys.shape[0], -1)
    positions = torch.empty(keys.shape[:2], dtype=torch.long, device=keys.device)
    positions[:, ::2], positions[:, 1::2] = positions_a, positions_b
    return positions


def merge_step(
    tokens: torch.Tensor, keys: torch.Tensor, sizes: torch.Tensor, num_merge: int
) -> tuple[torch.Tensor, torch.Tensor, torch.LongTensor]:
    """ToMe's per-layer step on a whole sequence with CLS first: bipartite matching over all tokens, CLS in set A and
    protected, then size-weighted averages. tokens (B, t, C), keys (B, t, c), sizes (B, t) -> tokens (B, t − r, C)
    with CLS still first, their sizes, and the new position of every input token (B, t)."""
    positions = bipartite_merge_plan(keys, num_merge, protect_first=True)
    merged, new_sizes = group_means(tokens, positions, sizes, tokens.shape[1] - num_merge)
    return merged.to(tokens.dtype), new_sizes, positions


def merge_to_count(
    tokens: torch.Tensor, keys: torch.Tensor, sizes: torch.Tensor, num_out: int
) -> tuple[torch.Tensor, torch.Tensor, torch.LongTensor]:
    """Merge tokens (B, t, C) with keys (B, t, c) and sizes (B, t) down to `num_out` tokens by rounds of bipartite
    matching (one round merges at most half of them). Returns the tokens, their sizes and the new position of
    every input token (B, t)."""
    positions = torch.arange(tokens.shape[1], device=tokens.device).expand(tokens.shape[0], -1)
    while tokens.shape[1] > num_out:
        count = tokens.shape[1]
        step = bipartite_merge_plan(keys, min(count - num_out, (count + 1) // 2))
        out = count - min(count - num_out, (count + 1) // 2)
        # size-weighted averages of the tokens (and of their keys) that share a new position
        merged, new_sizes = group_means(tokens, step, sizes, out)
        merged_keys, _ = group_means(keys, step, sizes, out)
        tokens, keys = merged.to(tokens.dtype), merged_keys
        sizes, positions = new_sizes, step.gather(1, positions)
    return tokens, sizes, positions
