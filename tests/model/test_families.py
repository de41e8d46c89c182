"""DINOv2 (with and without registers), CLIP's and SigLIP's vision towers with token reduction, checked against the
families' own transformers classes on small random configs (no weights of these families are on this machine)."""

import json
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from torch.utils.flop_counter import FlopCounterMode
from transformers import (
    AutoModel, CLIPConfig, CLIPModel, CLIPVisionConfig, CLIPVisionModel, DepthAnythingConfig,
    DepthAnythingForDepthEstimation, DPTConfig, DPTForDepthEstimation, Dinov2Backbone, Dinov2Config, Dinov2ForImageClassification, Dinov2Model, Dinov2WithRegistersConfig,
    Dinov2WithRegistersForImageClassification, Dinov2WithRegistersModel, SiglipConfig, SiglipModel,
    SiglipVisionConfig, SiglipVisionModel,
)
from transformers.dynamic_module_utils import get_relative_import_files

import freqtr_hf
from freqtr_hf import (
    TRAINING_FREE_FREQ, FreqCLIPVisionConfig, FreqCLIPVisionModel, FreqDinov2Backbone, FreqDinov2Config,
    FreqDinov2ForImageClassification, FreqDinov2Model, FreqDinov2WithRegistersConfig,
    FreqDinov2WithRegistersForImageClassification, FreqDinov2WithRegistersModel, FreqSiglipVisionConfig,
    FreqSiglipVisionModel, FreqViTModel, count_macs,
)
from freqtr_hf.models.freqvit.token_schedule import configured_sequence_lengths

MODEL_FOLDER = Path(freqtr_hf.__file__).parent / "models" / "freqvit"
# a 4-block model on 64 px images with 8 px patches (8x8 grid), reducing after blocks 1 and 2
SHAPE = dict(hidden_size=32, num_hidden_layers=4, num_attention_heads=2, image_size=64, patch_size=8, num_labels=5)
REDUCTION = dict(reduction_layers=(1, 2), dc_window_sizes=(2, 1))


@dataclass
class Family:
    """A family: its reducing config and model classes beside transformers' own, and what its config needs."""

    name: str
    config: type
    reference_config: type
    model: type
    reference: type
    fields: dict
    modeling_module: str
    classifier: tuple = ()  # its image classifier and transformers', where the family has one

    def configs(self, common: dict | None = None, **reduction) -> tuple:
        fields = {**SHAPE, **self.fields, **(common or {})}
        return self.config(**fields, **reduction), self.reference_config(**fields)

    def twins(self, model=None, reference=None, common: dict | None = None, **reduction):
        """Our model and transformers' with the same random weights; `common`: config fields of both."""
        ours, theirs = self.configs(common, **reduction)
        torch.manual_seed(0)
        reference_model = (reference or self.reference)(theirs).eval()
        for parameter in reference_model.parameters():  # layer scale, norms: not their initial values
            parameter.data.add_(0.05 * torch.randn_like(parameter))
        model = (model or self.model)(ours).eval()
        missing, unexpected = model.load_state_dict(reference_model.state_dict(), strict=False)
        assert not unexpected
        assert all(key.rsplit(".", 1)[-1] in ("high_pass_gain", "dc_gain", "dc_position_embeddings") for key in missing)
        return model, reference_model


FAMILIES = [
    Family("dinov2", FreqDinov2Config, Dinov2Config, FreqDinov2Model, Dinov2Model, dict(mlp_ratio=2),
           "modeling_freqdinov2", (FreqDinov2ForImageClassification, Dinov2ForImageClassification)),
    Family("dinov2-swiglu", FreqDinov2Config, Dinov2Config, FreqDinov2Model, Dinov2Model,
           dict(mlp_ratio=2, use_swiglu_ffn=True), "modeling_freqdinov2",
           (FreqDinov2ForImageClassification, Dinov2ForImageClassification)),
    Family("dinov2-registers", FreqDinov2WithRegistersConfig, Dinov2WithRegistersConfig, FreqDinov2WithRegistersModel,
           Dinov2WithRegistersModel, dict(mlp_ratio=2, num_register_tokens=3), "modeling_freqdinov2",
           (FreqDinov2WithRegistersForImageClassification, Dinov2WithRegistersForImageClassification)),
    Family("clip", FreqCLIPVisionConfig, CLIPVisionConfig, FreqCLIPVisionModel, CLIPVisionModel,
           dict(intermediate_size=64), "modeling_freqclip"),
    Family("siglip", FreqSiglipVisionConfig, SiglipVisionConfig, FreqSiglipVisionModel, SiglipVisionModel,
           dict(intermediate_size=64), "modeling_freqsiglip"),
]
FAMILY = {family.name: family for family in FAMILIES}
by_name = pytest.mark.parametrize("family", FAMILIES, ids=[family.name for family in FAMILIES])


