"""How many tokens each block sees: the fixed token counts of a reduction schedule.

Pure integer arithmetic shared by the config validation, the model and the MAC counter, so that all three agree.
A sequence is always laid out as `[CLS, candidates (original patches), merged tokens]`.
"""

import math
from dataclasses import dataclass


@dataclass(frozen=True)
class ReductionStage:
    """One reduction step: after the attention of block `layer`, keep `keep_rate` of the candidates."""

    layer: int
    keep_rate: float
    window_size: int


def kept_count(num_candidates: int, keep_rate: float) -> int:
    """`⌊keep_rate · num_candidates⌋`, robust to float error (0.29 · 100 is 28.999…)."""
    return math.floor(keep_rate * num_candidates + 1e-6)


def merged_count(method: str, stage: ReductionStage) -> int:
    """Merged tokens after a stage: the frequency method keeps one DC token per window, `w²` in all."""
    if method == "freq":
        return stage.window_size**2
    raise ValueError(f"reduction_method {method!r} has no token schedule")


def pair(size: int | tuple[int, int]) -> tuple[int, int]:
    """(height, width) of a size given as one int or as a pair."""
    return (size, size) if isinstance(size, int) else tuple(size)


def patch_grid(image_size: int | tuple[int, int], patch_size: int | tuple[int, int]) -> tuple[int, int]:
    """(rows, columns) of patches for an image size and a patch size, each an int or a (height, width) pair."""
    (height, width), (patch_h, patch_w) = pair(image_size), pair(patch_size)
    return height // patch_h, width // patch_w


def check_stages(method: str, stages: list[ReductionStage], grid: tuple[int, int]) -> None:
    """Raise `ValueError` naming the field when a schedule cannot run on a patch grid."""
    num_candidates = grid[0] * grid[1]
    if num_candidates == 0:
        raise ValueError(f"image_size: the image holds no whole patch (patch grid {grid[0]}x{grid[1]})")
    for stage in stages:
        if method == "freq" and stage.window_size > min(grid):
            raise ValueError(
                f"dc_window_sizes: {stage.window_size}x{stage.window_size} DC windows at layer {stage.layer} "
                f"need a patch grid of at least that size, got {grid[0]}x{grid[1]} patches"
            )
        kept = kept_count(num_candidates, stage.keep_rate)
        if kept == 0:
            raise ValueError(
                f"keep_rate: {stage.keep_rate} of {num_candidates} candidate tokens at layer {stage.layer} "
                "keeps no token"
            )
        num_candidates = kept


def sequence_lengths(
    method: str, num_layers: int, stages: list[ReductionStage], grid: tuple[int, int]
) -> list[tuple[int, int]]:
    """Per block, (tokens its attention sees, tokens its MLP sees): the MLP of a reduction block runs reduced."""
    by_layer = {stage.layer: stage for stage in stages}
    candidates, merged = grid[0] * grid[1], 0
    lengths = []
    for layer in range(num_layers):
        attention_length = 1 + candidates + merged
        if layer in by_layer:
            candidates = kept_count(candidates, by_layer[layer].keep_rate)
            merged = merged_count(method, by_layer[layer])
        lengths.append((attention_length, 1 + candidates + merged))
    return lengths
