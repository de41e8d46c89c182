"""`export_model`: a training-free FreqViT folder with its model card, loadable where freqtr_hf is not installed."""

import re
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from huggingface_hub import ModelCard
from PIL import Image

from conftest import held_by_another_process, RecordingHubApi, remote_code_difference, write_images, write_tiny_vit
from freqtr_hf import FreqViTConfig, FreqViTForImageClassification
from freqtr_hf.exporting import export_model
from freqtr_hf.runs import RunInUseError
from freqtr_hf.publishing import PublishError, model_card

TINY_REDUCTION = {"reduction_method": "freq", "keep_rate": 0.5, "reduction_layers": [1, 2], "dc_window_sizes": [2, 1]}

# In a process where freqtr_hf cannot be imported: the logits of the folder's remote code, then the card's own
# Python examples, run as they are written (they load the folder by its name and read image.jpg).
CARD_CHECK = """
import re, sys
sys.modules["freqtr_hf"] = None
import torch
from transformers import AutoModelForImageClassification
model = AutoModelForImageClassification.from_pretrained(sys.argv[1], trust_remote_code=True).eval()
with torch.no_grad():
    print("logits", (model(torch.load(sys.argv[2])).logits - torch.load(sys.argv[3])).abs().max().item())
for block in re.findall(r"```python\\n(.*?)```", open(sys.argv[1] + "/README.md").read(), re.S):
    exec(block, {})
"""


@pytest.fixture(scope="module")
def tiny_base(tmp_path_factory) -> Path:
    """A tiny ViT checkpoint (classes `class 0 … class 9`, with its image processor) and a folder of two classes."""
    root = tmp_path_factory.mktemp("tiny_base")
    write_tiny_vit(root / "vit-tiny")
    write_images(root / "images" / "val", ["class 0", "class 1"], 3)
    return root


def absolute_paths(text: str) -> list[str]:
    return re.findall(r"(?<![\w.:/])/(?:[\w.-]+/)+[\w.-]*", text)


@pytest.mark.slow
def test_exported_folder_loads_without_freqtr_hf_and_the_cards_examples_run(tiny_base, tmp_path):
    folder = export_model(str(tiny_base / "vit-tiny"), str(tmp_path / "freqvit-tiny"), TINY_REDUCTION,
                          data=str(tiny_base / "images" / "val"), batch_size=4)
    assert folder == tmp_path / "freqvit-tiny"
    names = {p.name for p in folder.iterdir()}
    assert {"config.json", "model.safetensors", "modeling_freqvit.py", "preprocessor_config.json", "README.md"} <= names
    assert not (tmp_path / "freqvit-tiny.tmp").exists()

    pixels = torch.randn(2, 3, 64, 64)
    torch.save(pixels, tmp_path / "pixels.pt")
    with torch.no_grad():
        reference = FreqViTForImageClassification.from_pretrained(tiny_base / "vit-tiny", **TINY_REDUCTION).eval()
        torch.save(reference(pixels).logits, tmp_path / "logits.pt")
    Image.open(next((tiny_base / "images" / "val" / "class 1").iterdir())).save(tmp_path / "image.jpg")
    result = subprocess.run(
        [sys.executable, "-c", CARD_CHECK, folder.name, "pixels.pt", "logits.pt"],
        capture_output=True, text=True, cwd=tmp_path,
        env={"HF_HUB_OFFLINE": "1", "PATH": "/usr/bin:/bin", "HF_HOME": str(tmp_path / "hf")},
    )
    assert result.returncode == 0, result.stderr[-3000:]
    lines = result.stdout.strip().splitlines()
    assert lines[0] == "logits 0.0"
    assert lines[1].startswith("class ")  # the AutoModel example prints a label
    assert "'label': 'class " in lines[2]  # the pipeline example prints its top classes

    card = ModelCard.load(folder / "README.md")
    data = card.data
    assert (data.license, data.library_name, data.pipeline_tag) == ("apache-2.0", "transformers", "image-classification")
    assert data.base_model is None and data.datasets is None  # local folders are not Hub ids
    assert {"freqvit", "token-reduction", "freq"} <= set(data.tags)
    metrics = {result.metric_name: result.metric_value for result in data.eval_results}
    assert {"top-1 % (unreduced)", "top-1 % (reduced, without fine-tuning)", "GMACs per image (reduced)",
            "GMACs per image (unreduced)"} <= metrics.keys()
    assert metrics["GMACs per image (reduced)"] < metrics["GMACs per image (unreduced)"]
    assert all(result.dataset_name == "images/val" for result in data.eval_results)
    assert 'pip install "transformers>=5" torch' in card.text
    assert absolute_paths(card.content) == []
    images = len(list((tiny_base / "images" / "val").rglob("*.*")))
    assert f"every image, {images} images." in card.text and "The method: Lee et al." in card.text