def forward(model, pixels, **kwargs):
    """DINOv2 always interpolates its position embeddings; the others when asked."""
    if not isinstance(model, (Dinov2Model, Dinov2WithRegistersModel, FreqDinov2Model, FreqDinov2WithRegistersModel)):
        kwargs["interpolate_pos_encoding"] = True
    with torch.no_grad():
        return model(pixels, **kwargs)


@by_name
@settings(max_examples=6, deadline=None)
@given(rows=st.integers(2, 9), cols=st.integers(2, 9))
def test_reduction_off_equals_the_familys_class_on_any_grid(family, rows, cols):
    model, reference = family.twins(reduction_method="none")
    pixels = torch.randn(2, 3, 8 * rows, 8 * cols)
    ours = forward(model, pixels, output_hidden_states=True)
    theirs = forward(reference, pixels, output_hidden_states=True)
    assert (ours.last_hidden_state - theirs.last_hidden_state).abs().max() <= 1e-5
    assert (ours.pooler_output - theirs.pooler_output).abs().max() <= 1e-5
    assert len(ours.hidden_states) == len(theirs.hidden_states)
    for mine, other in zip(ours.hidden_states, theirs.hidden_states):
        assert (mine - other).abs().max() <= 1e-5


@by_name
def test_reduction_off_classifies_as_the_familys_classifier(family):
    if not family.classifier:
        pytest.skip(f"transformers has no {family.name} image classifier of this tower")
    model, reference = family.classifier
    ours, theirs = family.twins(model, reference, reduction_method="none")
    pixels = torch.randn(3, 3, 64, 64)
    assert (forward(ours, pixels).logits - forward(theirs, pixels).logits).abs().max() <= 1e-5
    reduced, _ = family.twins(model, reference, **REDUCTION, **TRAINING_FREE_FREQ)
    labels = torch.tensor([0, 1, 2])
    output = reduced.train()(pixels, labels=labels)
    output.loss.backward()
    assert torch.isfinite(output.logits).all() and reduced.classifier.weight.grad is not None


METHODS = [dict(reduction_method="freq"), TRAINING_FREE_FREQ, dict(reduction_method="tome"),
           dict(reduction_method="kmedoids"), dict(reduction_method="topk"), dict(reduction_method="evit")]


@by_name
@pytest.mark.parametrize("method", METHODS, ids=["freq", "preset", "tome", "kmedoids", "topk", "evit"])
def test_reduction_runs_counts_its_tokens_and_keeps_images_apart(family, method):
    if family.name == "siglip" and method.get("reduction_method") in ("topk", "evit"):
        pytest.skip("CLS-attention scores: SigLIP has no CLS token (refused, see below)")
    model, _ = family.twins(**REDUCTION, **method)
    pixels = torch.randn(3, 3, 64, 64)
    output = forward(model, pixels, output_token_provenance=True)
    assert torch.isfinite(output.last_hidden_state).all()
    assert output.last_hidden_state.shape[1] == configured_sequence_lengths(model.config)[-1][1]
    for index in range(3):  # each image reduces on its own
        alone = forward(model, pixels[index : index + 1]).last_hidden_state
        assert (alone[0] - output.last_hidden_state[index]).abs().max() <= 1e-5
    prefix = model.config.num_prefix_tokens
    for stage in output.token_provenance:  # no patch is ever carried by a CLS or register token
        assert stage.num_prefix == prefix and not ((stage.patch_to_token >= 0) & (stage.patch_to_token < prefix)).any()


@by_name
@pytest.mark.parametrize("reduction", [dict(reduction_method="none"), REDUCTION], ids=["none", "freq"])
def test_count_equals_torch_flop_counter(family, reduction):
    """count_macs counts the model with its head: DINOv2's classifier, SigLIP's attention pooling (CLIP's tower has
    none)."""
    model, _ = family.twins(*family.classifier, **reduction)
    model.set_attn_implementation("eager")  # torch's counter sees every matmul of eager attention
    with FlopCounterMode(display=False) as counter:
        forward(model, torch.randn(1, 3, 64, 64))
    assert counter.get_total_flops() == 2 * count_macs(model.config)


