"""The frequency paper's analyses (Lee et al., NeurIPS 2025; method.md §8) on the outputs of reduced or unreduced
models: hidden states, attention probabilities and `TokenProvenance`.

Shapes: B images, n tokens (CLS first), P original patches (row-major on the (h, w) patch grid), C channels,
heads h_a.
"""

from collections.abc import Iterator

import torch

from ..models.freqvit.reduction_frequency import high_frequency_scores
from ..models.freqvit.reduction_pruning import cls_attention_scores, top_k_in_order
from ..models.freqvit.token_state import TokenProvenance, TokenState, gather_tokens


def restore_patch_grid(tokens: torch.Tensor, patch_to_token: torch.LongTensor | None, prefix: int = 1) -> torch.Tensor:
    """Put a layer's tokens back on the patch grid: every patch takes the token that carries it (a kept patch its
    own token, a merged patch its DC/fused/cluster token), as the paper restores reduced positions; a dropped patch
    takes the image's mean over the carried patches (its zero-frequency content).

    tokens: (B, n, C) with the `prefix` CLS and register tokens first; patch_to_token: (B, P) from `TokenProvenance`,
    or None for an unreduced sequence. Returns (B, P, C).
    """
    if patch_to_token is None:
        return tokens[:, prefix:]
    carried = (patch_to_token >= 0)[..., None]
    grid_tokens = gather_tokens(tokens, patch_to_token.clamp_min(0))
    fill = (grid_tokens * carried).sum(1, keepdim=True) / carried.sum(1, keepdim=True).clamp_min(1)
    return torch.where(carried, grid_tokens, fill)


def block_patch_grids(
    hidden_states: tuple[torch.Tensor, ...], provenance: tuple[TokenProvenance, ...] | None, prefix: int = 1
) -> Iterator[tuple[torch.Tensor, torch.LongTensor | None]]:
    """Per block output (`output_hidden_states`, embeddings excluded): its tokens restored to the grid (B, P, C)
    through the provenance of the latest stage at or before that block, and that stage's `patch_to_token` (None
    before the first reduction). `prefix`: the CLS and register tokens before the patches."""
    stages = {stage.layer: stage for stage in provenance or ()}
    current = None
    for layer, tokens in enumerate(hidden_states[1:]):
        current = stages.get(layer, current)
        patch_to_token = current.patch_to_token if current is not None else None
        yield restore_patch_grid(tokens, patch_to_token, prefix), patch_to_token