def test_a_non_empty_output_is_refused_before_loading_unless_overwrite(tiny_base, tmp_path):
    output = tmp_path / "out"
    export_model(str(tiny_base / "vit-tiny"), str(output), {**TINY_REDUCTION, "keep_rate": 0.7})
    with pytest.raises(ValueError, match="out holds an earlier model folder; pass --overwrite"):
        export_model(str(tmp_path / "no-such-model"), str(output), {})
    export_model(str(tiny_base / "vit-tiny"), str(output), TINY_REDUCTION, overwrite=True)
    assert FreqViTConfig.from_pretrained(output).keep_rate == 0.5


@pytest.mark.parametrize(("reduction", "options", "message"), [
    ({"keep_ratio": 0.5}, {}, r"unknown field\(s\) \['keep_ratio'\]"),
    ({**TINY_REDUCTION, "keep_rate": 2.0}, {}, "keep_rate: every rate must be in"),
    ({**TINY_REDUCTION, "reduction_method": "sinkhorn"}, {}, "'sinkhorn' learns parameters that this checkpoint lacks"),
    ({**TINY_REDUCTION, "reduction_method": "none"}, {}, "reduction_method: 'none' is the unreduced model"),
    (TINY_REDUCTION, {"every": 0}, "every: must be >= 1"),
    (TINY_REDUCTION, {"push_to_hub": "not a repo id!"}, "push_to_hub: 'not a repo id!' is not a Hub repository id"),
    (TINY_REDUCTION, {"device": "tpu"}, "device: must be one of"),
])
def test_bad_requests_are_refused_naming_the_problem(tiny_base, tmp_path, reduction, options, message):
    with pytest.raises(ValueError, match=message):
        export_model(str(tiny_base / "vit-tiny"), str(tmp_path / "out"), reduction, **options)
    assert not (tmp_path / "out").exists()


def test_per_layer_tome_exports_with_its_token_counts(tiny_base, tmp_path):
    folder = export_model(str(tiny_base / "vit-tiny"), str(tmp_path / "out"), {"reduction_method": "tome", "tome_r": 8})
    card = ModelCard.load(folder / "README.md")
    assert "Compared as a baseline in: Lee et al." in card.text  # the paper is not ToMe's source
    assert "| `tome_r` | 8 tokens merged in every block |" in card.text
    assert "| `tokens` | 65 → 57 → 49 → 41 → 33 |" in card.text


def test_push_to_hub_uploads_the_folder_and_the_card_names_the_repo(tiny_base, tmp_path):
    api = RecordingHubApi()
    folder = export_model(str(tiny_base / "vit-tiny"), str(tmp_path / "out"), TINY_REDUCTION,
                          push_to_hub="user/freqvit-tiny", api=api)
    assert api.calls[0][:2] == ("create_repo", "user/freqvit-tiny")
    assert api.calls[1] == ("upload_folder", "user/freqvit-tiny", str(folder))
    card = ModelCard.load(folder / "README.md")
    assert "\n# user/freqvit-tiny\n" in card.text and card.data.model_name is None  # no data: no model-index
    assert 'from_pretrained("user/freqvit-tiny", trust_remote_code=True)' in card.text
    assert 'pipeline("image-classification", model="user/freqvit-tiny", trust_remote_code=True)' in card.text


