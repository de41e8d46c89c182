"""FreqViTBackbone: transformers' backbone convention, full-grid feature maps whatever the reduction, the token
restorations, and the dense heads of transformers (UperNet, DPT, Depth Anything) built on it."""

import subprocess
import sys

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from transformers import (
    AutoBackbone, DepthAnythingConfig, DepthAnythingForDepthEstimation, DPTConfig, DPTForDepthEstimation, Trainer,
    TrainingArguments, UperNetConfig, UperNetForSemanticSegmentation, ViTModel,
)

from freqtr_hf import TRAINING_FREE_FREQ, FreqViTBackbone, FreqViTModel
from freqtr_hf.models.freqvit.methods import TOKEN_RESTORATIONS, TRAINING_FREE_METHODS
from freqtr_hf.models.freqvit.token_state import gather_tokens

from conftest import tiny_config, write_tiny_vit


def backbone_config(**overrides):
    return tiny_config(out_indices=[1, 2, 3, 4], **overrides)


@settings(max_examples=15, deadline=None)
@given(rows=st.integers(1, 10), cols=st.integers(1, 10))
def test_reduction_off_gives_the_vit_hidden_states_on_any_grid(rows, cols):
    config = backbone_config(reduction_method="none")
    backbone = FreqViTBackbone(config).eval()
    vit = ViTModel(config, add_pooling_layer=False).eval()
    vit.load_state_dict(backbone.state_dict(), strict=False)
    pixels = torch.randn(2, 3, 8 * rows, 8 * cols)
    with torch.no_grad():
        maps = backbone(pixels).feature_maps
        hidden = vit(pixels, interpolate_pos_encoding=True, output_hidden_states=True).hidden_states
    assert backbone.channels == [32] * 4
    for index, feature_map in zip([1, 2, 3, 4], maps):
        expected = vit.layernorm(hidden[index])[:, 1:].unflatten(1, (rows, cols)).permute(0, 3, 1, 2)
        assert feature_map.shape == (2, 32, rows, cols)
        assert torch.equal(feature_map, expected)


@settings(max_examples=40, deadline=None)
@given(method=st.sampled_from([*TRAINING_FREE_METHODS, "preset"]), restoration=st.sampled_from(TOKEN_RESTORATIONS),
       rows=st.integers(4, 9), cols=st.integers(4, 9), keep_rate=st.sampled_from([0.5, 0.7, 0.9]))
def test_every_map_covers_the_grid_and_kept_patches_are_their_tokens(method, restoration, rows, cols, keep_rate):
    fields = {"reduction_method": "freq", **TRAINING_FREE_FREQ} if method == "preset" else {"reduction_method": method}
    try:
        config = backbone_config(keep_rate=keep_rate, token_restoration=restoration, **fields)
    except ValueError:  # a schedule this grid cannot run is refused naming a field (tests/model/test_properties.py)
        return
    torch.manual_seed(0)
    model = FreqViTBackbone(config).eval()
    pixels = torch.randn(3, 3, 8 * rows, 8 * cols)
    with torch.no_grad():
        try:
            maps = model(pixels).feature_maps
        except ValueError as error:  # e.g. DC windows larger than this grid
            assert "dc_window_sizes" in str(error) or "keep_rate" in str(error)
            return
        alone = torch.cat([model(pixels[i : i + 1]).feature_maps[-1] for i in range(3)])
        traced = FreqViTModel.forward(model, pixels, interpolate_pos_encoding=True, output_token_provenance=True,
                                      output_hidden_states=True, restore_hidden_states=True)
        plain = FreqViTModel.forward(model, pixels, interpolate_pos_encoding=True, output_hidden_states=True,
                                     output_token_provenance=True)
    assert [tuple(m.shape) for m in maps] == [(3, 32, rows, cols)] * 4
    assert all(torch.isfinite(m).all() for m in maps)
    torch.testing.assert_close(maps[-1], alone, rtol=1e-4, atol=1e-4)
    # after the last stage, a patch that is still a token of its own is that token, exactly (with the preset's
    # nearest merge, the residual restorations also put back what merging others into its token changed)
    last = traced.token_provenance[-1] if traced.token_provenance else None
    restored, sequence = traced.hidden_states[-1], plain.hidden_states[-1]
    if last is not None and (method != "preset" or restoration == "carrier"):
        own = gather_tokens(sequence, last.patch_to_token.clamp_min(0))
        assert torch.equal(restored[:, 1:][last.kept], own[last.kept])
    assert torch.equal(restored[:, 0], sequence[:, 0])  # CLS