def test_methods_that_need_a_cls_token_are_refused_for_siglip():
    for method in ("topk", "evit", "ats"):
        with pytest.raises(ValueError, match=f"reduction_method: '{method}' scores tokens by the CLS token"):
            FAMILY["siglip"].configs(reduction_method=method, **REDUCTION)


def test_per_layer_tome_is_refused_where_more_than_one_token_leads():
    for name in ("dinov2-registers", "siglip"):
        with pytest.raises(ValueError, match="tome_r: per-layer ToMe"):
            FAMILY[name].configs(reduction_method="tome", tome_r=2)
    FAMILY["clip"].configs(reduction_method="tome", tome_r=2)  # one CLS: allowed


@by_name
@pytest.mark.slow
def test_compiles_to_one_graph(family):
    model, _ = family.twins(**REDUCTION, **TRAINING_FREE_FREQ)
    pixels = torch.randn(2, 3, 64, 64)
    eager = forward(model, pixels).last_hidden_state
    compiled = torch.compile(model, fullgraph=True)
    assert (forward(compiled, pixels).last_hidden_state - eager).abs().max() <= 1e-4


REMOTE_CHECK = """
import sys
sys.modules["freqtr_hf"] = None  # the package is not importable: only the saved code may serve
import torch
from transformers import AutoModel
model = AutoModel.from_pretrained(sys.argv[1], trust_remote_code=True).eval()
assert "freqtr_hf" not in type(model).__module__, type(model).__module__
with torch.no_grad():
    output = model(torch.load(sys.argv[2]), interpolate_pos_encoding=True).last_hidden_state
print(type(model).__name__, (output - torch.load(sys.argv[3])).abs().max().item())
"""


@by_name
@pytest.mark.slow
def test_a_saved_folder_round_trips_with_its_code_where_freqtr_hf_is_absent(family, tmp_path):
    model, _ = family.twins(**REDUCTION, **TRAINING_FREE_FREQ)
    for name, parameter in model.named_parameters():  # trained-looking reduction parameters must survive
        if "high_pass_gain" in name:
            torch.nn.init.normal_(parameter, std=0.2)
    folder = tmp_path / family.name
    model.save_pretrained(folder)
    # the family's modules and the shared ones they import, as transformers follows them; no other family's
    modules = [MODEL_FOLDER / f"{family.modeling_module}.py", MODEL_FOLDER / f"{family.modeling_module.replace('modeling', 'configuration')}.py"]
    needed = {Path(file).name for module in modules for file in [module, *get_relative_import_files(str(module))]}
    assert sorted(path.name for path in folder.glob("*.py")) == sorted(needed)
    assert json.loads((folder / "config.json").read_text())["auto_map"]["AutoModel"].startswith(family.modeling_module)
    assert type(AutoModel.from_pretrained(folder)) is family.model  # registered: no remote code where freqtr_hf is
    pixels = torch.randn(2, 3, 64, 64)
    torch.save(pixels, tmp_path / "pixels.pt")
    torch.save(forward(model, pixels).last_hidden_state, tmp_path / "expected.pt")
    result = subprocess.run(
        [sys.executable, "-c", REMOTE_CHECK, str(folder), str(tmp_path / "pixels.pt"), str(tmp_path / "expected.pt")],
        capture_output=True, text=True, cwd=tmp_path,
        env={"HF_HUB_OFFLINE": "1", "PATH": "/usr/bin:/bin", "HF_HOME": str(tmp_path / "hf")},
    )
    assert result.returncode == 0, result.stderr[-3000:]
    name, difference = result.stdout.split()[-2:]
    assert name == family.model.__name__ and float(difference) == 0.0


@by_name
def test_loads_a_folder_saved_by_the_familys_class_and_refuses_other_families(family, tmp_path):
    _, reference = family.twins(reduction_method="none")
    reference.save_pretrained(tmp_path)
    loaded = family.model.from_pretrained(tmp_path, reduction_method="none").eval()
    pixels = torch.randn(1, 3, 64, 64)
    assert torch.equal(forward(loaded, pixels).last_hidden_state, forward(reference, pixels).last_hidden_state)
    reduced = family.model.from_pretrained(tmp_path, **REDUCTION)
    assert reduced.config.reduction_method == "freq" and type(reduced.config) is family.config
    with pytest.raises(ValueError, match=f"checkpoint; FreqViTConfig loads .*{family.config.__name__}"):
        FreqViTModel.from_pretrained(tmp_path)


