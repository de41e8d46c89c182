"""The analyses of both papers: every metric on hand-made cases with known answers, and `run_analysis` end to end
on a tiny random checkpoint (caching, resuming, figures, report)."""

import json
import math
import shutil
from dataclasses import replace

import numpy as np
import pytest
import torch

from freqtr_hf.analysis.jobs import AnalysisOptions
from freqtr_hf.analysis.report import run_analysis
from freqtr_hf.models.freqvit.configuration_freqvit import TRAINING_FREE_METHODS
from freqtr_hf.runs import OutputRefused, RunInUseError, exclusive_use
from freqtr_hf.analysis.frequency import (
    add_token_noise,
    diagonal_log_amplitude,
    evit_kept_patches,
    relative_log_amplitude,
    restore_patch_grid,
    token_set_similarity,
)
from freqtr_hf.images import ImageReadError
from freqtr_hf.analysis.patterns import (
    assignment_nmi,
    compare_maps,
    departure_depth,
    linear_cka,
    owns_token,
    rank_correlations,
    set_iou,
)
from freqtr_hf.models.freqvit.token_state import TokenProvenance, TokenState

from conftest import held_by_another_process, write_images, write_tiny_vit


# ---------------------------------------------------------------------------------------------------------------
# Pattern metrics ("Which Tokens to Use?")


def test_identical_patterns_give_iou_one_and_nmi_one():
    kept = torch.rand(3, 64) > 0.5
    assert torch.equal(set_iou(kept, kept), torch.ones(3))
    assignment = np.random.default_rng(0).integers(0, 10, size=(3, 64))
    assert np.allclose(assignment_nmi(assignment, assignment), 1.0)
    # the same clustering under other token indices is the same pattern
    assert np.allclose(assignment_nmi(assignment, (assignment + 7) * 3), 1.0)


def test_set_iou_known_values():
    first = torch.tensor([[1, 1, 0, 0], [1, 0, 0, 0], [0, 0, 0, 0]], dtype=torch.bool)
    second = torch.tensor([[0, 0, 1, 1], [1, 1, 0, 0], [0, 0, 0, 0]], dtype=torch.bool)
    assert set_iou(first, second).tolist() == [0.0, 0.5, 1.0]  # disjoint, 1 of 2, two empty sets


def test_a_shuffled_assignment_gives_nmi_near_zero():
    rng = np.random.default_rng(0)
    assignment = rng.integers(0, 4, size=(2, 2000))
    assert assignment_nmi(assignment, rng.permuted(assignment, axis=1)).max() < 0.01


def test_linear_cka_is_one_with_itself_and_invariant_to_rotation_and_scale():
    rng = np.random.default_rng(0)
    features = rng.normal(size=(200, 16))
    rotation, _ = np.linalg.qr(rng.normal(size=(16, 16)))
    assert linear_cka(features, features) == pytest.approx(1.0)
    assert linear_cka(features, 3.0 * features @ rotation) == pytest.approx(1.0)
    assert linear_cka(features, rng.normal(size=(200, 16))) < 0.2  # unrelated features
    with pytest.raises(ValueError, match="same N"):
        linear_cka(features, features[:10])


def test_compare_maps_known_values():
    depth = np.arange(1.0, 17.0).reshape(4, 4)
    same = compare_maps(depth, depth)
    assert same["pearson"] == pytest.approx(1.0) and same["spearman"] == pytest.approx(1.0)
    assert same["js_divergence"] == pytest.approx(0.0, abs=1e-12)
    assert same["histogram_intersection"] == pytest.approx(1.0)
    reversed_map = compare_maps(depth, depth[::-1, ::-1])
    assert reversed_map["pearson"] == pytest.approx(-1.0) and reversed_map["spearman"] == pytest.approx(-1.0)
    # two maps with disjoint mass: maximal divergence (1 in base 2), no intersection
    left, right = np.zeros((2, 2)), np.zeros((2, 2))
    left[0, 0], right[1, 1] = 1.0, 1.0
    disjoint = compare_maps(left, right)
    assert disjoint["js_divergence"] == pytest.approx(1.0) and disjoint["histogram_intersection"] == 0.0
    assert compare_maps(np.ones((2, 2)), depth[:2, :2])["pearson"] is None  # constant map: no correlation
    with pytest.raises(ValueError, match="non-negative"):
        compare_maps(-depth, depth)


