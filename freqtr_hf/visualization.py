"""Pictures of a reduction: which patches are kept, which merged token each of the others went into, which are gone."""

import numpy as np

from .token_state import TokenProvenance

# 20 distinguishable colours (matplotlib's tab20), one per merged token, cycling beyond 20
PALETTE = np.array(
    [
        (31, 119, 180), (255, 127, 14), (44, 160, 44), (214, 39, 40), (148, 103, 189), (140, 86, 75),
        (227, 119, 194), (188, 189, 34), (23, 190, 207), (127, 127, 127), (174, 199, 232), (255, 187, 120),
        (152, 223, 138), (255, 152, 150), (197, 176, 213), (196, 156, 148), (247, 182, 210), (219, 219, 141),
        (158, 218, 229), (199, 199, 199),
    ],
    dtype=np.float32,
)


def stage_overlay(
    image: np.ndarray, stage: TokenProvenance, grid: tuple[int, int], index: int = 0, tint: float = 0.6
) -> np.ndarray:
    """The image (H, W, 3) uint8, the model's input view, with image `index` of a stage drawn on it: kept patches
    as they are, each merged token's patches tinted in its own colour (one per DC window), dropped patches
    darkened to grey. Returns (H, W, 3) uint8."""
    height, width = image.shape[:2]
    rows = np.arange(height) * grid[0] // height
    cols = np.arange(width) * grid[1] // width
    patch = rows[:, None] * grid[1] + cols[None, :]  # (H, W) patch index of every pixel
    token = stage.patch_to_token[index].cpu().numpy()[patch]
    out = image.astype(np.float32)
    merged = token > stage.num_kept
    colours = PALETTE[(token - stage.num_kept - 1) % len(PALETTE)]
    out[merged] = (1 - tint) * out[merged] + tint * colours[merged]
    dropped = token < 0
    out[dropped] = 0.25 * out[dropped].mean(axis=-1, keepdims=True) + 20
    # patch borders of kept patches, so single kept patches stand out
    edges = np.zeros((height, width), dtype=bool)
    edges[1:, :] |= patch[1:, :] != patch[:-1, :]
    edges[:, 1:] |= patch[:, 1:] != patch[:, :-1]
    out[edges & (token >= 1) & (token <= stage.num_kept)] = 255
    return out.clip(0, 255).astype(np.uint8)


def stage_summary(stage: TokenProvenance, index: int = 0) -> str:
    """'layer 4: 137 kept, 59 in 4 merged tokens, 0 dropped' for image `index` of a stage (1-based layer)."""
    token = stage.patch_to_token[index]
    merged = token > stage.num_kept
    return (
        f"layer {stage.layer + 1}: {int(stage.kept[index].sum())} kept, {int(merged.sum())} in "
        f"{len(token[merged].unique())} merged tokens, {int((token < 0).sum())} dropped"
    )
