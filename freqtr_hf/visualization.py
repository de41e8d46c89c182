"""Pictures of a reduction: which patches are kept, which merged token each of the others went into, which are gone.

`stages_image` draws every stage of one image with a legend, and `amplitude_plot` the high-frequency amplitude per
layer, as the Space shows them (matplotlib's object API: nothing global). Merged tokens are drawn so that they stay visible on any photo, not only as a tint (a blue tint vanishes in a sky):
each merged token's patches are tinted and hatched with diagonal stripes of its colour beside black ones, and its
region is outlined in its colour. `merged_token_colour` gives the colours for a legend.
"""

import textwrap

import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from matplotlib.patches import Patch
from PIL import Image

from .models.freqvit.token_state import TokenProvenance

MERGED_NAMES = {"freq": "DC token", "evit": "fused token"}  # what a merged token is called, per method
STAGES_PER_ROW = 3

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
    return sorted(int(t) - stage.first_merged for t in token[token >= stage.first_merged].unique())


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
    token = stage.patch_to_token[index].cpu().numpy()[patch]  # (H, W): -1 dropped, then kept, from first_merged merged
    kept = stage.kept[index].cpu().numpy()[patch]
    out = image.astype(np.float32)

    white = np.full(3, 255, dtype=np.float32)
    in_merged = token >= stage.first_merged
    joined = (token >= 0) & ~in_merged & ~kept
    colours = np.where(in_merged[..., None], PALETTE[(token - stage.first_merged) % len(PALETTE)], white)
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
    joined = int((stage.merged[index] & (token < stage.first_merged)).sum())
    return (
        f"layer {stage.layer + 1}: {int(stage.kept[index].sum())} kept, "
        + (f"{joined} merged into kept tokens, " if joined else "")
        + f"{int((token >= stage.first_merged).sum())} in {tokens} {noun}{'' if tokens == 1 else 's'}, "
        f"{int((token < 0).sum())} dropped"
    )


def draw_stage(panel, view: np.ndarray, stage: TokenProvenance, grid: tuple[int, int], method: str) -> None:
    """One stage on a (sub)figure: the model's view (2× up, so the hatching is fine) with the stage drawn on it, the
    stage's summary as the title, and a legend below."""
    axis = panel.add_axes((0.03, 0.2, 0.94, 0.64))  # room above for the title, below for the legend
    axis.imshow(stage_overlay(view.repeat(2, axis=0).repeat(2, axis=1), stage, grid))
    axis.set_axis_off()
    noun = MERGED_NAMES.get(method, "merged token")
    axis.set_title(textwrap.fill(stage_summary(stage, noun=noun), 36), fontsize=13)
    handles = []
    hatched = dict(edgecolor="black", hatch="///")
    if bool(stage.kept[0].any()):
        handles.append(Patch(facecolor="white", edgecolor="black", label="kept patch (white border)"))
    if bool((stage.merged[0] & (stage.patch_to_token[0] < stage.first_merged)).any()):
        handles.append(Patch(facecolor="white", label="merged into a kept token", **hatched))
    merged = merged_token_indices(stage)
    if len(merged) <= 6:
        handles += [
            Patch(facecolor=np.array(merged_token_colour(j)) / 255, label=f"{noun} {j + 1}", **hatched)
            for j in merged
        ]
    else:
        handles.append(Patch(facecolor="white", label=f"{len(merged)} {noun}s (colours repeat)", **hatched))
    if bool(stage.dropped[0].any()):
        handles.append(Patch(facecolor="0.2", edgecolor="black", label="dropped (grey)"))
    panel.legend(handles=handles, loc="upper center", bbox_to_anchor=(0.5, 0.19), ncol=2, fontsize=11, frameon=False)


def stages_image(
    view: np.ndarray, provenance: tuple[TokenProvenance, ...], grid: tuple[int, int], method: str
) -> Image.Image:
    """Every reduction stage side by side (`STAGES_PER_ROW` a row), as one RGB image; the model's view if none
    reduces."""
    if not provenance:
        return Image.fromarray(view)
    rows = -(-len(provenance) // STAGES_PER_ROW)
    width = min(len(provenance), STAGES_PER_ROW)
    figure = Figure(figsize=(4.6 * width, 5.6 * rows), dpi=100)  # not pyplot's: nothing global to close
    panels = np.asarray(figure.subfigures(rows, width, squeeze=False)).ravel()
    for panel, stage in zip(panels, provenance):
        draw_stage(panel, view, stage, grid, method)
    canvas = FigureCanvasAgg(figure)
    canvas.draw()
    return Image.fromarray(np.asarray(canvas.buffer_rgba())[..., :3].copy())


def amplitude_plot(unreduced: list[float], reduced: list[float], stages: list[int]) -> Figure:
    """The relative log amplitude at π after each layer, unreduced against reduced; `stages` are 0-based."""
    figure = Figure(figsize=(6, 3.2))
    axis = figure.subplots()
    layers = range(1, len(unreduced) + 1)
    axis.plot(layers, unreduced, "o-", label="unreduced")
    axis.plot(layers, reduced, "s-", label="reduced")
    for layer in stages:
        axis.axvline(layer + 1, color="grey", linestyle=":", linewidth=1)
    axis.set_xticks(list(layers))
    axis.set_xlabel("layer (from 1; dotted: reduction layers)")
    axis.set_ylabel("log amplitude at π (rel. to 0)")
    axis.set_title("High-frequency amplitude after each layer")
    axis.legend()
    figure.tight_layout()
    return figure
