"""On a CUDA GPU: the methods compute there what they compute on the CPU, in bf16 too, eager and under CUDA graphs,
and `freqtr-hf evaluate --device cuda` gives the CPU's results. Skipped where torch sees no CUDA GPU (this
project's CI has none); run them on a GPU machine with `FREQTR_REQUIRE_CUDA=1 python -m pytest tests/model/test_cuda.py`,
where a torch without CUDA (the CPU wheel) then fails instead of skipping."""

import json
import os

import pytest
import torch
from freqtr_hf import TRAINING_FREE_FREQ, FreqViTConfig, FreqViTForImageClassification
from freqtr_hf.models.freqvit.reduction_frequency import merge_into_dc_tokens, window_members
from freqtr_hf.cli import main

from conftest import vit_twin, write_images, write_tiny_vit

if not torch.cuda.is_available() and os.environ.get("FREQTR_REQUIRE_CUDA") == "1":
    raise RuntimeError(f"FREQTR_REQUIRE_CUDA=1, but torch {torch.__version__} sees no CUDA GPU (a CPU-only wheel?)")
pytestmark = [pytest.mark.cuda,
              pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU: torch sees none here")]

# The training-free methods, bar kmedoids: two devices round its distances differently (by about 1e-5), which can
# decide a near tie between two medoids.
# The learned ones are left out: untrained, their choices rest on random weights that can tie just as well.
METHODS = {
    "freq": {"reduction_method": "freq"},
    "freq-logits": {"reduction_method": "freq", "score_source": "logits"},
    "training-free-preset": {"reduction_method": "freq", **TRAINING_FREE_FREQ},
    "topk": {"reduction_method": "topk"},
    "evit": {"reduction_method": "evit"},
    "tome": {"reduction_method": "tome"},
    "tome-per-layer": {"reduction_method": "tome", "tome_r": 8},
    "ats": {"reduction_method": "ats"},
    "radial": {"reduction_method": "radial"},
}


@pytest.fixture(autouse=True)
def exact_float32():
    """fp32 matmuls and convolutions in full precision (cuDNN takes TF32 by default), so CPU and GPU agree to 1e-4."""
    saved = torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = False
    yield
    torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = saved


def deit_layout_model(fields: dict, attn_implementation: str = "sdpa") -> FreqViTForImageClassification:
    """A narrow model in DeiT's layout (224 px, 14 x 14 patches, the default schedule), random weights."""
    torch.manual_seed(0)
    config = FreqViTConfig(hidden_size=64, num_attention_heads=2, intermediate_size=128, num_labels=10,
                           attn_implementation=attn_implementation, **fields)
    return FreqViTForImageClassification(config).eval()


@pytest.mark.parametrize("fields", METHODS.values(), ids=METHODS)
def test_each_method_on_cuda_matches_the_cpu(fields):
    model = deit_layout_model(fields)
    pixels = torch.randn(3, 3, 224, 224)
    with torch.inference_mode():
        on_cpu = model(pixels).logits
    model.to("cuda")  # outside inference mode, as a user moves a model: its parameters stay normal tensors
    with torch.inference_mode():
        on_gpu = model(pixels.to("cuda")).logits.cpu()
    torch.testing.assert_close(on_gpu, on_cpu, rtol=1e-4, atol=1e-4)


def test_reduction_off_on_cuda_gives_the_vit_logits():
    model, vit = vit_twin(deit_layout_model({"reduction_method": "none"}).config)
    pixels = torch.randn(2, 3, 224, 224, device="cuda")
    with torch.inference_mode():
        difference = (model.to("cuda")(pixels).logits - vit.to("cuda")(pixels).logits).abs().max()
    assert difference <= 1e-5


@pytest.mark.parametrize("fields", [METHODS["freq"], METHODS["training-free-preset"]], ids=["freq", "preset"])
def test_bfloat16_on_cuda_stays_close_to_float32(fields):
    model = deit_layout_model(fields).to("cuda")
    pixels = torch.randn(4, 3, 224, 224, device="cuda")
    with torch.inference_mode():
        full = model(pixels).logits
        half = model.to(torch.bfloat16)(pixels.to(torch.bfloat16)).logits.float()
    assert torch.isfinite(half).all()
    # bf16 keeps 8 bits of mantissa: the logits move by a few hundredths, not by their own size
    assert (half - full).abs().max() < 0.1 * full.abs().max()


def test_a_changed_omega_is_used_on_cuda():
    """On an accelerator the zero-ω check is cached (reading ω would synchronise the host): an in-place write is
    seen at once, a `.data` write (no version counter) at the next `eval()`."""
    model = deit_layout_model(METHODS["freq"]).to("cuda")
    pixels = torch.randn(2, 3, 224, 224, device="cuda")
    gains = [layer.attention.high_pass_gain for layer in model.vit.layers]
    with torch.no_grad():
        unweighted = model(pixels).logits  # cached: every ω is zero
        for gain in gains:
            gain.fill_(0.5)
        in_place = model(pixels).logits
        for gain in gains:
            gain.fill_(0.0)
        torch.testing.assert_close(model(pixels).logits, unweighted)  # cached again: zero
        for gain in gains:
            gain.data.fill_(0.5)
        model.eval()
        torch.testing.assert_close(model(pixels).logits, in_place)
    assert not torch.allclose(in_place, unweighted)


@pytest.mark.parametrize("count_weighted", [True, False])
@pytest.mark.parametrize("num_windows", [1, 4])
def test_dc_tokens_compile_to_the_eager_means(count_weighted, num_windows):
    """The DC tokens are one matmul of averaging weights with the tokens (no scatter-add: inductor's CUDA code for
    one into a size-1 target read the result before the adds landed, pytorch/pytorch#191571). The shapes of a last
    stage (one window) and of a first (four)."""
    torch.manual_seed(0)
    tokens = torch.randn(1, 30, 64, device="cuda")
    sizes = torch.cat([torch.randint(0, 4, (1, 29), device="cuda").float(), torch.tensor([[101.0]], device="cuda")], 1)
    members = window_members(torch.randint(4, (1, 30), device="cuda"), 4) if num_windows == 4 else None
    torch.compiler.reset()
    compiled = torch.compile(merge_into_dc_tokens, fullgraph=True, dynamic=False)
    for got, expected in zip(compiled(tokens, members, sizes, count_weighted),
                             merge_into_dc_tokens(tokens, members, sizes, count_weighted)):
        torch.testing.assert_close(got, expected)


@pytest.mark.parametrize("fields", [METHODS["freq"], METHODS["training-free-preset"], METHODS["tome"]],
                         ids=["freq", "preset", "tome"])
def test_cuda_graphs_replay_the_eager_logits(fields):
    """`mode="reduce-overhead"` records the forward as a CUDA graph: that needs a graph without host tensors or host
    synchronisation, and the replays must compute what eager does on new inputs."""
    from torch._dynamo.utils import counters
    from torch._inductor.cudagraph_trees import get_manager

    model = deit_layout_model(fields).to("cuda")
    torch.compiler.reset()  # every model's forward is one function: its compiled versions share one recompile limit
    compiled = torch.compile(model, mode="reduce-overhead", fullgraph=True)
    skips = counters["inductor"]["cudagraph_skips"]
    with torch.inference_mode():
        for _ in range(4):  # warm-up, recording, then replays
            pixels = torch.randn(1, 3, 224, 224, device="cuda")
            replayed = compiled(pixels).logits.clone()
            torch.testing.assert_close(replayed, model(pixels).logits, rtol=1e-4, atol=1e-4)
    assert counters["inductor"]["cudagraph_skips"] == skips, "inductor skipped CUDA graphs for this model"
    # inductor's CUDA graph trees (internal): a graph was recorded for this device
    manager = get_manager(torch.cuda.current_device(), create_if_none_exists=False)
    assert manager is not None and any(manager.roots.values()), "no CUDA graph was recorded"


def test_evaluate_on_cuda_gives_the_cpu_results(tmp_path):
    write_tiny_vit(tmp_path / "model")
    write_images(tmp_path / "data", ["class 0", "class 1"], 6)
    results = {}
    for device in ("cpu", "cuda"):
        output = tmp_path / f"{device}.json"
        argv = ["evaluate", "--model", str(tmp_path / "model"), "--data", str(tmp_path / "data"), "--batch-size", "4",
                "--device", device, "--methods", "freq", "tome", "--output", str(output)]
        assert main(argv) == 0
        results[device] = {row["method"]: (row["top1"], row["agreement"]) for row in json.loads(output.read_text())["results"]}
    assert results["cuda"] == results["cpu"]


@pytest.mark.parametrize("family", ["dinov2-registers", "clip", "siglip"])
def test_the_other_families_on_cuda_match_the_cpu(family):
    from test_families import FAMILY, REDUCTION

    model, _ = FAMILY[family].twins(**REDUCTION, **TRAINING_FREE_FREQ)
    pixels = torch.randn(3, 3, 64, 64)
    with torch.inference_mode():
        on_cpu = model(pixels, interpolate_pos_encoding=True).last_hidden_state
    model.to("cuda")
    with torch.inference_mode():
        on_gpu = model(pixels.to("cuda"), interpolate_pos_encoding=True).last_hidden_state.cpu()
        half = model.to(torch.bfloat16)(pixels.to("cuda", torch.bfloat16), interpolate_pos_encoding=True)
    torch.testing.assert_close(on_gpu, on_cpu, rtol=1e-4, atol=1e-4)
    assert torch.isfinite(half.last_hidden_state).all()