def test_rank_correlations_of_monotone_and_reversed_pairs():
    x = [0.1, 0.4, 0.2, 0.9, 0.5]
    up = rank_correlations(x, [v**3 for v in x])
    assert up["spearman"] == pytest.approx(1.0) and up["kendall"] == pytest.approx(1.0) and up["n"] == 5
    down = rank_correlations(x, [-v for v in x])
    assert down["spearman"] == pytest.approx(-1.0) and down["kendall"] == pytest.approx(-1.0)
    assert rank_correlations([1.0, 2.0], [2.0, 1.0])["spearman"] is None  # too few pairs


def test_departure_depth_on_a_hand_made_provenance():
    # 4 patches. After block 3: patch 0 kept (token 1), patch 1 dropped, patches 2 and 3 merged into token 2.
    # After block 6: patch 0 dropped. A merging stage with a singleton cluster keeps that patch.
    first = TokenProvenance(3, torch.tensor([[1, -1, 2, 2]]), num_kept=1, kept=torch.tensor([[1, 0, 0, 0]]).bool())
    second = TokenProvenance(6, torch.tensor([[-1, -1, 1, 1]]), num_kept=0, kept=torch.zeros(1, 4, dtype=torch.bool))
    assert departure_depth((first, second), 12, 4).tolist() == [[7.0, 4.0, 4.0, 4.0]]
    merging = TokenProvenance(3, torch.tensor([[1, 2, 2, 3]]), num_kept=0, kept=torch.zeros(1, 4, dtype=torch.bool))
    assert owns_token(merging.patch_to_token).tolist() == [[True, False, False, True]]
    assert departure_depth((merging,), 12, 4).tolist() == [[12.0, 4.0, 4.0, 12.0]]


# ---------------------------------------------------------------------------------------------------------------
# Frequency analyses (method.md §8)


def test_a_constant_token_grid_has_no_high_frequency_amplitude():
    constant = torch.full((2, 64, 8), 3.0)
    curve = relative_log_amplitude(diagonal_log_amplitude(constant, (8, 8)).mean(0))
    assert curve.shape == (5,) and curve[0] == 0
    assert curve[1:].max() < math.log(1e-6)  # every non-zero frequency is at the numerical floor
    # a checkerboard is pure frequency π: its amplitude there exceeds the zero-frequency one by far
    rows, cols = torch.meshgrid(torch.arange(8), torch.arange(8), indexing="ij")
    checkerboard = ((rows + cols) % 2 * 2 - 1).float().reshape(1, 64, 1).expand(2, 64, 8)
    curve = relative_log_amplitude(diagonal_log_amplitude(checkerboard + 0.1, (8, 8)).mean(0))
    assert curve[-1] > math.log(5)


def test_restore_patch_grid_follows_the_provenance():
    tokens = torch.tensor([[[0.0], [10.0], [20.0]]])  # CLS, one kept patch, one merged token
    restored = restore_patch_grid(tokens, torch.tensor([[1, 2, -1, 2]]))
    # a dropped patch takes the mean over the carried patches: (10 + 20 + 20) / 3
    assert restored[0, :, 0].tolist() == pytest.approx([10.0, 20.0, 50.0 / 3, 20.0])


def test_token_set_similarity_known_values():
    # candidates (2, 0), (0, 2), (1, 1), (1, 1): mean (1, 1); the first two kept, the others averaged into a DC token
    hidden = torch.tensor([[[5.0, -5.0], [2.0, 0.0], [0.0, 2.0], [1.0, 1.0], [1.0, 1.0]]])
    tokens = TokenState.initial(1, (2, 2), None, track_provenance=False)
    reduced_tokens = replace(tokens, patch_ids=torch.tensor([[0, 1]]), merged_sizes=torch.tensor([[2.0]]))
    reduced = torch.cat([hidden[:, :3], hidden[:, 3:].mean(1, keepdim=True)], dim=1)
    high, low, dc = token_set_similarity(hidden, tokens, reduced, reduced_tokens)[0].tolist()
    assert high == pytest.approx(1 / math.sqrt(2)) and low == pytest.approx(1.0) and dc == pytest.approx(1.0)
    # a second, empty DC token (a window nobody chose, as with the nearest merge) does not count
    with_empty = torch.cat([reduced, torch.tensor([[[-1.0, -1.0]]])], dim=1)
    empty_tokens = replace(reduced_tokens, merged_sizes=torch.tensor([[2.0, 0.0]]))
    assert token_set_similarity(hidden, tokens, with_empty, empty_tokens)[0, 2].item() == pytest.approx(1.0)


