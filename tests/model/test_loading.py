"""Loading ViT checkpoints (the Hub's legacy layout and transformers 5's) and exporting with remote code."""

import json
import warnings
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file
from transformers import AutoImageProcessor, AutoModel, AutoModelForImageClassification, ViTForImageClassification
from transformers.dynamic_module_utils import get_relative_import_files

import freqtr_hf
from freqtr_hf import FreqViTForImageClassification, FreqViTModel

from conftest import real_images, remote_code_difference, tiny_config

NEW_PARAMETERS = ("high_pass_gain", "dc_gain", "dc_position_embeddings")


def test_legacy_deit_tiny_loads_every_pretrained_weight(deit_tiny):
    model, info = FreqViTForImageClassification.from_pretrained(deit_tiny, output_loading_info=True)
    # the zero-initialised reduction parameters compute the method exactly: nothing is reported missing
    assert not info["unexpected_keys"] and not info["mismatched_keys"] and not info["missing_keys"]
    new = {n: p for n, p in model.named_parameters() if n.rsplit(".", 1)[-1] in NEW_PARAMETERS}
    assert new and all(torch.all(p == 0) for p in new.values())
    assert model.config.model_type == "freqvit" and model.config.num_labels == 1000
    reference = ViTForImageClassification.from_pretrained(deit_tiny)
    torch.testing.assert_close(model.classifier.weight, reference.classifier.weight)
    torch.testing.assert_close(model.vit.layers[11].attention.q_proj.weight, reference.vit.layers[11].attention.q_proj.weight)


def test_a_weight_really_missing_is_still_reported(tmp_path):
    from safetensors.torch import load_file, save_file

    ViTForImageClassification(tiny_config(reduction_method="none")).save_pretrained(tmp_path)
    weights = load_file(tmp_path / "model.safetensors")
    gone = next(key for key in weights if "layers.1.mlp" in key or "layer.1.output" in key)
    save_file({k: v for k, v in weights.items() if k != gone}, tmp_path / "model.safetensors", metadata={"format": "pt"})
    _, info = FreqViTForImageClassification.from_pretrained(tmp_path, output_loading_info=True)
    assert len(info["missing_keys"]) == 1 and "layers.1" in next(iter(info["missing_keys"]))


def test_trained_reduction_parameters_left_unused_by_another_schedule_are_named(tmp_path):
    config = tiny_config(num_hidden_layers=6, reduction_layers=(1, 3), dc_window_sizes=(2, 1))
    model = FreqViTForImageClassification(config)
    model.save_pretrained(tmp_path / "zero")
    with torch.no_grad():
        for parameter in model.reduction_parameters().values():
            parameter.fill_(0.5)  # as after calibration
    model.save_pretrained(tmp_path / "trained")
    with pytest.warns(UserWarning, match=r"trained reduction parameter.*layers\.1\.token_reducer\.dc_position_embeddings"):
        other = FreqViTForImageClassification.from_pretrained(tmp_path / "trained", reduction_layers=(2, 4))
    assert (other.vit.layers[0].attention.high_pass_gain == 0.5).all()  # per-block ω1 still loads
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # nothing to say: same schedule, another method, or nothing trained
        FreqViTForImageClassification.from_pretrained(tmp_path / "trained", keep_rate=0.5)
        FreqViTModel.from_pretrained(tmp_path / "trained", reduction_method="topk")
        FreqViTForImageClassification.from_pretrained(tmp_path / "zero", reduction_layers=(2, 4))


def test_real_weights_reduction_off_equals_vit(deit_tiny, imagenette_val):
    processor = AutoImageProcessor.from_pretrained(deit_tiny)
    pixels = processor(real_images(imagenette_val), return_tensors="pt")["pixel_values"]
    vit = ViTForImageClassification.from_pretrained(deit_tiny).eval()
    with torch.no_grad():
        expected = vit(pixels).logits
        for off in (dict(reduction_method="none"), dict(keep_rate=1.0)):
            model = FreqViTForImageClassification.from_pretrained(deit_tiny, **off).eval()
            assert (model(pixels).logits - expected).abs().max() <= 1e-5
        reduced = FreqViTForImageClassification.from_pretrained(deit_tiny).eval()(pixels).logits
    # the default reduction changes the logits but, on real images, rarely the prediction
    assert (reduced - expected).abs().max() > 1e-3
    assert (reduced.argmax(-1) == expected.argmax(-1)).float().mean() >= 0.5


def test_transformers5_layout_checkpoint_loads(tmp_path):
    config = tiny_config(reduction_method="none")
    vit = ViTForImageClassification(config).eval()  # its state dict uses the transformers 5 names
    assert any(".q_proj." in key for key in vit.state_dict())
    save_file(vit.state_dict(), tmp_path / "model.safetensors", metadata={"format": "pt"})
    config_dict = config.to_dict() | {"model_type": "vit", "architectures": ["ViTForImageClassification"]}
    (tmp_path / "config.json").write_text(json.dumps(config_dict))
    model, info = FreqViTForImageClassification.from_pretrained(tmp_path, output_loading_info=True)
    assert not info["missing_keys"] and not info["unexpected_keys"]
    pixels = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        assert (model.eval()(pixels).logits - vit(pixels).logits).abs().max() <= 1e-5