def diagonal_log_amplitude(grid_tokens: torch.Tensor, grid: tuple[int, int]) -> torch.Tensor:
    """Per image, `log|FFT2|` of the token features over the patch grid, averaged over channels, along the
    diagonal from frequency 0 to the highest frequency: the points `(k, k)`, k = 0 … min(h, w) // 2, of the
    spectrum (the half-diagonal from the centre to the corner of the shifted spectrum; the amplitude of a real
    signal is symmetric, so `rfft2` holds all of it). grid_tokens: (B, P, C) -> (B, K)."""
    batch, _, channels = grid_tokens.shape
    maps = grid_tokens.float().transpose(1, 2).reshape(batch, channels, *grid)
    steps = torch.arange(min(grid) // 2 + 1, device=grid_tokens.device)
    diagonal = torch.fft.rfft2(maps)[..., steps, steps]
    return diagonal.abs().add(1e-8).log().mean(dim=1)


def relative_log_amplitude(diagonal: torch.Tensor) -> torch.Tensor:
    """The paper's curve: the diagonal log amplitude minus its value at frequency 0. (..., K) -> (..., K); on an
    even grid the last point is frequency π (see `diagonal_frequencies`)."""
    return diagonal - diagonal[..., :1]


def diagonal_frequencies(grid: tuple[int, int]) -> list[float]:
    """The frequencies (radians per patch, along the shorter side) of the points of `diagonal_log_amplitude`."""
    size = min(grid)
    return [2 * torch.pi * step / size for step in range(size // 2 + 1)]


def layer_high_frequency(
    hidden_states: tuple[torch.Tensor, ...], provenance: tuple[TokenProvenance, ...] | None, grid: tuple[int, int],
    prefix: int = 1,
) -> list[float]:
    """Per block output (`output_hidden_states`, embeddings excluded), the relative log amplitude at the highest
    frequency (π), averaged over the batch, with reduced layers restored to the grid (`prefix` as in
    `block_patch_grids`)."""
    return [
        relative_log_amplitude(diagonal_log_amplitude(grid_tokens, grid).mean(0))[-1].item()
        for grid_tokens, _ in block_patch_grids(hidden_states, provenance, prefix)
    ]


def last_layer_similarity(grids: list[torch.Tensor], carried: torch.BoolTensor | None) -> torch.Tensor:
    """The collapse proxy: per image and block, the mean over patches of the cosine similarity between the
    patch's feature at that block and at the last block. grids: per block (B, P, C) (see `block_patch_grids`);
    carried: (B, P) the patches some token still carries at the last block (None: all). Returns (B, L)."""
    last = grids[-1].float()
    weights = torch.ones(last.shape[:2], device=last.device) if carried is None else carried.float()
    similarity = torch.stack(
        [torch.nn.functional.cosine_similarity(grid.float(), last, dim=-1) for grid in grids], dim=1
    )
    return (similarity * weights[:, None]).sum(-1) / weights.sum(-1, keepdim=True).clamp_min(1)


def token_set_similarity(
    hidden_states: torch.Tensor, tokens: TokenState, reduced: torch.Tensor, reduced_tokens: TokenState
) -> torch.Tensor:
    """Similarity with the DC signal at one reduction: the mean cosine similarity to the layer's mean token of the
    kept (high-frequency) candidates, of the candidates merged away (low-frequency), and of the new merged (DC)
    tokens that hold patches. The mean token is the patch-count-weighted mean of the input tokens after the CLS and
    register tokens, i.e. the zero-frequency component of the layer's patch grid.

    hidden_states (B, n, C) and `tokens`: a reducer's input; reduced (B, n', C) and `reduced_tokens`: its output.
    Returns (B, 3): HF, LF, DC.
    """
    p = tokens.prefix
    sizes = tokens.token_sizes()[:, p:, None]
    mean = (hidden_states[:, p:].float() * sizes).sum(1, keepdim=True) / sizes.sum(1, keepdim=True)
    candidates = hidden_states[:, p : p + tokens.num_candidates].float()
    kept = (tokens.patch_ids[:, :, None] == reduced_tokens.patch_ids[:, None, :]).any(-1).float()
    similarity = torch.nn.functional.cosine_similarity(candidates, mean, dim=-1)
    high = (similarity * kept).sum(1) / kept.sum(1).clamp_min(1)
    low = (similarity * (1 - kept)).sum(1) / (1 - kept).sum(1).clamp_min(1)
    merged = reduced[:, p + reduced_tokens.num_candidates :].float()
    holds = (reduced_tokens.merged_sizes > 0).float()  # an empty DC token (a window nobody chose) holds nothing
    dc = (torch.nn.functional.cosine_similarity(merged, mean, dim=-1) * holds).sum(1) / holds.sum(1).clamp_min(1)
    return torch.stack([high, low, dc], dim=1)


def evit_kept_patches(
    attention_probs: torch.Tensor, previous: TokenProvenance | None, stage: TokenProvenance
) -> torch.BoolTensor:
    """The patches EViT's rule would keep at a stage of another model: the `stage.num_kept` candidates with the
    highest CLS attention (head-averaged) in the attention this layer computed.

    attention_probs: (B, h_a, n, n) of the reducing block; previous: the stage before (None: the candidates are
    all patches, token `prefix + i` is patch i). Returns (B, P).
    """
    num_patches, prefix = stage.patch_to_token.shape[1], stage.num_prefix
    if previous is None:
        candidate_of_patch = torch.arange(prefix, prefix + num_patches, device=attention_probs.device).expand(
            attention_probs.shape[0], -1
        )
        num_candidates = num_patches
    else:
        candidate_of_patch, num_candidates = previous.patch_to_token, previous.num_kept
    scores = cls_attention_scores(attention_probs)[:, prefix : prefix + num_candidates]
    chosen = torch.zeros(attention_probs.shape[0], attention_probs.shape[-1], dtype=torch.bool,
                         device=attention_probs.device)
    chosen.scatter_(1, prefix + top_k_in_order(scores, stage.num_kept), True)
    is_candidate = previous.kept if previous is not None else True  # a patch that joined a kept token is not one
    return is_candidate & chosen.gather(1, candidate_of_patch.clamp_min(0))


NOISE_SETS = ("hf", "lf", "random")


def add_token_noise(
    hidden_states: torch.Tensor,
    attention_probs: torch.Tensor,
    which: str,
    fraction: float,
    scale: float,
    generator: torch.Generator,
    prefix: int = 1,
) -> torch.Tensor:
    """The noise test: add Gaussian noise to a `fraction` of the patch tokens, chosen by the block's high-pass
    attention score (the frequency method's ranking): the highest (`"hf"`), the lowest (`"lf"`) or at random.
    The noise's standard deviation is `scale` times the standard deviation of the image's patch-token features,
    so every set gets the same number of tokens and the same noise. Drawn on the CPU from `generator`, so a run
    is reproducible on any device.

    hidden_states: (B, n, C) with the `prefix` CLS and register tokens first, unreduced (n = prefix + P);
    attention_probs: (B, h_a, n, n). Returns (B, n, C).
    """
    if which not in NOISE_SETS:
        raise ValueError(f"noise set: must be one of {NOISE_SETS}, got {which!r}")
    batch, length, channels = hidden_states.shape
    count = round(fraction * (length - prefix))
    noise = torch.randn(batch, count, channels, generator=generator).to(hidden_states.device)
    # every set draws the random order too, so that all three take the same draws from `generator`, call after call
    random_order = torch.rand(batch, length - prefix, generator=generator).argsort(dim=1)
    if which == "random":
        chosen = random_order[:, :count]
    else:
        scores = high_frequency_scores(attention_probs)[:, prefix:]
        chosen = scores.topk(count, dim=1, largest=which == "hf").indices.cpu()
    spread = hidden_states[:, prefix:].float().std(dim=(1, 2))[:, None, None]
    patches = hidden_states[:, prefix:].scatter_add(
        1, chosen.to(hidden_states.device)[..., None].expand(-1, -1, channels), (noise * scale * spread).to(
            hidden_states.dtype
        )
    )
    return torch.cat([hidden_states[:, :prefix], patches], dim=1)