def test_evit_kept_patches_are_the_top_cls_attention_candidates():
    # 4 patches; the first stage kept patches 1 and 3 (tokens 1, 2) and merged 0 and 2 into a DC token (3)
    previous = TokenProvenance(0, torch.tensor([[3, 1, 3, 2]]), num_kept=2, kept=torch.tensor([[0, 1, 0, 1]]).bool())
    stage = TokenProvenance(1, torch.tensor([[2, 1, 2, 2]]), num_kept=1, kept=torch.tensor([[0, 1, 0, 0]]).bool())
    probs = torch.zeros(1, 2, 4, 4)
    probs[:, :, 0] = torch.tensor([0.1, 0.2, 0.3, 0.4])  # the DC token (3) gets most: it is no candidate
    assert evit_kept_patches(probs, previous, stage).tolist() == [[False, False, False, True]]
    # patch 0 joined kept token 2 (the nearest-token merge): it rides along, but it is not a candidate of its own
    previous = TokenProvenance(0, torch.tensor([[2, 1, 3, 2]]), num_kept=2, kept=torch.tensor([[0, 1, 0, 1]]).bool())
    assert evit_kept_patches(probs, previous, stage).tolist() == [[False, False, False, True]]
    # first stage: every patch is a candidate, token 1 + p
    first = TokenProvenance(0, torch.tensor([[1, -1, 2, -1]]), num_kept=2, kept=torch.tensor([[1, 0, 1, 0]]).bool())
    probs = torch.zeros(1, 1, 5, 5)
    probs[:, :, 0] = torch.tensor([0.0, 0.1, 0.4, 0.2, 0.3])
    assert evit_kept_patches(probs, None, first).tolist() == [[False, True, False, True]]


def test_token_noise_hits_the_chosen_set_only():
    hidden = torch.randn(2, 9, 4)
    probs = torch.zeros(2, 1, 9, 9)
    probs[..., 1:] = torch.arange(1.0, 9.0)  # every query attends most to the last patches: they are HF
    probs = probs / probs.sum(-1, keepdim=True)
    for which, expected in (("hf", [6, 7]), ("lf", [0, 1])):
        noisy = add_token_noise(hidden, probs, which, 0.25, 1.0, torch.Generator().manual_seed(0))
        changed = (noisy != hidden).any(-1)
        assert not changed[:, 0].any()  # CLS untouched
        assert [torch.nonzero(row[1:]).flatten().tolist() for row in changed] == [expected, expected]
    random = add_token_noise(hidden, probs, "random", 0.25, 1.0, torch.Generator().manual_seed(0))
    assert ((random != hidden).any(-1).sum(1) == 2).all()
    with pytest.raises(ValueError, match="noise set"):
        add_token_noise(hidden, probs, "mid", 0.25, 1.0, torch.Generator())


def test_every_noise_set_gets_the_same_draws_call_after_call():
    hidden = torch.randn(2, 17, 4)
    probs = torch.softmax(torch.randn(2, 1, 17, 17), dim=-1)
    added = {}
    for which in ("hf", "lf", "random"):
        generator = torch.Generator().manual_seed(0)
        # two calls, as after two noised blocks: the second must draw the same in every set too
        deltas = [add_token_noise(hidden, probs, which, 0.25, 1.0, generator) - hidden for _ in range(2)]
        added[which] = [delta[delta != 0].sort().values for delta in deltas]
    for which in ("lf", "random"):
        for first, second in zip(added["hf"], added[which]):
            torch.testing.assert_close(first, second, atol=1e-5, rtol=0)  # sums rounded alike up to 1 ulp


# ---------------------------------------------------------------------------------------------------------------
# `run_analysis` end to end on a tiny checkpoint


