"""Analytic multiply-accumulate count of a reducing model's forward pass (any family), per method.md §5."""

from transformers import PreTrainedConfig, ViTConfig

from .models.freqvit.configuration_reduction import ReductionConfigMixin
from .models.freqvit.token_schedule import pair, patch_grid, sequence_lengths


def count_macs(config: PreTrainedConfig, image_size: int | tuple[int, int] | None = None) -> int:
    """MACs of one image through the model: patch embedding, per block the q/k/v/o projections, QKᵀ and AV at the
    block's attention length and the MLP at its (possibly reduced) MLP length, and the head on the final sequence
    (a classifier, SigLIP's attention pooling). For `freq` also the DC tokens' averaging (a matmul of the W window
    weights with the non-prefix tokens: W × tokens × width per stage, about 0.01% of the total). Layer norms,
    activations and softmax are not counted.

    A reducing config of any family (`FreqViTConfig`, `FreqDinov2Config`, ...) counts its reduction; a plain
    `ViTConfig` counts as the unreduced ViT. `image_size` defaults to `config.image_size`.
    """
    grid = patch_grid(config.image_size if image_size is None else image_size, config.patch_size)
    patch_h, patch_w = pair(config.patch_size)
    width = config.hidden_size
    if isinstance(config, ReductionConfigMixin):
        method, stages, prefix = config.reduction_method, config.reduction_stages, config.num_prefix_tokens
        feed_forward, head_macs = config.feed_forward_macs, config.head_macs
    elif isinstance(config, ViTConfig):
        method, stages, prefix = "none", [], 1
        feed_forward, head_macs = 2 * width * config.intermediate_size, lambda length: width * config.num_labels
    else:
        raise TypeError(f"config: count_macs reads a reducing config or a ViTConfig, got {type(config).__name__}")
    macs = grid[0] * grid[1] * config.num_channels * patch_h * patch_w * width
    windows = {stage.layer: stage.window_size**2 for stage in stages} if method == "freq" else {}
    lengths = sequence_lengths(method, config.num_hidden_layers, stages, grid, prefix)
    for layer, (attention_length, mlp_length) in enumerate(lengths):
        macs += windows.get(layer, 0) * (attention_length - prefix) * width  # DC tokens: weights (W, n - p) @ tokens
        macs += 4 * attention_length * width * width  # q, k, v, o projections
        macs += 2 * attention_length**2 * width  # QKᵀ and AV
        macs += mlp_length * feed_forward  # the MLP
    final_length = lengths[-1][1] if lengths else prefix + grid[0] * grid[1]
    return macs + head_macs(final_length)

