"""The token-reduction fields every reducing model's config shares (ViT, DINOv2, CLIP, SigLIP): one mixin that adds
them to a family's transformers config, checks them, and turns them into the reduction schedule."""

import math
from dataclasses import dataclass
from pathlib import Path

from .methods import (  # noqa: F401 - the method lists, also read from here
    CLS_SCORE_METHODS, FREQ_PRESETS, KEY_WEIGHT_METHODS, MERGING_METHODS, PRUNING_METHODS, REDUCTION_METHODS,
    SCORE_SOURCES, TOKEN_RESTORATIONS, TRAINING_FREE_FREQ, TRAINING_FREE_METHODS,
)
from .token_schedule import ReductionStage, check_stages, pair, patch_grid


RADIAL_NORMS = ("l1", "l2", "linf")
DC_UPDATES = ("count_weighted", "token_mean")
DC_EMPTY_FILLS = ("global_mean", "zeros")
LOW_FREQUENCY_MERGES = ("dc_window", "nearest")
MERGE_FEATURES = ("keys", "hidden_states")
REDUCTION_FIELDS = (
    "reduction_method", "reduction_layers", "keep_rate", "dc_window_sizes", "attention_reweighting",
    "dc_position_embedding", "dc_update", "dc_empty_fill", "tome_r", "radial_norm", "cluster_iterations",
    "dpc_neighbours", "sinkhorn_iterations", "dynamicvit_ratio_weight", "score_source", "low_frequency_merge",
    "merge_features", "proportional_attention", "dc_key_weight_exponent", "low_frequency_pool", "sequence_multiple",
)
# the fields of the backbone convention (`...Backbone` classes): which stages, and how their maps are made
BACKBONE_FIELDS = ("token_restoration", "apply_layernorm", "reshape_hidden_states", "_out_features", "_out_indices")
# bounds that keep a forward pass finite in time: beyond them clustering and Sinkhorn do not change any more
ITERATION_LIMITS = {"cluster_iterations": (1, 100), "dpc_neighbours": (1, 64), "sinkhorn_iterations": (1, 100)}
# which config class of this project loads a checkpoint of each transformers model type, for the refusals
FAMILY_CONFIGS = {
    "vit": "FreqViTConfig",
    "dinov2": "FreqDinov2Config",
    "dinov2_with_registers": "FreqDinov2WithRegistersConfig",
    "clip": "FreqCLIPVisionConfig",
    "clip_vision_model": "FreqCLIPVisionConfig",
    "siglip": "FreqSiglipVisionConfig",
    "siglip_vision_model": "FreqSiglipVisionConfig",
}