@pytest.fixture(scope="module")
def tiny_setup(tmp_path_factory):
    """A tiny random ViT checkpoint with an image processor, and two folders of 2 classes of random images."""
    root = tmp_path_factory.mktemp("analysis")
    write_tiny_vit(root / "model")
    write_images(root / "first", ["class 0", "class 1"], 5)
    write_images(root / "second", ["class 0", "class 1"], 3, seed=1)
    return root


def _cache_times(output) -> dict:
    return {str(p.relative_to(output)): p.stat().st_mtime_ns for p in (output / "cache").rglob("*.npz")}


@pytest.mark.slow
def test_analyze_end_to_end_writes_report_figures_and_reuses_its_caches(tiny_setup, tmp_path):
    output = tmp_path / "out"
    methods, rates = list(TRAINING_FREE_METHODS), [0.5, 0.7]
    data = [str(tiny_setup / "first"), str(tiny_setup / "second")]
    report = run_analysis(str(tiny_setup / "model"), data, methods, rates, str(output), batch_size=4)

    written = json.loads((output / "report.json").read_text())
    for key in ("accuracy", "log_amplitude", "dc_similarity", "last_layer_similarity", "noise_test", "evit_hf_iou",
                "depth_maps", "pattern_similarity", "cka", "correlations", "findings"):
        assert key in written
    assert list(written["accuracy"]) == ["first", "second"]
    accuracy = written["accuracy"]["first"]
    assert set(accuracy) == {"none", *(f"{m}@{r:g}" for m in methods for r in rates)}
    assert accuracy["none"]["agreement"] == 1.0 and accuracy["none"]["top1"] is not None  # labels by class name
    assert accuracy["freq@0.5"]["gmacs"] < accuracy["freq@0.7"]["gmacs"] < accuracy["none"]["gmacs"]
    amplitude = written["log_amplitude"]["first"]["topk@0.5"]
    assert len(amplitude["at_pi"]) == 4 and len(amplitude["curves"][0]) == 5  # 4 blocks; 8x8 grid: 0 ... π
    assert written["log_amplitude"]["first"]["frequencies"][-1] == pytest.approx(math.pi)
    overlap = written["evit_hf_iou"]["second"]["0.7"]
    assert overlap["layers"] == [1, 2] and all(0 <= v <= 1 for v in overlap["iou"])
    assert set(written["noise_test"]["first"]) == {"clean", "hf", "lf", "random"}
    depth = np.array(written["depth_maps"]["first"]["topk@0.5"])
    assert depth.shape == (8, 8) and depth.min() >= 2 and depth.max() <= 4  # leaves after block 1 or 2, or stays
    iou = written["pattern_similarity"]["iou"]["first"]
    assert "tome@0.5" not in iou["labels"] and np.allclose(np.diagonal(iou["matrix"][-1]), 1.0)
    nmi = written["pattern_similarity"]["nmi"]["first"]
    assert nmi["labels"] == ["tome@0.5", "tome@0.7", "kmedoids@0.5", "kmedoids@0.7"]
    assert np.allclose(np.diagonal(written["cka"]["first"]["matrix"]), 1.0)
    assert {"points", "measures"} <= set(written["correlations"]["topk"])
    assert all(item["holds"] in (True, False, None) for item in written["findings"])
    assert written == json.loads(json.dumps(report))

    markdown = (output / "report.md").read_text()
    figures = sorted(p.name for p in output.glob("*.png"))
    assert {"accuracy_gmacs.png", "log_amplitude.png", "depth_maps.png", "evit_hf_iou.png", "noise_test.png",
            "similarity_first.png"} <= set(figures)
    assert all(f"]({name})" in markdown for name in figures) and "## Findings" in markdown

    # a re-run recomputes nothing; a changed input (another every) recomputes that data set only
    before = _cache_times(output)
    again = run_analysis(str(tiny_setup / "model"), data, methods, rates, str(output), batch_size=4)
    assert _cache_times(output) == before and again["accuracy"] == report["accuracy"]
    run_analysis(str(tiny_setup / "model"), data, methods, rates, str(output), every=[1, 2], batch_size=4)
    after = _cache_times(output)
    changed = {name for name in after if after[name] != before[name]}
    assert changed == {name for name in before if name.startswith("cache/second/")} and len(changed) == len(before) // 2


