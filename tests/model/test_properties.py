"""Property-based checks over generated configs: every config is refused naming a field, or gives finite logits of
the right shape, with a batch equal to its images run alone, and a provenance that puts every patch in exactly one
of kept, merged and dropped; a field changed after construction is refused when a model is built or run."""

import math

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from freqtr_hf import FreqViTConfig, FreqViTForImageClassification, count_macs
from freqtr_hf.models.freqvit.configuration_freqvit import REDUCTION_METHODS, REDUCTION_FIELDS
from freqtr_hf.models.freqvit.token_schedule import PRUNING_METHODS, sequence_lengths

FAST = settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
FIELD_NAMES = (*REDUCTION_FIELDS, "image_size", "patch_size", "num_hidden_layers")

@st.composite
def configs(draw) -> dict:
    """Mostly consistent schedules (so that many models run), with a share of broken values of every kind."""
    depth = draw(st.integers(1, 4))
    stages = draw(st.integers(0, 3))
    layers = sorted(draw(st.lists(st.integers(-1, depth), min_size=stages, max_size=stages)))
    rate = st.one_of(st.sampled_from([0.25, 0.5, 0.7, 0.9, 1.0]), st.floats(-0.5, 1.5), st.just(math.nan))
    rates = draw(st.one_of(rate, st.lists(rate, min_size=stages, max_size=stages + draw(st.integers(0, 1)))))
    return {
        "reduction_method": draw(st.sampled_from(REDUCTION_METHODS)),
        "num_hidden_layers": depth,
        "reduction_layers": layers,
        "keep_rate": rates,
        "dc_window_sizes": draw(st.lists(st.sampled_from([1, 1, 2, 3, 0, 9]), min_size=stages, max_size=stages)),
        "image_size": draw(st.sampled_from([16, 32, 48])),
        "patch_size": draw(st.sampled_from([4, 8, 8, 16, 0, 40])),
        "dc_update": draw(st.sampled_from(["count_weighted", "token_mean", "count_weighted", "median"])),
        "score_source": draw(st.sampled_from(["attention", "logits"])),
        "cluster_iterations": draw(st.sampled_from([1, 3, 3, 0, 10**6])),
        "low_frequency_merge": draw(st.sampled_from(["dc_window", "nearest"])),
        "merge_features": draw(st.sampled_from(["keys", "hidden_states"])),
        "proportional_attention": draw(st.booleans()),
        "dc_key_weight_exponent": draw(st.sampled_from([1.0, 0.5, 0.0, -1.0])),
        "sequence_multiple": draw(st.sampled_from([1, 1, 2, 4, 8, 0])),
    }


TINY = dict(hidden_size=16, num_attention_heads=2, intermediate_size=32, num_labels=5)


@settings(FAST, max_examples=200)
@given(values=configs())
def test_a_config_is_refused_naming_a_field_or_runs_finite_and_batch_consistent(values):
    try:
        config = FreqViTConfig(**TINY, **values)
    except ValueError as error:
        assert any(name in str(error) for name in FIELD_NAMES), str(error)
        return
    model = FreqViTForImageClassification(config).eval()
    torch.manual_seed(0)
    pixels = torch.randn(3, 3, config.image_size, config.image_size)
    with torch.no_grad():
        batch = model(pixels).logits
        alone = torch.cat([model(pixels[i : i + 1]).logits for i in range(3)])
        traced = model(pixels, output_token_provenance=True)
        hidden_states = model(pixels, output_hidden_states=True).hidden_states
    assert batch.shape == (3, 5) and torch.isfinite(batch).all()
    grid = config.image_size // config.patch_size
    lengths = sequence_lengths(config.reduction_method, config.num_hidden_layers, config.reduction_stages, (grid, grid))
    assert [1 + grid**2] + [mlp for _, mlp in lengths] == [state.shape[1] for state in hidden_states]
    torch.testing.assert_close(batch, alone, rtol=1e-4, atol=1e-4)
    torch.testing.assert_close(traced.logits, batch)  # tracking provenance changes nothing
    for stage in traced.token_provenance:  # every patch is kept, merged or dropped: exactly one of them
        assert torch.all(stage.kept.long() + stage.merged.long() + stage.dropped.long() == 1)
        assert torch.all(stage.kept.sum(1) <= stage.num_kept)
        assert config.reduction_method in PRUNING_METHODS or not stage.dropped.any()  # only pruning drops patches


changes = st.sampled_from(
    [
        ("keep_rate", 5.0), ("keep_rate", math.nan), ("keep_rate", 0.0), ("reduction_layers", (1, 9)),
        ("reduction_layers", (2, 1)), ("dc_window_sizes", (2,)), ("dc_window_sizes", (40, 1)),
        ("reduction_method", "pca"), ("cluster_iterations", 10**6), ("dynamicvit_ratio_weight", -1.0),
        ("score_source", "gradients"), ("patch_size", 0),
    ]
)


@FAST
@given(change=changes)
def test_a_field_changed_after_construction_is_refused_when_a_model_is_built(change):
    field, value = change
    config = FreqViTConfig(**TINY, image_size=32, patch_size=8, num_hidden_layers=3, reduction_layers=(0, 1),
                           dc_window_sizes=(2, 1))
    setattr(config, field, value)
    with pytest.raises(ValueError, match=field):
        FreqViTForImageClassification(config)


def test_a_field_changed_after_the_model_was_built_is_refused_when_it_runs():
    config = FreqViTConfig(**TINY, image_size=32, patch_size=8, num_hidden_layers=3, reduction_layers=(0, 1),
                           dc_window_sizes=(2, 1))
    model = FreqViTForImageClassification(config).eval()
    model.config.keep_rate = 0.5
    with pytest.raises(ValueError, match="config: keep_rate changed after the model was built"):
        model(torch.randn(1, 3, 32, 32))


@pytest.mark.parametrize(
    "field, value",
    [("dc_window_sizes", [2, 1]), ("reduction_layers", [0, 1]), ("keep_rate", (0.7, 0.7)), ("keep_rate", [0.7, 0.7]),
     ("image_size", [32, 32]), ("patch_size", (8, 8))],
)
def test_an_equal_value_written_another_way_is_no_change(field, value):
    config = FreqViTConfig(**TINY, image_size=32, patch_size=8, num_hidden_layers=3, reduction_layers=(0, 1),
                           dc_window_sizes=(2, 1))
    model = FreqViTForImageClassification(config).eval()
    pixels = torch.randn(2, 3, 32, 32)
    macs = count_macs(config)
    with torch.no_grad():
        expected = model(pixels).logits
        setattr(model.config, field, value)
        torch.testing.assert_close(model(pixels).logits, expected, rtol=0, atol=0)
    assert count_macs(model.config) == macs


def test_a_shallow_vit_loads_with_its_own_schedule(tmp_path):
    from transformers import ViTConfig, ViTForImageClassification

    ViTForImageClassification(ViTConfig(**TINY, image_size=32, patch_size=8, num_hidden_layers=6)).save_pretrained(tmp_path)
    model = FreqViTForImageClassification.from_pretrained(tmp_path, reduction_layers=(1, 3), dc_window_sizes=(2, 1))
    assert model.config.reduction_layers == (1, 3)
    assert FreqViTConfig(reduction_method="none", num_hidden_layers=2).num_hidden_layers == 2