@dataclass(repr=False, eq=False)
class ReductionConfigMixin:
    r"""
    The token-reduction fields of a config (Lee et al., NeurIPS 2025). Every field of the family's transformers config
    keeps its meaning. Values are checked when the config is built: an out-of-range or inconsistent value raises
    `ValueError` naming the field.

    reduction_method (`str`, defaults to `"freq"`):
        `"freq"` (frequency-aware: keep high-frequency tokens, average the rest into DC tokens), `"none"` (the plain
        model), or a baseline: `"topk"`, `"evit"`, `"tome"`, `"kmedoids"`, `"dpcknn"`, `"ats"`, `"dynamicvit"`,
        `"sit"`, `"patchmerger"`, `"sinkhorn"`, `"radial"` (see the README for each one's keep rule). The methods
        that score tokens by the CLS token's attention (`"topk"`, `"evit"`, `"ats"`) need a CLS token (SigLIP has none).
    reduction_layers (`list[int]`, defaults to `(3, 6, 9)`):
        0-based indices of the blocks after whose attention (+ residual, before the MLP) tokens are reduced.
    keep_rate (`float` or `list[float]`, defaults to `0.7`):
        Fraction of the remaining candidate tokens kept at each reduction layer, one number for all or one per
        layer; the kept count is `⌊keep_rate · candidates⌋`. `1.0` at a layer means that layer does not reduce.
        Candidates are the patch tokens: CLS and register tokens are never reduced.
    dc_window_sizes (`list[int]`, defaults to `(2, 1, 1)`):
        Per reduction layer, `w`: the original patch grid is cut into `w × w` windows, one DC token each.
    attention_reweighting (`bool`, defaults to `True`):
        Learnable per-head `ω1` (every block) and `ω2` (blocks that see DC tokens), initialised to zero:
        `Â = A + ω1·(A − 1/n) + ω2·A⊙M_DC`.
    dc_position_embedding (`bool`, defaults to `True`):
        A learnable embedding per DC slot and reduction layer, zero-initialised, added to the DC tokens.
    dc_update (`str`, defaults to `"count_weighted"`):
        How later reduction layers fold new low-frequency tokens into the existing DC tokens: `"count_weighted"`
        (running mean weighted by the number of original patches each DC token stands for) or `"token_mean"`
        (every old DC token counts as one token; that of a window that received nothing, none).
    dc_empty_fill (`str`, defaults to `"global_mean"`):
        Value of a DC window that received no token: `"global_mean"` (mean of all low-frequency content) or
        `"zeros"`. Either way every image has the same number of tokens.
    low_frequency_merge (`str`, defaults to `"dc_window"`):
        Where `"freq"` puts a low-frequency token: `"dc_window"` (the paper: into its window's DC token) or
        `"nearest"` (into the most similar of the kept tokens and its window's DC centre, as a size-weighted mean;
        a kept token then stands for several patches). The token counts are the same either way.
    merge_features (`str`, defaults to `"hidden_states"`):
        The features `"nearest"` compares by cosine similarity: the block's `"hidden_states"` or its head-averaged
        `"keys"` (ToMe's choice).
    proportional_attention (`bool`, defaults to `False`):
        For `"freq"`: every kept and DC token weighs, as an attention key, as many patches as it stands for (a
        `log size` bias on the attention logits, ToMe's proportional attention). Not for flash or flex attention.
    dc_key_weight_exponent (`float`, defaults to `1.0`):
        With `proportional_attention`, a DC token weighs `size ** dc_key_weight_exponent` attention keys: `1` as many
        as the patches it averages (like every other token), `0` one key, between the two a tempered count. A DC
        window that received no token stays masked. In [0, 1]; other values need `proportional_attention`.
    low_frequency_pool (`float`, defaults to `0.0`):
        For `"freq"`: the share p of each stage's candidates, the lowest-scoring, among which the tokens given up are
        chosen by redundancy: those most similar (cosine on `merge_features`) to a token above the pool, which is
        always kept. `0` (the paper): the lowest-scoring tokens are given up. It acts only where a stage gives up
        fewer than `round(p · candidates)` tokens (keep rates above `1 − p`). In [0, 1).
    sequence_multiple (`int`, defaults to 1):
        Round each stage's kept count to the nearest one that makes the sequence after the stage (CLS and registers,
        kept tokens, DC or fused tokens) a multiple of this, e.g. 8, 64 or 128 to fill GPU tiles; a stage still keeps
        one token and shortens the sequence, and keeps its unrounded count where no multiple allows that. `1`: no
        rounding. The MAC count follows the rounded counts. Not with `tome_r`.
    tome_r (`int`, *optional*):
        ToMe in its original per-layer form: merge `tome_r` tokens in every block (`reduction_layers` and
        `keep_rate` are then unused); for models with one CLS token and no registers. Unset: ToMe reduces per stage,
        like every other method.
    radial_norm (`str`, defaults to `"l2"`):
        Distance to the image centre for `"radial"`: `"l1"`, `"l2"` or `"linf"`.
    cluster_iterations (`int`, defaults to 3): k-medoids iterations.
    dpc_neighbours (`int`, defaults to 5): neighbours for the DPC-KNN density.
    sinkhorn_iterations (`int`, defaults to 3): Sinkhorn normalisation rounds.
    dynamicvit_ratio_weight (`float`, defaults to 2.0): weight of DynamicViT's keep-ratio loss.
    token_restoration (`str`, defaults to `"nearest"`): how a backbone's feature map (and `restore_hidden_states`)
        puts back a patch that left the sequence: `"carrier"` (the token that carries it), `"residual"` (its own state
        when it left plus what its carrier gained since: the paper's residual injection) or `"nearest"` (its own state
        plus what the most similar remaining token gained since). A patch a pruning method dropped follows the most
        similar token. See docs/dense.md.
    """

    reduction_method: str = "freq"
    reduction_layers: list[int] | tuple[int, ...] = (3, 6, 9)
    keep_rate: float | int | list[float | int] | tuple[float | int, ...] = 0.7
    dc_window_sizes: list[int] | tuple[int, ...] = (2, 1, 1)
    attention_reweighting: bool = True
    dc_position_embedding: bool = True
    dc_update: str = "count_weighted"
    dc_empty_fill: str = "global_mean"
    tome_r: int | None = None
    radial_norm: str = "l2"
    cluster_iterations: int = 3
    dpc_neighbours: int = 5
    sinkhorn_iterations: int = 3
    dynamicvit_ratio_weight: float | int = 2.0
    score_source: str = "attention"
    low_frequency_merge: str = "dc_window"
    merge_features: str = "hidden_states"
    proportional_attention: bool = False
    dc_key_weight_exponent: float | int = 1.0
    low_frequency_pool: float | int = 0.0
    sequence_multiple: int = 1
    token_restoration: str = "nearest"

    # set by each family: the checkpoint model types it loads, those it refuses with a reason of their own, and the
    # Auto classes a saved model serves with trust_remote_code (class -> "module.Class")
    compatible_model_types = ()
    refused_model_types = {}
    auto_map_entries = {}

    def __post_init__(self, **kwargs):
        self._check_out_indices(kwargs.get("out_indices"))
        super().__post_init__(**kwargs)
        self._check_reduction()

    def _check_out_indices(self, out_indices: list[int] | None) -> None:
        """A backbone's `out_indices` name stages that exist (transformers would index past the end silently)."""
        count = self.num_hidden_layers + 1
        if out_indices is not None and any(not -count <= index < count for index in out_indices):
            raise ValueError(
                f"out_indices: every index must be in [-{count}, {count}) (stem and {count - 1} stages), got "
                f"{list(out_indices)}"
            )

    @property
    def num_prefix_tokens(self) -> int:
        """The tokens before the patches, never reduced: CLS (and registers; none for SigLIP)."""
        return 1

    @property
    def feed_forward_macs(self) -> int:
        """MACs of one token through a block's MLP (two matrices, `intermediate_size` wide)."""
        return 2 * self.hidden_size * self.intermediate_size

    def head_macs(self, length: int) -> int:
        """MACs of the model's head on its final sequence of `length` tokens: a linear classifier on one token."""
        return self.hidden_size * self.num_labels

    @classmethod
    def from_dict(cls, config_dict: dict, **kwargs):
        # from_pretrained's overrides (reduction_layers=..., num_hidden_layers=...) join the dict before the config is
        # built, so the schedule is checked once, against the final values: a 6-layer model loads with its own schedule
        fields = getattr(cls, "__dataclass_fields__", {})
        config_dict = {**config_dict, **{key: kwargs.pop(key) for key in list(kwargs) if key in fields}}
        return super().from_dict(config_dict, **kwargs)

    def validate_reduction(self) -> None:
        """Check the reduction fields again (the model calls this when it is built, so a field changed after the
        config was made is checked too). Raises `ValueError` naming the field."""
        self._check_reduction()

    def _check_reduction(self) -> None:
        self.reduction_layers = tuple(self.reduction_layers)
        self.dc_window_sizes = tuple(self.dc_window_sizes)
        if isinstance(self.keep_rate, (list, tuple)):
            self.keep_rate = tuple(self.keep_rate)
        _check_choice("reduction_method", self.reduction_method, REDUCTION_METHODS)
        _check_choice("dc_update", self.dc_update, DC_UPDATES)
        _check_choice("dc_empty_fill", self.dc_empty_fill, DC_EMPTY_FILLS)
        _check_choice("radial_norm", self.radial_norm, RADIAL_NORMS)
        _check_choice("score_source", self.score_source, SCORE_SOURCES)
        _check_choice("low_frequency_merge", self.low_frequency_merge, LOW_FREQUENCY_MERGES)
        _check_choice("merge_features", self.merge_features, MERGE_FEATURES)
        _check_choice("token_restoration", self.token_restoration, TOKEN_RESTORATIONS)
        if self.reduction_method in CLS_SCORE_METHODS and self.num_prefix_tokens == 0:
            raise ValueError(
                f"reduction_method: {self.reduction_method!r} scores tokens by the CLS token's attention, and a "
                f"{type(self).__name__} has no CLS token; use 'freq' (its score needs none) or a merging method"
            )
        for name in ("image_size", "patch_size"):
            sizes = pair(getattr(self, name))
            if any(isinstance(size, bool) or not isinstance(size, int) or size < 1 for size in sizes):
                raise ValueError(f"{name}: must be a positive whole number (or a pair of them), got {getattr(self, name)}")
        for name in ("num_hidden_layers", "num_attention_heads", "hidden_size"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name}: must be >= 1, got {getattr(self, name)}")
        if self.hidden_size % self.num_attention_heads:  # the model would silently drop the remainder's channels
            raise ValueError(
                f"hidden_size: must be a multiple of num_attention_heads ({self.num_attention_heads}), got "
                f"{self.hidden_size}"
            )
        if self.reduction_method == "dynamicvit" and self.hidden_size < 4:  # its predictor narrows to hidden_size/4
            raise ValueError(f"hidden_size: DynamicViT's keep predictor needs at least 4, got {self.hidden_size}")
        if self.tome_r is not None and self.reduction_method != "tome":
            raise ValueError(f"tome_r: per-layer ToMe's setting, but reduction_method is {self.reduction_method!r}")
        if self.tome_r is not None and self.num_prefix_tokens != 1:
            raise ValueError(
                f"tome_r: per-layer ToMe matches the whole sequence with one CLS token first; a {type(self).__name__} "
                f"has {self.num_prefix_tokens} tokens before its patches: leave tome_r unset (ToMe per stage)"
            )
        if self.sequence_multiple < 1:
            raise ValueError(f"sequence_multiple: must be >= 1, got {self.sequence_multiple!r}")
        if self.sequence_multiple > 1 and self.tome_r is not None:
            raise ValueError("sequence_multiple: per-layer ToMe (tome_r) merges a fixed number of tokens per block")
        if self.tome_r is not None and self.tome_r < 1:
            raise ValueError(f"tome_r: must be a positive number of tokens, got {self.tome_r}")
        for name, (low, high) in ITERATION_LIMITS.items():
            if not low <= getattr(self, name) <= high:
                raise ValueError(f"{name}: must be in [{low}, {high}], got {getattr(self, name)}")
        weight = self.dynamicvit_ratio_weight
        if not (math.isfinite(weight) and weight >= 0):
            raise ValueError(f"dynamicvit_ratio_weight: must be a finite number >= 0, got {weight}")
        exponent = self.dc_key_weight_exponent
        if not 0.0 <= exponent <= 1.0:  # also refuses NaN
            raise ValueError(f"dc_key_weight_exponent: must be in [0, 1], got {exponent!r}")
        if exponent != 1.0 and not self.proportional_attention:
            raise ValueError(
                f"dc_key_weight_exponent: weighs DC tokens under proportional_attention, which is off; got {exponent!r}"
            )
        if not 0.0 <= self.low_frequency_pool < 1.0:  # also refuses NaN
            raise ValueError(f"low_frequency_pool: must be in [0, 1), got {self.low_frequency_pool!r}")
        layers = self.reduction_layers
        uses_schedule = self.reduction_method != "none" and self.tome_r is None
        if uses_schedule and any(not 0 <= layer < self.num_hidden_layers for layer in layers):  # named first
            raise ValueError(
                f"reduction_layers: every layer must be in [0, {self.num_hidden_layers}) (num_hidden_layers), "
                f"got {list(layers)}"
            )
        rates = self.keep_rate if isinstance(self.keep_rate, tuple) else (self.keep_rate,) * len(layers)
        if len(rates) != len(layers):
            raise ValueError(
                f"keep_rate: {len(rates)} values for {len(layers)} reduction_layers; give one number or one per layer"
            )
        if any(not 0.0 < rate <= 1.0 for rate in rates):  # also refuses NaN
            raise ValueError(f"keep_rate: every rate must be in (0, 1], got {self.keep_rate!r}")
        if self.reduction_method == "freq" and len(self.dc_window_sizes) != len(layers):  # only freq has DC windows
            raise ValueError(
                f"dc_window_sizes: {len(self.dc_window_sizes)} values for {len(layers)} reduction_layers"
            )
        if any(size < 1 for size in self.dc_window_sizes):
            raise ValueError(f"dc_window_sizes: every window size must be >= 1, got {list(self.dc_window_sizes)}")
        if list(layers) != sorted(set(layers)):
            raise ValueError(f"reduction_layers: must be strictly increasing, got {list(layers)}")
        grid = patch_grid(self.image_size, self.patch_size)
        if grid[0] * grid[1] == 0:
            raise ValueError(
                f"image_size: a {self.image_size} image holds no whole {self.patch_size} patch (patch_size)"
            )
        if not uses_schedule:
            return  # the schedule is unused: a plain model of any depth keeps the default fields
        check_stages(self.reduction_method, self.reduction_stages, grid)

    def reduction_signature(self) -> dict:
        """Every value the model's reduction is built from, by name, in a normal form (a list as a tuple, a size as
        a pair, one keep rate as one per layer), so that a model can compare it with the one it was built with: an
        equal value written another way is no change."""
        fields = (*REDUCTION_FIELDS, "num_hidden_layers", "hidden_size", "num_attention_heads")
        values = {name: getattr(self, name) for name in fields}
        values = {name: tuple(value) if isinstance(value, list) else value for name, value in values.items()}
        if not isinstance(values["keep_rate"], tuple):
            values["keep_rate"] = (values["keep_rate"],) * len(values["reduction_layers"])
        return {**values, "image_size": tuple(pair(self.image_size)), "patch_size": tuple(pair(self.patch_size))}

    @property
    def weights_attention_keys(self) -> bool:
        """Whether the reduction biases attention keys (ToMe's sizes, ATS's padding, DynamicViT's training mask,
        `freq` with `proportional_attention`): only eager and sdpa attention take such a bias."""
        return self.reduction_method in KEY_WEIGHT_METHODS or (
            self.reduction_method == "freq" and self.proportional_attention
        )

    @property
    def keep_rates(self) -> tuple[float, ...]:
        """One keep rate per entry of `reduction_layers`."""
        if isinstance(self.keep_rate, (list, tuple)):
            return tuple(self.keep_rate)
        return (self.keep_rate,) * len(self.reduction_layers)

    @property
    def reduction_stages(self) -> list[ReductionStage]:
        """The layers that actually reduce: none for `"none"`, and never a layer whose keep rate is 1.0."""
        if self.reduction_method == "none":
            return []
        prefix = self.num_prefix_tokens
        if self.tome_r is not None:
            return [ReductionStage(layer, 1.0, remove=self.tome_r) for layer in range(self.num_hidden_layers)]
        method = self.reduction_method
        sizes = self.dc_window_sizes if method == "freq" else (1,) * len(self.reduction_layers)
        return [
            ReductionStage(
                layer, rate, size, multiple=self.sequence_multiple,
                added=size**2 if method == "freq" else int(method == "evit"), prefix=prefix,
            )
            for layer, rate, size in zip(self.reduction_layers, self.keep_rates, sizes)
            if rate < 1.0
        ]

    def save_pretrained(self, save_directory, *args, **kwargs):
        """`PretrainedConfig.save_pretrained`, with an `auto_map` of this project's own classes whose code the folder
        carries, and nothing else: an entry inherited from the source checkpoint could name code that a user of the
        saved folder would run with `trust_remote_code=True`."""
        self.auto_map = {
            auto_class: reference for auto_class, reference in self.auto_map_entries.items()
            if auto_class == "AutoConfig" or (Path(save_directory) / f"{reference.split('.')[0]}.py").is_file()
        }  # a model's save_pretrained copies its code before it saves the config
        return super().save_pretrained(save_directory, *args, **kwargs)

    @classmethod
    def get_config_dict(cls, pretrained_model_name_or_path, **kwargs):
        config_dict, kwargs = super().get_config_dict(pretrained_model_name_or_path, **kwargs)
        model_type = config_dict.get("model_type")
        # a vision tower inside a full model (CLIP, SigLIP): its own config is the vision part
        if cls.base_config_key and model_type in cls.compatible_model_types and cls.base_config_key in config_dict:
            config_dict = config_dict[cls.base_config_key]
            model_type = config_dict.get("model_type")
        if model_type in cls.refused_model_types:
            raise ValueError(f"{pretrained_model_name_or_path}: {cls.refused_model_types[model_type]}")
        if model_type not in cls.compatible_model_types:
            other = FAMILY_CONFIGS.get(model_type)
            hint = f"; load it with {other}'s model classes" if other else ""
            raise ValueError(
                f"{pretrained_model_name_or_path} is a {model_type!r} checkpoint; {cls.__name__} loads model types "
                f"{cls.compatible_model_types}{hint}"
            )
        config_dict["model_type"] = cls.model_type  # the family's config becomes this project's
        return config_dict, kwargs


def _check_choice(field: str, value: str, choices: tuple[str, ...]) -> None:
    if value not in choices:
        raise ValueError(f"{field}: must be one of {choices}, got {value!r}")