@pytest.mark.slow
def test_an_interrupted_analysis_resumes_where_it_stopped(tiny_setup, tmp_path):
    data = tmp_path / "data"
    shutil.copytree(tiny_setup / "first", data)
    last = sorted(data.rglob("*.png"))[-1]
    good = last.read_bytes()
    last.write_bytes(b"\0" * len(good))  # unreadable, the same size: the same data fingerprint once repaired
    arguments = dict(model=str(tiny_setup / "model"), data=[str(data)], methods=["freq", "topk", "tome"],
                     keep_rates=[0.5], batch_size=4)
    options = AnalysisOptions(checkpoint_seconds=0)  # checkpoint after every batch
    with pytest.raises(ImageReadError, match=last.name):
        run_analysis(output=str(tmp_path / "resumed"), options=options, **arguments)
    meta = json.loads((tmp_path / "resumed" / "cache" / "data" / "freq@0.5.json").read_text())
    assert meta["done"] == 8 and not meta["complete"]  # two batches of 4 of the 10 images

    last.write_bytes(good)
    resumed = run_analysis(output=str(tmp_path / "resumed"), options=options, **arguments)
    fresh = run_analysis(output=str(tmp_path / "fresh"), **arguments)
    for key in ("accuracy", "log_amplitude", "noise_test", "evit_hf_iou", "dc_similarity", "depth_maps", "cka"):
        assert json.dumps(resumed[key]) == json.dumps(fresh[key])


@pytest.mark.slow
def test_a_damaged_cache_is_named_and_computed_again(tiny_setup, tmp_path, capsys):
    arguments = dict(model=str(tiny_setup / "model"), data=[str(tiny_setup / "first")], methods=["topk"],
                     keep_rates=[0.5], batch_size=4)
    first = run_analysis(output=str(tmp_path / "out"), **arguments)
    meta = tmp_path / "out" / "cache" / "first" / "topk@0.5.json"
    meta.write_text('{"fingerprint": ')  # cut short
    capsys.readouterr()
    again = run_analysis(output=str(tmp_path / "out"), **arguments)
    assert f"recomputing topk@0.5: {meta} or topk@0.5.npz is damaged" in capsys.readouterr().out
    assert json.dumps(again["accuracy"]) == json.dumps(first["accuracy"])


@pytest.mark.slow
def test_an_output_folder_in_use_by_another_run_is_refused(tiny_setup, tmp_path):
    arguments = dict(model=str(tiny_setup / "model"), data=[str(tiny_setup / "first")], methods=["topk"],
                     keep_rates=[0.5], output=str(tmp_path / "out"), batch_size=4)
    with held_by_another_process(tmp_path / "out"), pytest.raises(RunInUseError, match="--output: .*in use"):
        run_analysis(**arguments)
    assert not (tmp_path / "out").exists()  # refused before any work
    assert run_analysis(**arguments)["accuracy"]  # the holder died: the folder is free


def test_a_path_that_takes_no_lock_file_is_refused(tmp_path):
    (tmp_path / "a file").write_text("")
    with pytest.raises(OutputRefused, match="--output: cannot create the lock"):
        with exclusive_use(tmp_path / "a file" / "out", "--output"):
            pass


def test_bad_arguments_name_the_flag(tiny_setup, tmp_path):
    arguments = dict(model=str(tiny_setup / "model"), data=[str(tiny_setup / "first")], output=str(tmp_path))
    with pytest.raises(ValueError, match="--methods"):
        run_analysis(methods=["fastest"], keep_rates=[0.5], **arguments)
    with pytest.raises(ValueError, match="--output: .* is a file"):  # before any model runs
        run_analysis(methods=["topk"], keep_rates=[0.5],
                     **{**arguments, "output": str(tiny_setup / "model" / "config.json")})
    with pytest.raises(ValueError, match="--keep-rates"):
        run_analysis(methods=["topk"], keep_rates=[1.0], **arguments)
    with pytest.raises(ValueError, match="--every"):
        run_analysis(methods=["topk"], keep_rates=[0.5], every=[1, 2], **arguments)
    with pytest.raises(ValueError, match="device"):
        run_analysis(methods=["topk"], keep_rates=[0.5], device="tpu", **arguments)
