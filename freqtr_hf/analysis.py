"""The paper's frequency analysis (method.md §8) on hidden states of reduced or unreduced models."""

import torch

from .token_state import TokenProvenance


def restore_patch_grid(tokens: torch.Tensor, patch_to_token: torch.LongTensor | None) -> torch.Tensor:
    """Put a layer's tokens back on the patch grid: every patch takes the token that carries it (a kept patch its
    own token, a merged patch its DC/cluster token), as the paper restores pruned positions for dense prediction;
    a dropped patch takes the mean token, which adds no high frequency.

    tokens: (B, n, C) with CLS first; patch_to_token: (B, P) from `TokenProvenance`, or None for an unreduced
    sequence. Returns (B, P, C).
    """
    if patch_to_token is None:
        return tokens[:, 1:]
    mean = tokens[:, 1:].mean(dim=1, keepdim=True)
    padded = torch.cat([tokens, mean], dim=1)  # index n: the fill for dropped patches
    index = torch.where(patch_to_token >= 0, patch_to_token, tokens.shape[1])
    return padded.gather(1, index[..., None].expand(-1, -1, tokens.shape[-1]))


def high_frequency_log_amplitude(grid_tokens: torch.Tensor, grid: tuple[int, int]) -> float:
    """Relative log amplitude at frequency π: `log|FFT2|` over the patch grid, averaged over batch and channels,
    at the corner (π) minus at the centre (0) of the shifted spectrum. grid_tokens: (B, P, C)."""
    batch, _, channels = grid_tokens.shape
    maps = grid_tokens.float().transpose(1, 2).reshape(batch, channels, *grid)
    spectrum = torch.fft.fftshift(torch.fft.fft2(maps).abs().add(1e-8).log(), dim=(-2, -1)).mean(dim=(0, 1))
    return (spectrum[0, 0] - spectrum[grid[0] // 2, grid[1] // 2]).item()


def layer_high_frequency(
    hidden_states: tuple[torch.Tensor, ...], provenance: tuple[TokenProvenance, ...] | None, grid: tuple[int, int]
) -> list[float]:
    """Per block output (`output_hidden_states`, embeddings excluded), the relative log amplitude at π, with reduced
    layers restored to the grid through the provenance of the latest stage at or before them."""
    stages = {stage.layer: stage for stage in provenance or ()}
    values, current = [], None
    for layer, tokens in enumerate(hidden_states[1:]):
        current = stages.get(layer, current)
        grid_tokens = restore_patch_grid(tokens, current.patch_to_token if current is not None else None)
        values.append(high_frequency_log_amplitude(grid_tokens, grid))
    return values
