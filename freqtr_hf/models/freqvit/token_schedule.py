"""How many tokens each block sees: the fixed token counts of a reduction schedule.

Pure integer arithmetic shared by the config validation, the model and the MAC counter, so that all three agree.
A sequence is always laid out as `[prefix, candidates (original patches), merged tokens]`, the prefix being the tokens
that are never candidates (CLS and registers; none for SigLIP).
"""

import math
from dataclasses import dataclass
from typing import TYPE_CHECKING

from .methods import FIXED_OUTPUT_METHODS, KEY_WEIGHT_METHODS, MERGING_METHODS, PRUNING_METHODS  # noqa: F401

if TYPE_CHECKING:
    from .configuration_reduction import ReductionConfigMixin


@dataclass(frozen=True)
class ReductionStage:
    """One reduction step after the attention of block `layer`: keep `keep_rate` of the reducible tokens, or,
    with `remove` set (ToMe's per-layer form), all but `remove` of them. `window_size`: DC windows (`freq`).
    `multiple`: round the kept count so that the sequence after the stage (the `prefix` tokens, the kept tokens and
    the `added` ones the stage makes: `freq`'s DC tokens, EViT's fused token) is a multiple of it (GPU tiles)."""

    layer: int
    keep_rate: float
    window_size: int = 1
    remove: int | None = None
    multiple: int = 1
    added: int = 0
    prefix: int = 1

    def kept(self, count: int) -> int:
        """Tokens left of `count` reducible ones: `⌊keep_rate · count⌋` (robust to float error: 0.29 · 100 is
        28.999…), or, per layer, `count − remove` with at most half of them merged (ToMe's cap ⌊(t − 1)/2⌋, t the
        tokens with CLS); then rounded to the `multiple`."""
        if self.remove is not None:
            return count - min(self.remove, count // 2)
        return self.rounded(math.floor(self.keep_rate * count + 1e-6), count)

    def kept_rounding_up(self, count: int) -> int:
        """`⌈keep_rate · count⌉`, EViT's rule (robust to float error like `kept`), rounded to the `multiple`."""
        return self.rounded(math.ceil(self.keep_rate * count - 1e-6), count)

    def rounded(self, kept: int, count: int) -> int:
        """`kept` moved to the nearest count (the smaller on a tie) that makes the sequence length a multiple of
        `multiple`, keeps at least one token and still shortens the sequence (at most `count − 1 − added`); unchanged
        where no such count exists."""
        if self.multiple == 1:
            return kept
        fixed = self.prefix + self.added  # the tokens of the sequence that are not kept candidates
        length = fixed + kept
        below = length - length % self.multiple
        above = below + self.multiple if length % self.multiple else below
        for target in sorted((below, above), key=lambda target: abs(target - length)):
            if 1 <= target - fixed <= count - 1 - self.added:
                return target - fixed
        return kept


def stage_output(method: str, stage: ReductionStage, candidates: int, merged: int) -> tuple[int, int]:
    """(candidates, merged tokens) after a stage, from those before it. The keep rule of every method:

    - pruning (`topk`, `radial`, `ats` at most, `dynamicvit` at inference): keep `⌊r·m⌋` of the m candidates;
    - `freq`: the same, plus `w²` DC tokens;
    - `evit` (its official rule): keep `⌈r·(m + d)⌉` of all non-CLS tokens, an earlier fused token competing like
      any token, plus one new fused token for the rest;
    - merging (`tome`, `kmedoids`, `dpcknn`, `sit`, `patchmerger`, `sinkhorn`): all non-CLS tokens become
      `⌊r·(m + d)⌋` merged tokens (per-layer ToMe: `m + d − min(r, ⌊(m + d)/2⌋)`).
    """
    if method in MERGING_METHODS:
        return 0, stage.kept(candidates + merged)
    if method == "evit":
        return stage.kept_rounding_up(candidates + merged), 1
    extra = stage.window_size**2 if method == "freq" else 0
    return stage.kept(candidates), extra


def pair(size: int | tuple[int, int]) -> tuple[int, int]:
    """(height, width) of a size given as one int or as a pair."""
    return (size, size) if isinstance(size, int) else tuple(size)


def patch_grid(image_size: int | tuple[int, int], patch_size: int | tuple[int, int]) -> tuple[int, int]:
    """(rows, columns) of patches for an image size and a patch size, each an int or a (height, width) pair."""
    (height, width), (patch_h, patch_w) = pair(image_size), pair(patch_size)
    return height // patch_h, width // patch_w


def _where(stage: ReductionStage) -> str:
    """A stage's place in an error: reduction_layers counts blocks from 0, the Space and most readers from 1."""
    return f"layer {stage.layer} (block {stage.layer + 1})"


def check_stages(method: str, stages: list[ReductionStage], grid: tuple[int, int]) -> None:
    """Raise `ValueError` naming the field when a schedule cannot run on a patch grid: a stage must leave at least one
    token and make the sequence shorter (a keep rate that keeps every candidate while adding DC tokens would grow
    it, and leave its DC windows nothing to average)."""
    candidates, merged = grid[0] * grid[1], 0
    if candidates == 0:
        raise ValueError(f"image_size: the image holds no whole patch (patch grid {grid[0]}x{grid[1]})")
    for stage in stages:
        if method == "freq" and stage.window_size > min(grid):
            raise ValueError(
                f"dc_window_sizes: {stage.window_size}x{stage.window_size} DC windows at {_where(stage)} "
                f"need a patch grid of at least that size, got {grid[0]}x{grid[1]} patches"
            )
        reducible = candidates + merged if method in (*MERGING_METHODS, "evit") else candidates
        length = stage.prefix + candidates + merged
        candidates, merged = stage_output(method, stage, candidates, merged)
        field = "tome_r" if stage.remove is not None else "keep_rate"
        rule = f"removing {stage.remove}" if stage.remove is not None else f"keeping {stage.keep_rate}"
        if (candidates + merged if method in MERGING_METHODS else candidates) <= 0:
            tokens = f"{reducible} token" + "s" * (reducible != 1)
            raise ValueError(f"{field}: {rule} of {tokens} at {_where(stage)} leaves no token")
        shortened = stage.prefix + candidates + merged
        if shortened >= length and stage.remove is None:  # per-layer ToMe stops at its cap
            if method == "freq" and candidates < reducible:
                field, rule = "dc_window_sizes", f"{stage.window_size}x{stage.window_size} DC windows"
            raise ValueError(
                f"{field}: {rule} at {_where(stage)} would turn {length} tokens into {shortened}; a "
                "reduction must shorten the sequence (a keep rate of 1.0 skips a layer)"
            )


def sequence_lengths(
    method: str, num_layers: int, stages: list[ReductionStage], grid: tuple[int, int], prefix: int = 1
) -> list[tuple[int, int]]:
    """Per block, (tokens its attention sees, tokens its MLP sees): the MLP of a reduction block runs reduced.
    `prefix`: the tokens before the patches (CLS, registers)."""
    by_layer = {stage.layer: stage for stage in stages}
    candidates, merged = grid[0] * grid[1], 0
    lengths = []
    for layer in range(num_layers):
        attention_length = prefix + candidates + merged
        if layer in by_layer:
            candidates, merged = stage_output(method, by_layer[layer], candidates, merged)
        lengths.append((attention_length, prefix + candidates + merged))
    return lengths


def configured_sequence_lengths(config: "ReductionConfigMixin") -> list[tuple[int, int]]:
    """`sequence_lengths` of a reducing model's config at its configured image size."""
    grid = patch_grid(config.image_size, config.patch_size)
    return sequence_lengths(
        config.reduction_method, config.num_hidden_layers, config.reduction_stages, grid, config.num_prefix_tokens
    )


def merged_counts(method: str, stages: list[ReductionStage], grid: tuple[int, int]) -> list[int]:
    """Merged tokens after each stage on a grid: the output size of the learned merging modules."""
    candidates, merged, counts = grid[0] * grid[1], 0, []
    for stage in stages:
        candidates, merged = stage_output(method, stage, candidates, merged)
        counts.append(merged)
    return counts
