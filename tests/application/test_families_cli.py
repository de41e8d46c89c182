"""The commands and the Space on the other families' checkpoints: a DINOv2 classifier (with registers) evaluates,
analyses and exports like a ViT; CLIP's vision tower exports as an encoder; what makes no sense is refused by name."""

import json
import sys
from pathlib import Path

import pytest
import torch
from transformers import (
    AutoModel, CLIPConfig, CLIPModel, Dinov2Config, Dinov2Model, Dinov2WithRegistersConfig,
    Dinov2WithRegistersForImageClassification, SwinConfig, ViTImageProcessorPil,
)

from conftest import write_images
from freqtr_hf.cli import main
from freqtr_hf.models.freqvit import family_classes

SHAPE = dict(hidden_size=32, num_hidden_layers=4, num_attention_heads=2, image_size=64, patch_size=8)
LABELS = dict(id2label={i: f"class {i}" for i in range(4)}, label2id={f"class {i}": i for i in range(4)})


def with_processor(folder: Path) -> Path:
    ViTImageProcessorPil(size={"height": 64, "width": 64}, do_center_crop=False).save_pretrained(folder)
    return folder


@pytest.fixture
def dinov2_classifier(tmp_path) -> Path:
    torch.manual_seed(0)
    # 12 blocks: the default schedule (layers 3, 6, 9) applies
    config = Dinov2WithRegistersConfig(**{**SHAPE, "num_hidden_layers": 12}, mlp_ratio=2, num_register_tokens=2, **LABELS)
    Dinov2WithRegistersForImageClassification(config).save_pretrained(tmp_path / "dinov2")
    write_images(tmp_path / "data", ["class 0", "class 1"], 3)
    return with_processor(tmp_path / "dinov2")


@pytest.fixture
def clip_folder(tmp_path) -> Path:
    torch.manual_seed(0)
    text = dict(hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=64, vocab_size=99)
    CLIPModel(CLIPConfig(vision_config={**SHAPE, "intermediate_size": 64}, text_config=text)).save_pretrained(
        tmp_path / "clip")
    return with_processor(tmp_path / "clip")


def test_a_dinov2_classifier_evaluates_analyses_and_exports(dinov2_classifier, tmp_path, capsys):
    data = str(tmp_path / "data")
    common = ["--model", str(dinov2_classifier), "--device", "cpu"]
    assert main(["evaluate", *common, "--data", data, "--methods", "freq", "tome", "--batch-size", "4",
                 "--output", str(tmp_path / "run.json")]) == 0
    rows = {row["method"]: row for row in json.loads((tmp_path / "run.json").read_text())["results"]}
    assert set(rows) == {"none", "freq", "tome"} and rows["freq"]["gmacs"] < rows["none"]["gmacs"]
    assert main(["analyze", *common, "--data", data, "--methods", "freq", "topk", "--keep-rates", "0.5",
                 "--output", str(tmp_path / "report"), "--batch-size", "4"]) == 0
    assert "log_amplitude" in json.loads((tmp_path / "report" / "report.json").read_text())
    assert main(["export", *common, "--output", str(tmp_path / "exported"), "--keep-rate", "0.5", "--data", data]) == 0
    config = json.loads((tmp_path / "exported" / "config.json").read_text())
    assert config["model_type"] == "freqdinov2_with_registers"
    assert config["auto_map"]["AutoModelForImageClassification"].endswith("FreqDinov2WithRegistersForImageClassification")
    assert "pipeline_tag: image-classification" in (tmp_path / "exported" / "README.md").read_text()


def test_clips_tower_exports_as_an_encoder_and_is_refused_where_a_classifier_is_needed(clip_folder, tmp_path, capsys):
    common = ["--model", str(clip_folder), "--device", "cpu"]
    assert main(["export", *common, "--output", str(tmp_path / "exported"), "--reduction-layers", "1", "2",
                 "--dc-window-sizes", "2", "1"]) == 0
    folder = tmp_path / "exported"
    assert json.loads((folder / "config.json").read_text())["auto_map"]["AutoModel"] == (
        "modeling_freqclip.FreqCLIPVisionModel")
    assert "pipeline_tag: image-feature-extraction" in (folder / "README.md").read_text()
    model = AutoModel.from_pretrained(folder, trust_remote_code=True).eval()
    assert type(model).__name__ == "FreqCLIPVisionModel" and model.config.reduction_method == "freq"
    with torch.no_grad():
        assert model(torch.randn(1, 3, 64, 64)).pooler_output.shape == (1, 32)
    capsys.readouterr()
    write_images(tmp_path / "data", ["class 0"], 1)
    assert main(["export", *common, "--output", str(tmp_path / "measured"), "--data", str(tmp_path / "data"),
                 "--reduction-layers", "1", "2", "--dc-window-sizes", "2", "1"]) == 2
    assert "--data: " in capsys.readouterr().err
    assert main(["evaluate", *common, "--data", str(tmp_path / "data")]) == 2
    assert "'clip' checkpoint, whose model (FreqCLIPVision) has no ModelForImageClassification" in (
        capsys.readouterr().err)


def test_a_checkpoint_of_no_family_is_refused_naming_its_type(tmp_path):
    SwinConfig().save_pretrained(tmp_path)
    with pytest.raises(ValueError, match="a 'swin' checkpoint; freqtr-hf reduces tokens in clip, .*dinov2, .*vit"):
        family_classes(str(tmp_path))


def test_the_space_shows_a_dinov2_classifier_with_registers(dinov2_classifier, monkeypatch):
    pytest.importorskip("gradio", reason="the Space needs gradio (pip install -e '.[test]')")
    sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "space"))
    import app

    monkeypatch.setenv("FREQTR_MODEL", str(dinov2_classifier))
    image = app.example_images()[0]
    stages, reduced_top5, unreduced_top5, stats, _ = app.analyse(image, "", "freq", 0.5, "4, 7, 10", "2, 1, 1")
    assert set(reduced_top5) <= {f"class {i}" for i in range(4)} and len(reduced_top5) == 4
    loaded = app.load_model(str(dinov2_classifier))
    assert type(loaded.unreduced).__name__ == "FreqDinov2WithRegistersForImageClassification"


def test_a_dinov2_encoder_is_refused_where_a_classifier_is_needed_and_exports_as_an_encoder(tmp_path, capsys):
    """facebook/dinov2-* hold no classifier: measuring one would read a random head."""
    torch.manual_seed(0)
    Dinov2Model(Dinov2Config(**SHAPE, mlp_ratio=2)).save_pretrained(tmp_path / "encoder")
    with_processor(tmp_path / "encoder")
    write_images(tmp_path / "data", ["class 0"], 1)
    common = ["--model", str(tmp_path / "encoder"), "--device", "cpu"]
    assert main(["evaluate", *common, "--data", str(tmp_path / "data")]) == 2
    assert "is a Dinov2Model checkpoint, without an image classifier" in capsys.readouterr().err
    assert main(["export", *common, "--output", str(tmp_path / "exported"), "--reduction-layers", "1", "2",
                 "--dc-window-sizes", "2", "1"]) == 0
    auto_map = json.loads((tmp_path / "exported" / "config.json").read_text())["auto_map"]
    assert auto_map["AutoModel"] == "modeling_freqdinov2.FreqDinov2Model"
    assert "pooler_output` is the encoder's pooled token" in (tmp_path / "exported" / "README.md").read_text()
