"""Pictures of a reduction: which patches are kept, which merged token each of the others went into, which are gone.

Merged tokens are drawn so that they stay visible on any photo, not only as a tint (a blue tint vanishes in a sky):
each merged token's patches are tinted and hatched with diagonal stripes of its colour beside black ones, and its
region is outlined in its colour. `merged_token_colour` gives the colours for a legend.
"""

import numpy as np

from .models.freqvit.token_state import TokenProvenance

# matplotlib's tab20 without its two greys (grey means dropped), one colour per merged token, cycling beyond 18
PALETTE = np.array(
    [
        (31, 119, 180), (255, 127, 14), (44, 160, 44), (214, 39, 40), (148, 103, 189), (140, 86, 75),
        (227, 119, 194), (188, 189, 34), (23, 190, 207), (174, 199, 232), (255, 187, 120), (152, 223, 138),
        (255, 152, 150), (197, 176, 213), (196, 156, 148), (247, 182, 210), (219, 219, 141), (158, 218, 229),
    ],
    dtype=np.float32,
)
TINT = 0.35  # share of a merged token's colour over its patches
HATCH_PERIOD = 8  # pixels between diagonal stripes: a colour stripe (2 px), a black one (1 px), the tinted image


def merged_token_colour(merged_index: int) -> tuple[int, int, int]:
    """The RGB colour of merged token `merged_index` (0-based among a stage's merged tokens: DC token j is j)."""
    return tuple(int(value) for value in PALETTE[merged_index % len(PALETTE)])


def merged_token_indices(stage: TokenProvenance, index: int = 0) -> list[int]:
    """The 0-based merged-token indices that carry at least one patch of image `index`, in order."""
    token = stage.patch_to_token[index]
    return sorted(int(t) - stage.num_kept - 1 for t in token[token > stage.num_kept].unique())


def pixel_patches(grid: tuple[int, int], size: tuple[int, int]) -> np.ndarray:
    """(H, W) int: for every pixel of an image of `size` (H, W) laid over the patch grid, its patch index
    (row-major, as in `patch_to_token`)."""
    rows = np.arange(size[0]) * grid[0] // size[0]
    cols = np.arange(size[1]) * grid[1] // size[1]
    return rows[:, None] * grid[1] + cols[None, :]


def region_boundaries(labels: np.ndarray) -> np.ndarray:
    """(H, W) bool: the pixels with a 4-neighbour of another label, on both sides of every border (2 px lines)."""
    edges = np.zeros(labels.shape, dtype=bool)
    vertical = labels[1:, :] != labels[:-1, :]
    horizontal = labels[:, 1:] != labels[:, :-1]
    edges[1:, :] |= vertical
    edges[:-1, :] |= vertical
    edges[:, 1:] |= horizontal
    edges[:, :-1] |= horizontal
    return edges


def stage_overlay(image: np.ndarray, stage: TokenProvenance, grid: tuple[int, int], index: int = 0) -> np.ndarray:
    """The image (H, W, 3) uint8, the model's input view, with image `index` of a stage drawn on it:

    - kept patches as they are, with a white border at their top and left edges;
    - patches that joined a kept token (the nearest-token merge) hatched in white, their region outlined in white;
    - each merged token's patches tinted and hatched in its colour (`merged_token_colour`), its region outlined;
    - dropped patches darkened to grey.

    Returns (H, W, 3) uint8."""
    height, width = image.shape[:2]
    patch = pixel_patches(grid, (height, width))
    token = stage.patch_to_token[index].cpu().numpy()[patch]  # (H, W): -1 dropped, 1 … num_kept kept, above merged
    kept = stage.kept[index].cpu().numpy()[patch]
    out = image.astype(np.float32)

    white = np.full(3, 255, dtype=np.float32)
    in_merged = token > stage.num_kept
    joined = (token >= 1) & ~in_merged & ~kept
    colours = np.where(in_merged[..., None], PALETTE[(token - stage.num_kept - 1) % len(PALETTE)], white)
    hatched = in_merged | joined
    out[hatched] = (1 - TINT) * out[hatched] + TINT * colours[hatched]
    diagonal = (np.arange(height)[:, None] + np.arange(width)[None, :]) % HATCH_PERIOD
    stripe, dark = hatched & (diagonal < 2), hatched & (diagonal == 2)  # the black stripe keeps light colours visible
    out[stripe] = colours[stripe]
    out[dark] = 0
    outline = hatched & region_boundaries(token)
    out[outline] = colours[outline]

    dropped = token < 0
    out[dropped] = 0.25 * out[dropped].mean(axis=-1, keepdims=True) + 20

    # top and left patch borders of kept patches, so single kept patches stand out
    borders = np.zeros((height, width), dtype=bool)
    borders[1:, :] |= patch[1:, :] != patch[:-1, :]
    borders[:, 1:] |= patch[:, 1:] != patch[:, :-1]
    out[borders & kept] = 255
    return out.clip(0, 255).astype(np.uint8)


def stage_summary(stage: TokenProvenance, index: int = 0, noun: str = "merged token") -> str:
    """'layer 4: 137 kept, 59 in 4 DC tokens, 0 dropped' for image `index` of a stage (1-based layer; `noun` names
    the merged tokens), with ', 12 merged into kept tokens' after the kept count when patches joined kept tokens."""
    token = stage.patch_to_token[index]
    tokens = len(merged_token_indices(stage, index))
    joined = int((stage.merged[index] & (token <= stage.num_kept)).sum())
    return (
        f"layer {stage.layer + 1}: {int(stage.kept[index].sum())} kept, "
        + (f"{joined} merged into kept tokens, " if joined else "")
        + f"{int((token > stage.num_kept).sum())} in {tokens} {noun}{'' if tokens == 1 else 's'}, "
        f"{int((token < 0).sum())} dropped"
    )