class UnreachableHubApi(RecordingHubApi):
    """Stands in for `huggingface_hub.HfApi` on a machine without the Hub: the upload fails."""

    def upload_folder(self, repo_id, folder_path, **kwargs):
        raise ConnectionError("[Errno -2] Name or service not known")


def test_a_failed_upload_names_the_complete_folder_and_how_to_upload_it_later(tiny_base, tmp_path):
    with pytest.raises(PublishError) as failure:
        export_model(str(tiny_base / "vit-tiny"), str(tmp_path / "out"), TINY_REDUCTION,
                     push_to_hub="user/freqvit-tiny", api=UnreachableHubApi())
    message = str(failure.value)
    assert "Name or service not known" in message and f"hf upload user/freqvit-tiny {tmp_path / 'out'}" in message
    assert FreqViTForImageClassification.from_pretrained(tmp_path / "out").config.keep_rate == 0.5  # complete


def test_an_output_another_export_is_writing_is_refused(tiny_base, tmp_path):
    with held_by_another_process(tmp_path / "out"), pytest.raises(RunInUseError, match="--output: .*in use"):
        export_model(str(tiny_base / "vit-tiny"), str(tmp_path / "out"), TINY_REDUCTION)
    assert not (tmp_path / "out").exists()


def test_the_card_takes_the_base_models_license_unless_one_is_given(tiny_base, tmp_path):
    base = tmp_path / "base"
    base.mkdir()
    for path in (tiny_base / "vit-tiny").iterdir():
        (base / path.name).write_bytes(path.read_bytes())
    ModelCard("---\nlicense: mit\n---\n# a base model\n").save(base / "README.md")
    assert ModelCard.load(export_model(str(base), str(tmp_path / "a"), TINY_REDUCTION) / "README.md").data.license == "mit"
    given = export_model(str(base), str(tmp_path / "b"), TINY_REDUCTION, license="cc-by-4.0")
    assert ModelCard.load(given / "README.md").data.license == "cc-by-4.0"


@pytest.mark.slow
def test_real_deit_tiny_exports_and_loads_with_remote_code(deit_tiny, tmp_path):
    folder = export_model(str(deit_tiny), str(tmp_path / "freqvit-deit-tiny"), {"keep_rate": 0.7})
    pixels = torch.randn(2, 3, 224, 224)
    with torch.no_grad():
        reference = FreqViTForImageClassification.from_pretrained(deit_tiny, keep_rate=0.7).eval()
        assert remote_code_difference(folder, pixels, reference(pixels).logits, tmp_path) == 0.0
    card = ModelCard.load(folder / "README.md")
    assert "deit-tiny-patch16-224" in card.text and absolute_paths(card.content) == []


@pytest.mark.parametrize("every, phrase", [(1, "every image"), (2, "every 2nd image"), (4, "every 4th image"),
                                           (13, "every 13th image"), (21, "every 21st image")])
def test_the_card_says_which_images_were_measured(every, phrase, tmp_path):
    results = {"unreduced": {"top1": 0.7, "agreement": 1.0, "images_per_second": 10.0, "images": 50}}
    card = str(model_card(FreqViTConfig(**TINY_REDUCTION), str(tmp_path), results, eval_data="/data/val",
                          eval_every=every))
    assert phrase in card and "50 images" in card


def test_the_card_carries_no_images_per_second(tmp_path):
    """One timing on the machine that built the model is too noisy for a card that goes to the Hub."""
    results = {"unreduced": {"top1": 0.7, "agreement": 1.0, "images_per_second": 15.0, "images": 50},
               "before": {"top1": 0.6, "agreement": 0.9, "images_per_second": 12.5, "images": 50}}
    card = str(model_card(FreqViTConfig(**TINY_REDUCTION), str(tmp_path), results, eval_data="/data/val"))
    assert "15.0" not in card and "12.5" not in card and "| GMACs |" in card
    assert "images/s depend on the machine" in card
