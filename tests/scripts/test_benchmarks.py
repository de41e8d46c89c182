"""The benchmarks' own pieces: the speed benchmark's zero-cost reduction, op count and a short run; the training-free
benchmark's paired test, and a short run that resumes and refuses another run's state."""

import subprocess
import sys
from pathlib import Path

import pytest
import torch
from transformers import ViTConfig, ViTForImageClassification

from freqtr_hf import FreqViTConfig, FreqViTForImageClassification
from freqtr_hf.devices import time_in_turns
from freqtr_hf.evaluation import EvaluationState

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO / "benchmarks"))
from speed import MatmulsAlone, aten_ops_per_forward, build_models, cut_by_slicing, report  # noqa: E402
from training_free import paired_test, preset_against_best  # noqa: E402

pytestmark = pytest.mark.slow  # runs the benchmark scripts: seconds each

SHAPE = dict(hidden_size=32, num_attention_heads=2, intermediate_size=64, num_hidden_layers=6, image_size=64,
             patch_size=8, num_labels=5)


def test_timed_calls_take_turns_in_a_rotating_order():
    order = []
    times = time_in_turns([lambda name=name: order.append(name) for name in "abc"], 4, torch.device("cpu"))
    assert order == list("abc" "bca" "cab" "abc")
    assert [len(record) for record in times] == [4, 4, 4] and all(t >= 0 for record in times for t in record)


def test_the_free_reduction_runs_at_the_token_counts_of_freq():
    config = FreqViTConfig(**SHAPE, reduction_method="freq", reduction_layers=(1, 3), dc_window_sizes=(2, 1))
    freq = FreqViTForImageClassification(config).eval()
    free = cut_by_slicing(FreqViTForImageClassification(config).eval())
    pixels = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        cut = free(pixels, output_hidden_states=True)
        hidden = freq(pixels, output_hidden_states=True).hidden_states
    assert cut.logits.shape == (2, 5)
    lengths = [h.shape[1] for h in cut.hidden_states[1:]]
    assert lengths == [h.shape[1] for h in hidden[1:]] == [65, 49, 49, 32, 32, 32]  # 44 kept + 4 DC, then 30 + 1


def test_the_matmuls_alone_are_the_linear_layers_at_the_schedule_lengths():
    shape = {**SHAPE, "intermediate_size": 96}  # not 2 x the width: attention and MLP MACs then differ per token
    vit = ViTForImageClassification(ViTConfig(**shape)).eval()
    lengths = [(65, 49), (49, 32)] + [(32, 32)] * 4
    matmuls = MatmulsAlone(vit, lengths, batch_size=3)
    rows = []
    for layer in vit.vit.layers:
        for linear in (*layer.attention.modules(), *layer.mlp.modules()):
            if isinstance(linear, torch.nn.Linear):
                linear.register_forward_hook(lambda module, args, output: rows.append(tuple(args[0].shape[:2])))
    with torch.no_grad():
        matmuls()
    # per block: q, k, v, o on the tokens its attention sees; fc1, fc2 on those its MLP sees
    assert rows == [row for a, m in lengths for row in [(3, a)] * 4 + [(3, m)] * 2]
    width, hidden = shape["hidden_size"], shape["intermediate_size"]
    assert matmuls.macs == 3 * sum(4 * a * width * width + 2 * m * width * hidden for a, m in lengths)


def test_the_speed_benchmark_prints_every_model():
    command = [sys.executable, str(REPO / "benchmarks" / "speed.py"), "--device", "cpu", "--sizes", "tiny",
               "--batch-sizes", "1", "--rounds", "1", "--methods", "freq", "free-cut", "--matmuls-alone"]
    printed = subprocess.run(command, capture_output=True, text=True, check=True, cwd=REPO).stdout
    rows = {line.split()[0] for line in printed.splitlines() if line and line.split()[0] in ("vit", "freq", "free-cut")}
    assert rows == {"vit", "freq", "free-cut"}
    assert "matrix products alone (ViT's linear layers at freq's token counts)" in printed


@pytest.mark.parametrize("flags, message", [
    (["--methods", "topk", "--training-memory"], "--training-memory measures the default FreqViT: add freq to --methods"),
    (["--methods", "topk", "--matmuls-alone"],
     "--matmuls-alone runs at the default FreqViT's token counts: add freq to --methods"),
    (["--rounds", "0"], "argument --rounds: must be a whole number >= 1, got 0"),
    (["--batch-sizes", "1", "-2"], "argument --batch-sizes: must be a whole number >= 1, got -2"),
    (["--device", "cpu", "--dtypes", "float16"], "dtype: float16 is not supported on the CPU"),
])
def test_the_speed_benchmark_refuses_bad_flags_by_name(flags, message):
    command = [sys.executable, str(REPO / "benchmarks" / "speed.py"), *flags]
    result = subprocess.run(command, capture_output=True, text=True, cwd=REPO)
    assert result.returncode == 2 and message in result.stderr and "Traceback" not in result.stderr