def stage_states(model: FreqViTBackbone, pixels: torch.Tensor) -> dict:
    """The input and output of the one reducer of `model`, recorded by a forward hook."""
    record = {}
    reducer = next(layer.token_reducer for layer in model.layers if layer.token_reducer is not None)
    handle = reducer.register_forward_hook(lambda module, args, output: record.update(before=args[0], after=output[0]))
    with torch.no_grad():
        out = FreqViTModel.forward(model, pixels, interpolate_pos_encoding=True, output_token_provenance=True,
                                   output_hidden_states=True, restore_hidden_states=True)
        plain = FreqViTModel.forward(model, pixels, interpolate_pos_encoding=True, output_hidden_states=True)
    handle.remove()
    return dict(record, restored=out.hidden_states[-1], sequence=plain.hidden_states[-1],
                stage=out.token_provenance[0])


@pytest.mark.parametrize("restoration", ["carrier", "residual"])
def test_a_merged_patch_follows_its_dc_token(restoration):
    """One `freq` stage: a patch given up into a DC token is restored as that DC token's last feature (carrier), or
    as its own state when it left plus what the DC token gained since (residual: the paper's injection)."""
    torch.manual_seed(0)
    model = FreqViTBackbone(backbone_config(reduction_layers=(1,), dc_window_sizes=(2,), keep_rate=0.5,
                                            token_restoration=restoration)).eval()
    states = stage_states(model, torch.randn(2, 3, 64, 64))
    stage = states["stage"]
    carrier = gather_tokens(states["sequence"], stage.patch_to_token)
    expected = carrier
    if restoration == "residual":
        at_leave = gather_tokens(states["after"], stage.patch_to_token)
        expected = states["before"][:, 1:] + carrier - at_leave
    merged = stage.merged
    assert merged.any()
    torch.testing.assert_close(states["restored"][:, 1:][merged], expected[merged])


def test_nearest_restoration_follows_the_most_similar_token():
    torch.manual_seed(0)
    model = FreqViTBackbone(backbone_config(reduction_layers=(1,), dc_window_sizes=(2,), keep_rate=0.5,
                                            token_restoration="nearest")).eval()
    states = stage_states(model, torch.randn(2, 3, 64, 64))
    before, after = states["before"], states["after"]
    unit = torch.nn.functional.normalize(before[:, 1:], dim=-1)
    nearest = 1 + (unit @ torch.nn.functional.normalize(after[:, 1:], dim=-1).transpose(1, 2)).argmax(-1)
    expected = before[:, 1:] + gather_tokens(states["sequence"], nearest) - gather_tokens(after, nearest)
    merged = states["stage"].merged
    torch.testing.assert_close(states["restored"][:, 1:][merged], expected[merged], rtol=1e-5, atol=1e-5)


def test_the_config_names_the_stages_and_refuses_a_restoration():
    config = backbone_config()
    assert config.stage_names == ["stem", "stage1", "stage2", "stage3", "stage4"]
    assert config.out_features == ["stage1", "stage2", "stage3", "stage4"]
    assert tiny_config().out_features == ["stage4"]  # the last stage by default
    with pytest.raises(ValueError, match="token_restoration"):
        tiny_config(token_restoration="bilinear")


@pytest.mark.slow
def test_loads_a_vit_checkpoint_and_round_trips_with_its_code(tmp_path):
    """AutoBackbone builds it from its config; the saved folder carries its code, which serves where freqtr_hf is
    absent (transformers 5.25's `AutoBackbone.from_pretrained` looks a local folder up on the Hub, so the class is
    taken from the folder's code by transformers' dynamic-module loader)."""
    write_tiny_vit(tmp_path / "vit")
    model = FreqViTBackbone.from_pretrained(tmp_path / "vit", out_indices=[2, 4]).eval()
    model.save_pretrained(tmp_path / "saved")
    assert type(AutoBackbone.from_config(model.config)) is FreqViTBackbone
    loaded = FreqViTBackbone.from_pretrained(tmp_path / "saved").eval()
    assert loaded.out_features == ["stage2", "stage4"]
    pixels = torch.randn(1, 3, 48, 80)
    with torch.no_grad():
        expected = model(pixels).feature_maps[-1]
        assert torch.equal(loaded(pixels).feature_maps[-1], expected)
    torch.save(pixels, tmp_path / "pixels.pt")
    torch.save(expected, tmp_path / "expected.pt")
    check = (
        "import sys\nsys.modules['freqtr_hf'] = None\nimport torch\n"
        "from transformers.dynamic_module_utils import get_class_from_dynamic_module\n"
        "backbone = get_class_from_dynamic_module('modeling_freqvit.FreqViTBackbone', sys.argv[1])\n"
        "model = backbone.from_pretrained(sys.argv[1]).eval()\n"
        "assert 'freqtr_hf' not in type(model).__module__\n"
        "with torch.no_grad():\n    got = model(torch.load(sys.argv[2])).feature_maps[-1]\n"
        "print((got - torch.load(sys.argv[3])).abs().max().item())\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", check, str(tmp_path / "saved"), str(tmp_path / "pixels.pt"), str(tmp_path / "expected.pt")],
        capture_output=True, text=True, cwd=tmp_path,
        env={"HF_HUB_OFFLINE": "1", "PATH": "/usr/bin:/bin", "HF_HOME": str(tmp_path / "hf")},
    )
    assert result.returncode == 0, result.stderr[-3000:]
    assert float(result.stdout.strip().splitlines()[-1]) == 0.0