@pytest.mark.parametrize("full, tower, reduced", [(CLIPModel, CLIPVisionModel, FreqCLIPVisionModel),
                                                  (SiglipModel, SiglipVisionModel, FreqSiglipVisionModel)],
                         ids=["clip", "siglip"])
def test_the_tower_loads_from_a_whole_models_folder_and_serves_zero_shot(full, tower, reduced, tmp_path):
    vision = {**SHAPE, "intermediate_size": 64}
    text = dict(hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=64, vocab_size=99)
    config_class = CLIPConfig if full is CLIPModel else SiglipConfig
    torch.manual_seed(0)
    model = full(config_class(vision_config=vision, text_config=text)).eval()
    model.save_pretrained(tmp_path)
    pixels = torch.randn(2, 3, 64, 64)
    ours = reduced.from_pretrained(tmp_path, reduction_method="none").eval()
    theirs = tower.from_pretrained(tmp_path).eval()
    assert torch.equal(forward(ours, pixels).pooler_output, forward(theirs, pixels).pooler_output)
    input_ids = torch.tensor([[1, 5, 7, 2], [1, 9, 3, 2]])
    with torch.no_grad():
        logits = model(input_ids=input_ids, pixel_values=pixels).logits_per_image
        model.vision_model = ours
        assert (model(input_ids=input_ids, pixel_values=pixels).logits_per_image - logits).abs().max() <= 1e-5
        model.vision_model = reduced.from_pretrained(tmp_path, **REDUCTION, **TRAINING_FREE_FREQ).eval()
        zero_shot = model(input_ids=input_ids, pixel_values=pixels).logits_per_image
    assert zero_shot.shape == logits.shape and torch.isfinite(zero_shot).all()


def test_siglip2_naflex_checkpoints_are_refused_by_name(tmp_path):
    (tmp_path / "config.json").write_text(json.dumps({"model_type": "siglip2", "vision_config": {
        "model_type": "siglip2_vision_model", "hidden_size": 32}}))
    with pytest.raises(ValueError, match="SigLIP 2 NaFlex"):
        FreqSiglipVisionModel.from_pretrained(tmp_path)


def test_dinov2_backbone_restores_the_grid_and_serves_depth_anything_and_dpt():
    family = FAMILY["dinov2"]
    stages = dict(out_features=["stage2", "stage4"])
    model, reference = family.twins(FreqDinov2Backbone, Dinov2Backbone, stages, reduction_method="none")
    pixels = torch.randn(2, 3, 48, 72)
    for mine, theirs in zip(forward(model, pixels).feature_maps, forward(reference, pixels).feature_maps):
        assert mine.shape == (2, 32, 6, 9) and (mine - theirs).abs().max() <= 1e-5
    reduced, _ = family.twins(FreqDinov2Backbone, Dinov2Backbone, stages, **REDUCTION, **TRAINING_FREE_FREQ)
    assert all(map_.shape == (2, 32, 6, 9) for map_ in forward(reduced, pixels).feature_maps)
    backbone = FreqDinov2Config(**SHAPE, mlp_ratio=2, **REDUCTION, **TRAINING_FREE_FREQ, reshape_hidden_states=False,
                                out_features=["stage1", "stage2", "stage3", "stage4"])
    anything = DepthAnythingForDepthEstimation(DepthAnythingConfig(
        backbone_config=backbone, neck_hidden_sizes=[8, 16, 32, 32], fusion_hidden_size=16,
        reassemble_hidden_size=32, patch_size=8, head_hidden_size=8,
    ))
    depth = anything(pixel_values=pixels).predicted_depth
    assert depth.shape == (2, 48, 72) and torch.isfinite(depth).all()
    depth.mean().backward()
    dpt = DPTForDepthEstimation(DPTConfig(
        backbone_config=backbone, hidden_size=32, neck_hidden_sizes=[8, 16, 32, 32], fusion_hidden_size=16,
        reassemble_factors=[4, 2, 1, 0.5], head_in_index=-1,
    ))
    depth = dpt(pixel_values=pixels).predicted_depth
    assert depth.shape[0] == 2 and torch.isfinite(depth).all()
    depth.mean().backward()


def test_a_reduction_layer_past_the_last_block_is_named_first():
    with pytest.raises(ValueError, match=r"reduction_layers: every layer must be in \[0, 4\)"):
        FAMILY["dinov2"].configs(reduction_layers=[20])
