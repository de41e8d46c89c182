"""Analytic multiply-accumulate count of a (Freq)ViT forward pass, per method.md §5."""

from transformers import ViTConfig

from .models.freqvit.token_schedule import pair, patch_grid, sequence_lengths


def count_macs(config: ViTConfig, image_size: int | tuple[int, int] | None = None) -> int:
    """MACs of one image through the model: patch embedding, per block the q/k/v/o projections, QKᵀ and AV at the
    block's attention length and the MLP at its (possibly reduced) MLP length, and the classifier. For `freq` also
    the DC tokens' averaging (a matmul of the W window weights with the non-CLS tokens: W × tokens × width per
    stage, about 0.01% of the total).

    A plain `ViTConfig` counts as the unreduced model. `image_size` defaults to `config.image_size`.
    """
    grid = patch_grid(config.image_size if image_size is None else image_size, config.patch_size)
    patch_h, patch_w = pair(config.patch_size)
    width, mlp_width = config.hidden_size, config.intermediate_size
    method = getattr(config, "reduction_method", "none")
    stages = config.reduction_stages if method != "none" else []
    macs = grid[0] * grid[1] * config.num_channels * patch_h * patch_w * width
    windows = {stage.layer: stage.window_size**2 for stage in stages} if method == "freq" else {}
    lengths = sequence_lengths(method, config.num_hidden_layers, stages, grid)
    for layer, (attention_length, mlp_length) in enumerate(lengths):
        macs += windows.get(layer, 0) * (attention_length - 1) * width  # DC tokens: weights (W, n - 1) @ tokens
        macs += 4 * attention_length * width * width  # q, k, v, o projections
        macs += 2 * attention_length**2 * width  # QKᵀ and AV
        macs += 2 * mlp_length * width * mlp_width  # fc1, fc2
    return macs + width * config.num_labels


def count_parameters(config: ViTConfig) -> int:
    """Parameters of the unreduced image classifier a config describes, from the config alone (before any weight
    exists): patch and position embeddings, CLS token, per block the q/k/v/o projections, the MLP and two layer
    norms, the final norm and the classifier. The reduction adds at most a few per block."""
    grid = patch_grid(config.image_size, config.patch_size)
    patch_h, patch_w = pair(config.patch_size)
    width, mlp_width = config.hidden_size, config.intermediate_size
    embeddings = (config.num_channels * patch_h * patch_w + 1) * width + (grid[0] * grid[1] + 2) * width
    biases = (3 if getattr(config, "qkv_bias", True) else 0) + 1  # q, k, v (where the config has them) and o
    block = 4 * width * width + biases * width + 2 * mlp_width * width + mlp_width + width + 4 * width
    return embeddings + config.num_hidden_layers * block + 2 * width + (width + 1) * config.num_labels
