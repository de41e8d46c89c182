"""Mechanics of the model classes on tiny random configs."""

import shutil

import pytest
import torch
from PIL import Image
from transformers import ViTImageProcessor, pipeline

from freqtr_hf import TRAINING_FREE_FREQ, FreqViTConfig, FreqViTForImageClassification, FreqViTModel
from freqtr_hf.models.freqvit.modeling_freqvit import FreqViTAttention
from freqtr_hf.models.freqvit.reduction_frequency import window_index

from conftest import tiny_config, vit_twin


RANDOM_SHAPES = [
    dict(hidden_size=24, num_attention_heads=3, intermediate_size=40, num_hidden_layers=3, image_size=48, patch_size=8),
    dict(hidden_size=32, num_attention_heads=4, intermediate_size=64, num_hidden_layers=5, image_size=56, patch_size=7,
         qkv_bias=False),
    dict(hidden_size=16, num_attention_heads=1, intermediate_size=16, num_hidden_layers=2, image_size=(32, 48),
         patch_size=8),
]


@pytest.mark.parametrize("shape", RANDOM_SHAPES)
@pytest.mark.parametrize("off", [dict(reduction_method="none"), dict(keep_rate=1.0)])
@pytest.mark.parametrize("attn_implementation", ["eager", "sdpa"])
def test_reduction_off_gives_the_vit_logits(shape, off, attn_implementation):
    config = tiny_config(**shape, reduction_layers=(1,), dc_window_sizes=(2,), **off)
    model, vit = vit_twin(config, attn_implementation)
    pixels = torch.randn(3, 3, *(shape["image_size"] if isinstance(shape["image_size"], tuple) else
                                 (shape["image_size"],) * 2))
    with torch.no_grad():
        difference = (model(pixels).logits - vit(pixels).logits).abs().max()
    assert difference <= 1e-5


def test_default_schedule_token_counts_and_untouched_first_blocks():
    config = tiny_config(hidden_size=16, num_attention_heads=2, intermediate_size=32, num_hidden_layers=12,
                         image_size=224, patch_size=16, reduction_layers=(3, 6, 9), dc_window_sizes=(2, 1, 1))
    model, vit = vit_twin(config)
    pixels = torch.randn(2, 3, 224, 224)
    with torch.no_grad():
        ours = model(pixels, output_hidden_states=True).hidden_states
        theirs = vit(pixels, output_hidden_states=True).hidden_states
    assert [h.shape[1] for h in ours] == [197] * 4 + [142] * 3 + [97] * 3 + [68] * 3
    for layer in range(4):  # embeddings and blocks 1-3 (0-based 0-2), with ω = 0
        assert (ours[layer] - theirs[layer]).abs().max() <= 1e-5


def test_reweighting_equals_the_explicit_attention_formula():
    config = tiny_config()
    attention = FreqViTAttention(config, layer_idx=2).eval()
    torch.nn.init.normal_(attention.high_pass_gain)
    torch.nn.init.normal_(attention.dc_gain)
    hidden = torch.randn(2, 9, config.hidden_size)
    num_dc = 2
    output, maps = attention(hidden, num_merged=num_dc, need_maps=True, need_probs=True)

    heads, head_dim = config.num_attention_heads, config.hidden_size // config.num_attention_heads
    split = lambda x: x.view(2, 9, heads, head_dim).transpose(1, 2)  # noqa: E731
    q, k, v = split(attention.q_proj(hidden)), split(attention.k_proj(hidden)), split(attention.v_proj(hidden))
    a = (q @ k.transpose(-1, -2) * head_dim**-0.5).softmax(-1)
    w1 = attention.high_pass_gain.view(1, heads, 1, 1)
    w2 = attention.dc_gain.view(1, heads, 1, 1)
    dc_columns = torch.zeros(9)
    dc_columns[-num_dc:] = 1
    a_hat = a + w1 * (a - 1 / 9) + w2 * a * dc_columns
    expected = attention.o_proj((a_hat @ v).transpose(1, 2).reshape(2, 9, -1))
    torch.testing.assert_close(maps.probs, a)
    torch.testing.assert_close(output, expected, atol=1e-5, rtol=1e-5)
    # the same through sdpa, which never returns the attention matrix
    attention.config._attn_implementation = "sdpa"
    torch.testing.assert_close(attention(hidden, num_merged=num_dc)[0], expected, atol=1e-5, rtol=1e-5)