def upernet(**overrides) -> UperNetForSemanticSegmentation:
    config = UperNetConfig(backbone_config=backbone_config(**overrides), hidden_size=16, auxiliary_in_channels=32,
                           auxiliary_channels=8, num_labels=5, pool_scales=[1, 2])
    return UperNetForSemanticSegmentation(config)


@pytest.mark.parametrize("fields", [{}, TRAINING_FREE_FREQ, {"reduction_method": "tome"}], ids=["freq", "preset", "tome"])
def test_upernet_trains_saves_and_loads_with_a_freqvit_backbone(fields, tmp_path):
    torch.manual_seed(0)
    model = upernet(**fields)
    assert type(model.backbone) is FreqViTBackbone
    pixels, labels = torch.randn(2, 3, 48, 64), torch.randint(0, 5, (2, 48, 64))
    out = model(pixel_values=pixels, labels=labels)
    assert out.logits.shape == (2, 5, 48, 64) and torch.isfinite(out.loss)
    out.loss.backward()
    assert model.backbone.embeddings.patch_embeddings.projection.weight.grad.abs().sum() > 0
    model.eval().save_pretrained(tmp_path / "upernet")
    loaded = UperNetForSemanticSegmentation.from_pretrained(tmp_path / "upernet").eval()
    assert type(loaded.backbone) is FreqViTBackbone
    with torch.no_grad():
        torch.testing.assert_close(loaded(pixels).logits, model(pixels).logits)


@pytest.mark.slow
def test_upernet_with_a_freqvit_backbone_runs_under_trainer(tmp_path):
    torch.manual_seed(0)
    model = upernet(**TRAINING_FREE_FREQ)
    rows = [{"pixel_values": torch.randn(3, 48, 64), "labels": torch.randint(0, 5, (48, 64))} for _ in range(4)]
    arguments = TrainingArguments(tmp_path / "run", per_device_train_batch_size=2, max_steps=2, report_to=[],
                                  use_cpu=True, save_strategy="no", logging_steps=1)
    before = model.decode_head.classifier.weight.detach().clone()
    result = Trainer(model=model, args=arguments, train_dataset=rows).train()
    assert result.global_step == 2 and not torch.equal(before, model.decode_head.classifier.weight)


def test_dpt_and_depth_anything_read_the_restored_sequences():
    """DPT's and Depth Anything's reassembly read ViT's sequence layout (CLS first): `reshape_hidden_states=False`."""
    torch.manual_seed(0)
    backbone = backbone_config(reshape_hidden_states=False, **TRAINING_FREE_FREQ)
    dpt = DPTForDepthEstimation(DPTConfig(
        backbone_config=backbone, hidden_size=32, neck_hidden_sizes=[8, 16, 32, 32], fusion_hidden_size=16,
        reassemble_factors=[4, 2, 1, 0.5], head_in_index=-1,
    ))
    pixels = torch.randn(2, 3, 48, 64)
    depth = dpt(pixel_values=pixels).predicted_depth
    assert depth.shape[0] == 2 and torch.isfinite(depth).all()
    depth.mean().backward()
    anything = DepthAnythingForDepthEstimation(DepthAnythingConfig(
        backbone_config=backbone, neck_hidden_sizes=[8, 16, 32, 32], fusion_hidden_size=16,
        reassemble_hidden_size=32, patch_size=8, head_hidden_size=8,
    ))
    depth = anything(pixel_values=pixels).predicted_depth
    assert depth.shape == (2, 48, 64) and torch.isfinite(depth).all()