def test_config_overrides_reach_the_model(deit_tiny):
    model = FreqViTModel.from_pretrained(deit_tiny, keep_rate=0.5, dc_window_sizes=(2, 2, 1))
    assert model.config.keep_rates == (0.5, 0.5, 0.5)
    assert model.layers[6].token_reducer.stage.window_size == 2


def test_distilled_deit_is_refused_clearly(tmp_path):
    (tmp_path / "config.json").write_text(json.dumps({"model_type": "deit", "hidden_size": 32}))
    with pytest.raises(ValueError, match="distillation token"):
        FreqViTForImageClassification.from_pretrained(tmp_path)


def test_auto_classes_resolve_to_freqvit(tmp_path):
    FreqViTForImageClassification(tiny_config()).save_pretrained(tmp_path)
    assert type(AutoModelForImageClassification.from_pretrained(tmp_path)) is FreqViTForImageClassification
    assert type(AutoModel.from_pretrained(tmp_path)) is FreqViTModel


@pytest.mark.slow
@pytest.mark.parametrize("method", ["freq", "tome", "sinkhorn"])
def test_saved_folder_loads_with_remote_code_in_a_fresh_process(tmp_path, method):
    model = FreqViTForImageClassification(tiny_config(reduction_method=method)).eval()
    for name, parameter in model.named_parameters():  # trained-looking reduction parameters must survive
        if "high_pass_gain" in name or "centres" in name:
            torch.nn.init.normal_(parameter, std=0.2)
    folder = tmp_path / "freqvit-tiny"
    model.save_pretrained(folder)
    saved = sorted(path.name for path in folder.iterdir())
    # every module the model imports, followed as transformers follows them, travels with the weights
    modeling = Path(freqtr_hf.__file__).parent / "models" / "freqvit" / "modeling_freqvit.py"
    needed = {Path(f).name for f in get_relative_import_files(str(modeling))}
    assert {"reducers.py", "token_state.py", "reduction_frequency.py"} <= needed
    assert needed <= set(saved)
    assert "model.safetensors" in saved
    auto_map = json.loads((folder / "config.json").read_text())["auto_map"]
    assert auto_map["AutoModelForImageClassification"] == "modeling_freqvit.FreqViTForImageClassification"
    assert auto_map["AutoModel"] == "modeling_freqvit.FreqViTModel"
    assert auto_map["AutoConfig"] == "configuration_freqvit.FreqViTConfig"

    pixels = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        assert remote_code_difference(folder, pixels, model(pixels).logits, tmp_path) == 0.0


def test_a_saved_folder_carries_exactly_the_code_freqvit_imports(tmp_path):
    """FreqViT's configuration and modeling modules and the shared core they import; no other family's modules."""
    FreqViTForImageClassification(tiny_config()).save_pretrained(tmp_path)
    model_folder = Path(freqtr_hf.__file__).parent / "models" / "freqvit"
    modules = [model_folder / "modeling_freqvit.py", model_folder / "configuration_freqvit.py"]
    needed = {Path(file).name for module in modules for file in [module, *get_relative_import_files(str(module))]}
    assert sorted(p.name for p in tmp_path.glob("*.py")) == sorted(needed)
    assert not any("dinov2" in name or "clip" in name or "siglip" in name for name in needed)


def test_auto_classes_resolve_a_saved_freqvit_without_remote_code(tmp_path):
    model = FreqViTForImageClassification(tiny_config()).eval()
    model.save_pretrained(tmp_path)
    encoder = AutoModel.from_pretrained(tmp_path)
    assert isinstance(encoder, FreqViTModel)
    assert isinstance(AutoModelForImageClassification.from_pretrained(tmp_path), FreqViTForImageClassification)
    pixels = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        assert torch.equal(encoder(pixels).last_hidden_state, model.vit(pixels).last_hidden_state)


def test_weights_given_as_a_state_dict_ask_no_hub(monkeypatch):
    """transformers' own `from_pretrained(None, config=..., state_dict=...)`: no checkpoint, so no look-up."""
    import freqtr_hf.models.freqvit.modeling_reduction as modeling

    looked_up = []
    monkeypatch.setattr(modeling, "cached_file", lambda *args, **kwargs: looked_up.append(args))
    model = FreqViTForImageClassification(tiny_config()).eval()
    loaded = FreqViTForImageClassification.from_pretrained(None, config=model.config, state_dict=model.state_dict())
    assert looked_up == []
    pixels = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        assert torch.equal(loaded.eval()(pixels).logits, model(pixels).logits)