def test_only_blocks_after_the_first_reduction_see_dc_tokens():
    model = FreqViTModel(tiny_config())
    assert [layer.attention.dc_gain is not None for layer in model.layers] == [False, False, True, True]
    assert all(layer.attention.high_pass_gain is not None for layer in model.layers)
    assert all(layer.attention.high_pass_gain is None for layer in FreqViTModel(tiny_config(
        attention_reweighting=False)).layers)


@pytest.mark.parametrize("size", [(64, 64), (96, 80)])
def test_provenance_partitions_the_patches_into_kept_and_dc_windows(size):
    model = FreqViTForImageClassification(tiny_config()).eval()
    grid = (size[0] // 8, size[1] // 8)
    with torch.no_grad():
        output = model(torch.randn(3, 3, *size), interpolate_pos_encoding=True, output_token_provenance=True)
    stages = output.token_provenance
    assert [stage.layer for stage in stages] == [1, 2]
    for stage, window_size in zip(stages, (2, 1)):
        assert stage.patch_to_token.shape == (3, grid[0] * grid[1])
        assert torch.all(stage.kept ^ stage.merged)  # every patch is kept or merged, none dropped
        assert torch.all(stage.kept.sum(1) == stage.num_kept)
        for kept_row, tokens in zip(stage.kept, stage.patch_to_token):
            assert sorted(tokens[kept_row].tolist()) == list(range(1, stage.num_kept + 1))
        dc_index = stage.patch_to_token - 1 - stage.num_kept
        assert dc_index.max() < window_size**2
        windows = window_index(grid, window_size).expand(3, -1)
        assert torch.equal(dc_index[stage.merged], windows[stage.merged])
    # kept patches only shrink
    assert torch.all(stages[0].kept | ~stages[1].kept)
    assert output.logits.shape == (3, 10)


def test_provenance_is_off_by_default():
    model = FreqViTForImageClassification(tiny_config()).eval()
    assert model(torch.randn(1, 3, 64, 64)).token_provenance is None


def test_batch_equals_single_images():
    model = FreqViTForImageClassification(tiny_config()).eval()
    pixels = torch.randn(4, 3, 64, 64)
    with torch.no_grad():
        batch = model(pixels).logits
        single = torch.cat([model(pixels[i : i + 1]).logits for i in range(4)])
    torch.testing.assert_close(batch, single, atol=1e-5, rtol=1e-5)


def omega_written_everywhere(model, value: float) -> None:
    for layer in model.vit.layers:
        layer.attention.high_pass_gain.data.fill_(value)  # `.data`: bumps no version counter


def test_a_changed_omega_is_used_at_the_next_call():
    """At inference a zero ω is skipped; a ω written any way, `.data` included, must be seen at once (on the CPU it
    is read at every call; tests/model/test_cuda.py checks the cache an accelerator uses)."""
    torch.manual_seed(0)
    model = FreqViTForImageClassification(tiny_config()).eval()
    twin = FreqViTForImageClassification(model.config).eval()
    twin.load_state_dict(model.state_dict())
    pixels = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        unweighted = model(pixels).logits
        omega_written_everywhere(model, 0.5)
        omega_written_everywhere(twin, 0.5)
        reweighted = model(pixels).logits
        torch.testing.assert_close(reweighted, twin(pixels).logits)
    assert not torch.allclose(reweighted, unweighted)


def test_eager_and_sdpa_agree_with_reduction():
    model = FreqViTForImageClassification(tiny_config()).eval()
    for layer in model.vit.layers:
        torch.nn.init.normal_(layer.attention.high_pass_gain, std=0.3)
    pixels = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        model.set_attn_implementation("eager")
        eager = model(pixels).logits
        model.set_attn_implementation("sdpa")
        sdpa = model(pixels).logits
    torch.testing.assert_close(eager, sdpa, atol=1e-5, rtol=1e-5)


def test_bf16_forward_and_backward():
    model = FreqViTForImageClassification(tiny_config()).to(torch.bfloat16)
    output = model(torch.randn(2, 3, 64, 64), labels=torch.tensor([1, 2]))
    output.loss.backward()
    assert output.logits.dtype == torch.bfloat16 and torch.isfinite(output.logits).all()
    assert model.vit.layers[3].attention.dc_gain.grad is not None


def test_gradient_checkpointing_gives_the_same_gradients():
    model = FreqViTForImageClassification(tiny_config(hidden_dropout_prob=0.0)).train()
    pixels, labels = torch.randn(2, 3, 64, 64), torch.tensor([3, 4])

    def gradients():
        model.zero_grad()
        model(pixels, labels=labels).loss.backward()
        return {name: p.grad.clone() for name, p in model.named_parameters() if p.grad is not None}

    plain = gradients()
    model.activation_checkpointing_enable()
    checkpointed = gradients()
    assert plain.keys() == checkpointed.keys()
    for name in plain:
        torch.testing.assert_close(plain[name], checkpointed[name], atol=1e-6, rtol=1e-5)
    assert "vit.layers.1.token_reducer.dc_position_embeddings" in plain


@pytest.mark.slow
def test_torch_compile_fullgraph():
    model = FreqViTForImageClassification(tiny_config()).eval()
    pixels = torch.randn(2, 3, 64, 64)
    torch.compiler.reset()  # every model's forward is one function: its compiled versions share one recompile limit
    with torch.no_grad():
        expected = model(pixels).logits
        compiled = torch.compile(model, fullgraph=True, backend="eager")(pixels).logits
    torch.testing.assert_close(compiled, expected)


@pytest.mark.slow
@pytest.mark.skipif(shutil.which("c++") is None and shutil.which("g++") is None,
                    reason="torch.compile's CPU backend (inductor) needs a C++ compiler")
@pytest.mark.parametrize(
    "fields",
    [{"reduction_method": "freq"}, {"reduction_method": "freq", **TRAINING_FREE_FREQ},
     {"reduction_method": "freq", **TRAINING_FREE_FREQ, "keep_rate": 0.9}, {"reduction_method": "tome"},
     {"reduction_method": "kmedoids"}],
    # at 0.9 the redundancy pool acts
    ids=["freq", "training-free-preset", "training-free-preset-keep-0.9", "tome", "kmedoids"],
)
def test_torch_compile_inductor_on_deit_layout(fields):
    """Compiled by inductor, not only traced, in DeiT's layout (224 px, 14 x 14 patches, the default schedule) at a
    small width. Inductor once failed on `freq`'s window transfer there, and once freed the buffer of ToMe's token
    sizes while the next stage still read it; K-Medoids' medoids once followed the rounding of the distances'
    diagonal, which inductor computes differently."""
    config = FreqViTConfig(hidden_size=32, num_attention_heads=2, intermediate_size=64, num_labels=10, **fields)
    model = FreqViTForImageClassification(config).eval()
    pixels = torch.randn(2, 3, 224, 224)
    torch.compiler.reset()  # as above
    with torch.no_grad():
        expected = model(pixels).logits
        compiled = torch.compile(model, fullgraph=True)(pixels).logits
    torch.testing.assert_close(compiled, expected)


def test_hidden_states_and_attentions_follow_the_changing_length():
    model = FreqViTForImageClassification(tiny_config()).eval()  # 65 tokens, keep 0.7: 1+44+4, then 1+30+1
    output = model(torch.randn(2, 3, 64, 64), output_hidden_states=True, output_attentions=True)
    assert [h.shape[1] for h in output.hidden_states] == [65, 65, 49, 32, 32]
    assert [a.shape for a in output.attentions] == [(2, 2, n, n) for n in (65, 65, 49, 32)]
    assert torch.allclose(output.attentions[2].sum(-1), torch.ones(1))
    as_tuple = model(torch.randn(1, 3, 64, 64), return_dict=False)
    assert isinstance(as_tuple, tuple) and as_tuple[0].shape == (1, 10)


def test_hidden_states_by_index():
    model = FreqViTModel(tiny_config()).eval()  # 5 hidden states: the embeddings, then blocks 1-4
    pixels = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        every = model(pixels, output_hidden_states=True).hidden_states
        for selection, expected in ((0, [0]), (-5, [0]), (-1, [4]), ([0, 2], [0, 2]), ([3, -1], [3, 4]), (9, [])):
            chosen = model(pixels, output_hidden_states=selection).hidden_states
            assert len(chosen) == len(expected)
            assert all(torch.equal(state, every[index]) for state, index in zip(chosen, expected))
        assert model(pixels, output_hidden_states=False).hidden_states is None


def test_image_classification_pipeline():
    model = FreqViTForImageClassification(tiny_config(id2label={i: f"class {i}" for i in range(10)})).eval()
    processor = ViTImageProcessor(size={"height": 64, "width": 64})
    classify = pipeline("image-classification", model=model, image_processor=processor)
    predictions = classify(Image.new("RGB", (80, 70), color=(200, 30, 30)), top_k=3)
    assert len(predictions) == 3 and predictions[0]["label"].startswith("class ")


@pytest.mark.parametrize(
    "pixels, kwargs, message",
    [
        (torch.randn(1, 1, 64, 64), {}, "expected 3 channels, got 1"),
        (torch.randn(3, 64, 64), {}, "expected \\(batch, channels, height, width\\)"),
        (torch.randn(1, 3, 4, 64), {"interpolate_pos_encoding": True}, "smaller than one 8x8 patch"),
        (torch.randn(1, 3, 8, 64), {"interpolate_pos_encoding": True}, "dc_window_sizes"),
        (torch.randn(1, 3, 16, 16), {"interpolate_pos_encoding": True}, "keep_rate"),
        (torch.randn(1, 3, 32, 32), {}, "doesn't match model"),
    ],
)
def test_bad_images_raise_clear_errors(pixels, kwargs, message):
    model = FreqViTForImageClassification(tiny_config(keep_rate=0.2)).eval()
    with pytest.raises(ValueError, match=message):
        model(pixels, **kwargs)


@pytest.mark.parametrize(
    "fields, message",
    [
        ({"image_size": (64, 96)}, "interpolate_pos_encoding: .* image_size \\(64, 96\\) and patch_size 8"),
        ({"patch_size": (8, 16)}, "interpolate_pos_encoding: .* patch_size \\(8, 16\\)"),
        ({"reduction_method": "sit"}, "reduction_method: 'sit' .* its 8x8 patch grid .* got 12x12 patches"),
        ({"reduction_method": "sinkhorn"}, "reduction_method: 'sinkhorn' .* got 12x12 patches"),
    ],
)
def test_other_resolutions_that_cannot_work_are_refused(fields, message):
    """transformers' ViT interpolates only a square grid of position embeddings and one int patch size; the
    soft-merging methods learn as many outputs as the configured grid gives."""
    model = FreqViTForImageClassification(tiny_config(**fields)).eval()
    with pytest.raises(ValueError, match=message):
        model(torch.randn(1, 3, 96, 96), interpolate_pos_encoding=True)


def test_interpolation_at_the_configured_size_keeps_working():
    """transformers' ViT returns its own position embeddings for a square image of the configured grid, whatever
    the form of patch_size."""
    model = FreqViTForImageClassification(tiny_config(patch_size=(8, 8))).eval()
    pixels = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        torch.testing.assert_close(model(pixels, interpolate_pos_encoding=True).logits, model(pixels).logits)


def test_a_model_with_an_offloaded_layer_runs():
    """accelerate's offload keeps a layer's weights on the meta device until its forward: the zero-ω check, which
    runs before the layers, must not read them."""
    from accelerate import cpu_offload

    torch.manual_seed(0)
    model = FreqViTForImageClassification(tiny_config()).eval()
    pixels = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        expected = model(pixels).logits
        cpu_offload(model.vit.layers[2], execution_device=torch.device("cpu"))
        assert model.vit.layers[2].attention.high_pass_gain.device.type == "meta"
        torch.testing.assert_close(model(pixels).logits, expected)


def test_a_model_built_in_inference_mode_runs():
    with torch.inference_mode():
        model = FreqViTForImageClassification(tiny_config()).eval()
        assert torch.isfinite(model(torch.randn(1, 3, 64, 64)).logits).all()


@pytest.mark.parametrize("overrides", [dict(reduction_method="tome"), dict(proportional_attention=True)])
def test_key_weighting_methods_refuse_kernels_without_an_additive_bias(overrides):
    model = FreqViTForImageClassification(tiny_config(**overrides)).eval()
    model.config._attn_implementation = "flash_attention_2"
    with pytest.raises(ValueError, match="attn_implementation"):
        model(torch.randn(1, 3, 64, 64))
