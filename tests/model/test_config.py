import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from transformers import BertConfig, ViTConfig

from freqtr_hf import FreqViTConfig, FreqViTForImageClassification, count_macs
from freqtr_hf.models.freqvit.configuration_freqvit import (
    BACKBONE_FIELDS, FREQ_PRESETS, REDUCTION_FIELDS, TRAINING_FREE_FREQ,
)
from freqtr_hf.models.freqvit.token_schedule import ReductionStage, configured_sequence_lengths, sequence_lengths

from conftest import tiny_config


def test_defaults_follow_the_method():
    config = FreqViTConfig()
    assert config.model_type == "freqvit"
    assert config.reduction_method == "freq"
    assert config.reduction_layers == (3, 6, 9)
    assert config.keep_rates == (0.7, 0.7, 0.7)
    assert config.dc_window_sizes == (2, 1, 1)
    assert config.attention_reweighting and config.dc_position_embedding
    assert (config.dc_update, config.dc_empty_fill) == ("count_weighted", "global_mean")


def test_reduction_and_backbone_fields_are_every_field_freqvit_adds_to_vit():
    added = set(FreqViTConfig.__dataclass_fields__) - set(ViTConfig.__dataclass_fields__)
    assert sorted([*REDUCTION_FIELDS, *BACKBONE_FIELDS]) == sorted(added)


def test_the_paper_preset_is_the_default_of_every_field_the_training_free_preset_sets():
    assert FREQ_PRESETS["paper"] == {field: getattr(FreqViTConfig(), field) for field in TRAINING_FREE_FREQ}


def test_only_freq_needs_a_dc_window_size_per_reduction_layer():
    config = FreqViTConfig(reduction_method="topk", reduction_layers=(3, 6))  # the default (2, 1, 1) is unused
    assert [stage.layer for stage in config.reduction_stages] == [3, 6]
    with pytest.raises(ValueError, match="dc_window_sizes"):
        FreqViTConfig(reduction_layers=(3, 6))


def test_default_token_counts_per_stage():
    config = FreqViTConfig()
    lengths = sequence_lengths("freq", 12, config.reduction_stages, (14, 14))
    assert [attention for attention, _ in lengths] == [197] * 4 + [142] * 3 + [97] * 3 + [68] * 2
    assert [mlp for _, mlp in lengths][3] == 142


def test_keep_rate_one_and_none_do_not_reduce():
    assert FreqViTConfig(keep_rate=1.0).reduction_stages == []
    assert FreqViTConfig(reduction_method="none").reduction_stages == []
    assert [s.layer for s in FreqViTConfig(keep_rate=(0.7, 1.0, 0.5)).reduction_stages] == [3, 9]


@pytest.mark.parametrize(
    "overrides, field",
    [
        (dict(reduction_method="pca"), "reduction_method"),
        (dict(reduction_layers=(3, 12)), "reduction_layers"),
        (dict(reduction_layers=(6, 3, 9)), "reduction_layers"),
        (dict(keep_rate=0.0), "keep_rate"),
        (dict(keep_rate=1.2), "keep_rate"),
        (dict(keep_rate=(0.5, 0.5)), "keep_rate"),
        (dict(keep_rate=0.004), "keep_rate"),  # keeps no token of 196
        (dict(dc_window_sizes=(2, 1)), "dc_window_sizes"),
        (dict(dc_window_sizes=(0, 1, 1)), "dc_window_sizes"),
        (dict(dc_window_sizes=(15, 1, 1)), "dc_window_sizes"),  # more windows than patches a side
        (dict(dc_update="median"), "dc_update"),
        (dict(dc_empty_fill="noise"), "dc_empty_fill"),
        (dict(radial_norm="l3"), "radial_norm"),
        (dict(cluster_iterations=0), "cluster_iterations"),
        (dict(reduction_method="tome", tome_r=0), "tome_r: must be a positive number"),
        (dict(tome_r=13), "tome_r: per-layer ToMe's setting, but reduction_method is 'freq'"),
        (dict(dc_window_sizes=(14, 1, 1)), r"dc_window_sizes: .* at layer 3 \(block 4\)"),
        (dict(reduction_method="tome", keep_rate=0.004), "keep_rate"),
        (dict(hidden_size=10, num_attention_heads=3, intermediate_size=8), "hidden_size"),
        (dict(hidden_size=2, num_attention_heads=4, intermediate_size=8), "num_attention_heads|hidden_size"),
        (dict(reduction_method="dynamicvit", hidden_size=3, num_attention_heads=1, intermediate_size=8), "hidden_size"),
    ],
)
def test_bad_values_raise_naming_the_field(overrides, field):
    with pytest.raises(ValueError, match=field):
        FreqViTConfig(**overrides)


def test_round_trip_through_json(tmp_path):
    config = tiny_config(keep_rate=(0.5, 0.75), dc_update="token_mean")
    config.save_pretrained(tmp_path)
    loaded = FreqViTConfig.from_pretrained(tmp_path)
    assert loaded.keep_rates == (0.5, 0.75)
    assert loaded.reduction_layers == (1, 2)
    assert loaded.dc_update == "token_mean"


def test_not_a_vit_checkpoint_is_refused(tmp_path):
    BertConfig(hidden_size=32, num_hidden_layers=1, num_attention_heads=2, intermediate_size=64).save_pretrained(
        tmp_path
    )
    with pytest.raises(ValueError, match="'bert' checkpoint"):
        FreqViTForImageClassification.from_pretrained(tmp_path)


@settings(max_examples=200, deadline=None)
@given(rate=st.floats(0.05, 0.95), count=st.integers(1, 600), multiple=st.sampled_from([2, 8, 64, 128]),
       added=st.sampled_from([0, 1, 4]))
def test_sequence_multiple_rounds_to_the_nearest_length_that_still_reduces(rate, count, multiple, added):
    plain = ReductionStage(0, rate, added=added).kept(count)
    stage = ReductionStage(0, rate, multiple=multiple, added=added)
    kept = stage.kept(count)
    # the counts that keep a token, shorten the sequence and make it a multiple
    fitting = [k for k in range(1, count - added) if (1 + k + added) % multiple == 0]
    if fitting:
        assert (1 + kept + added) % multiple == 0 and 1 <= kept <= count - 1 - added
        # no other fitting length is nearer to the unrounded one
        assert abs(kept - plain) == min(abs(k - plain) for k in fitting)
    else:  # no multiple fits: the rate's count
        assert kept == plain


def test_sequence_multiple_is_checked_and_counted():
    config = FreqViTConfig(sequence_multiple=8)
    assert [mlp for _, mlp in configured_sequence_lengths(config)][2:11:3] == [197, 144, 96]
    assert count_macs(config) < count_macs(FreqViTConfig())  # 142 -> 144 tokens, 97 -> 96, 68 -> 64
    for value in (0, -8):
        with pytest.raises(ValueError, match="sequence_multiple"):
            FreqViTConfig(sequence_multiple=value)
    with pytest.raises(ValueError, match="sequence_multiple"):
        FreqViTConfig(reduction_method="tome", tome_r=8, sequence_multiple=8)