def test_the_op_count_is_per_forward_and_counts_the_reduction_work():
    models = build_models("overhead", ["freqvit-off", "freq", "free-cut"], torch.device("cpu"), torch.float32)
    pixels = torch.randn(1, 3, 224, 224)
    counts = {name: aten_ops_per_forward(model, pixels) for name, (model, _) in models.items()}
    assert counts["freqvit-off"] < counts["free-cut"] < counts["freq"]
    assert counts["freq"] <= counts["vit"] + 60  # the reduction's ops: few kernel launches on a GPU
    assert aten_ops_per_forward(models["freq"][0], pixels) == counts["freq"]  # the same every call: nothing cached


def test_the_paired_test_counts_the_images_where_only_one_is_right():
    first = [True, True, True, False, True, False]
    second = [False, False, False, False, True, False]
    only_first, only_second, p_value = paired_test(first, second)
    assert (only_first, only_second) == (3, 0)
    assert p_value == pytest.approx(0.25)  # 3 of 3 discordant images one way: 2 * 0.5**3
    assert paired_test(first, first) == (0, 0, 1.0)
    assert paired_test([True] * 10 + [False] * 10, [False] * 10 + [True] * 10)[2] == pytest.approx(1.0)


@pytest.mark.parametrize("compiled_ms", [2.0, 4.0])
def test_a_compiled_vit_slower_than_the_eager_one_is_named_as_the_speed_ups_baseline(compiled_ms, capsys):
    models = {"vit": (None, 4e9), "freq": (None, 2e9), "vit (eager)": (None, 4e9)}
    times = {"vit": [compiled_ms / 1e3] * 3, "freq": [1e-3] * 3, "vit (eager)": [3e-3] * 3}
    report("compiled", models, times, {}, batch_size=1)
    printed = capsys.readouterr().out
    assert f"{compiled_ms:.2f}x" in printed.splitlines()[4]  # freq's speed-up against the compiled ViT
    slower = "the compiled ViT is slower than the eager one (4.00 ms against 3.00)"
    assert (slower in printed) == (compiled_ms > 3.0)


def test_the_preset_is_compared_image_by_image_with_the_best_other_method_and_a_top1_above_the_unreduced_is_named():
    # six images, labels 0..5; the unreduced model is right on the first four
    labels = [0, 1, 2, 3, 4, 5]
    predictions = {"none": [0, 1, 2, 3, 9, 9], "comparison|TRAINING_FREE_FREQ|0.9": [0, 1, 2, 3, 9, 9],
                   "comparison|kmedoids|0.9": [0, 1, 2, 9, 4, 5], "comparison|topk|0.9": [0, 9, 9, 9, 1, 1]}
    state = EvaluationState({}, done=6, predictions=predictions, labels=labels)
    rows = []
    for key, predicted in predictions.items():
        if key != "none":
            rows.append({"table": "comparison", "row": key.split("|")[1], "key": key, "keep_rate": 0.9,
                         "top1": sum(p == t for p, t in zip(predicted, labels)) / 6,
                         "agreement": sum(p == r for p, r in zip(predicted, predictions["none"])) / 6,
                         "unreduced_top1": 4 / 6})
    top1, agreement = preset_against_best(rows, state, [0.9]).splitlines()
    assert top1.startswith("keep 0.9 top-1: preset 66.7 vs kmedoids 83.3; only the preset right on 1 image, "
                           "only kmedoids on 2 images: McNemar p = 1")
    assert "kmedoids is at or above the unreduced model's 66.7" in top1
    assert agreement.startswith("keep 0.9 agreement: preset 100.0 vs kmedoids 50.0; only the preset agrees on 3 images")
    assert "unreduced" not in agreement


def test_the_training_free_benchmark_resumes_its_run_and_refuses_another(deit_tiny, imagenette_val, tmp_path):
    command = [sys.executable, str(REPO / "benchmarks" / "training_free.py"), "--model", str(deit_tiny),
               "--data", str(imagenette_val), "--every", "200", "--table", "comparison", "--state-dir", str(tmp_path),
               "--keep-rates", "0.7"]
    printed = subprocess.run(command, capture_output=True, text=True, check=True, cwd=REPO)
    assert "| TRAINING_FREE_FREQ" in printed.stdout and "McNemar p = " in printed.stdout
    again = subprocess.run(command, capture_output=True, text=True, check=True, cwd=REPO)
    assert "holds this run, finished" in again.stderr and again.stdout == printed.stdout
    other = subprocess.run(command[:-1] + ["0.5"], capture_output=True, text=True, cwd=REPO)
    assert other.returncode != 0 and "holds another run: keep_rates differs (saved run: [0.7], this run: [0.5])" in (
        other.stderr)
