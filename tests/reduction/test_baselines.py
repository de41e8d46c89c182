"""Every reduction method in the same classes: token counts, provenance, keep rate 1.0, batch = single."""

import pytest
import torch
from transformers import AutoImageProcessor, ViTForImageClassification

from freqtr_hf import FreqViTForImageClassification
from freqtr_hf.models.freqvit.configuration_freqvit import REDUCTION_METHODS
from freqtr_hf.models.freqvit.reduction_merging import bipartite_merge_plan, merge_to_count
from freqtr_hf.models.freqvit.reduction_pruning import adaptive_sample, radial_scores, top_k_in_order
from freqtr_hf.models.freqvit.reduction_clustering import density_peak_centres, k_medoids, pairwise_distances
from freqtr_hf.models.freqvit.reduction_learned import sinkhorn_assignment
from freqtr_hf.models.freqvit.token_schedule import MERGING_METHODS, PRUNING_METHODS, sequence_lengths

from conftest import real_images, tiny_config

METHODS = [m for m in REDUCTION_METHODS if m != "none"]
LEARNED = ("dynamicvit", "dpcknn", "sit", "patchmerger", "sinkhorn")


@pytest.mark.parametrize("method", METHODS)
def test_token_counts_follow_the_schedule(method):
    config = tiny_config(reduction_method=method)
    model = FreqViTForImageClassification(config).eval()
    with torch.no_grad():
        hidden = model(torch.randn(2, 3, 64, 64), output_hidden_states=True).hidden_states
    expected = [65] + [mlp for _, mlp in sequence_lengths(method, 4, config.reduction_stages, (8, 8))]
    assert [h.shape[1] for h in hidden] == expected
    assert expected[-1] < 65


@pytest.mark.parametrize("method", METHODS)
def test_provenance_is_a_partition_of_the_patches(method):
    model = FreqViTForImageClassification(tiny_config(reduction_method=method)).eval()
    with torch.no_grad():
        output = model(torch.randn(3, 3, 64, 64), output_token_provenance=True, output_hidden_states=True)
    for stage, hidden in zip(output.token_provenance, output.hidden_states[2:]):
        kinds = stage.kept.long() + stage.merged.long() + stage.dropped.long()
        assert torch.all(kinds == 1)  # every patch is kept, merged or dropped, exactly one
        assert stage.patch_to_token.max() < hidden.shape[1]
        for kept_row, tokens in zip(stage.kept, stage.patch_to_token):
            kept_tokens = tokens[kept_row].tolist()
            assert len(kept_tokens) == len(set(kept_tokens)) <= stage.num_kept  # one patch per kept token
        if method in PRUNING_METHODS:
            assert not stage.merged.any()
        if method in MERGING_METHODS:
            assert stage.num_kept == 0 and not stage.dropped.any()
        if method in ("freq", "evit"):
            assert not stage.dropped.any()


@pytest.mark.parametrize("method", METHODS)
def test_keep_rate_one_equals_the_unreduced_model(method):
    config = tiny_config(reduction_method=method, keep_rate=1.0)
    model = FreqViTForImageClassification(config).eval()
    vit = ViTForImageClassification(tiny_config(reduction_method="none")).eval()
    vit.load_state_dict(model.state_dict(), strict=False)
    pixels = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        assert (model(pixels).logits - vit(pixels).logits).abs().max() <= 1e-5


@pytest.mark.parametrize("method", METHODS)
def test_batch_equals_single_images(method):
    model = FreqViTForImageClassification(tiny_config(reduction_method=method)).eval()
    pixels = torch.randn(4, 3, 64, 64)
    with torch.no_grad():
        batch = model(pixels).logits
        single = torch.cat([model(pixels[i : i + 1]).logits for i in range(4)])
    torch.testing.assert_close(batch, single, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("method", METHODS)
def test_bf16_runs_every_method(method):
    model = FreqViTForImageClassification(tiny_config(reduction_method=method)).to(torch.bfloat16).eval()
    with torch.no_grad():
        output = model(torch.randn(2, 3, 64, 64), output_token_provenance=True)
    assert output.logits.dtype == torch.bfloat16 and torch.isfinite(output.logits).all()


@pytest.mark.parametrize("method", LEARNED)
def test_learned_methods_create_new_parameters_and_train(method, tmp_path):
    vit = ViTForImageClassification(tiny_config(reduction_method="none"))
    vit.save_pretrained(tmp_path)
    model, info = FreqViTForImageClassification.from_pretrained(
        tmp_path, reduction_method=method, output_loading_info=True
    )
    new = [key for key in info["missing_keys"] if ".token_reducer." in key]
    if method == "dpcknn":  # its zero-initialised score gives plain cluster means: complete without training
        assert not info["missing_keys"]
        fresh = FreqViTForImageClassification(tiny_config(reduction_method=method))
        for built in (model, fresh):
            scores = [p for n, p in built.named_parameters() if ".token_score." in n]
            assert scores and all(not p.any() for p in scores)
    else:  # random-initialised parameters need training: still reported
        assert new and len(new) == len(info["missing_keys"])
    model.train()
    output = model(torch.randn(2, 3, 64, 64), labels=torch.tensor([0, 1]))
    output.loss.backward()
    reducer_grads = [p.grad for n, p in model.named_parameters() if ".token_reducer." in n]
    assert any(g is not None and g.abs().sum() > 0 for g in reducer_grads)


def test_dynamicvit_exposes_its_keep_ratio_loss_in_training():
    model = FreqViTForImageClassification(tiny_config(reduction_method="dynamicvit")).train()
    output = model(torch.randn(2, 3, 64, 64), labels=torch.tensor([0, 1]), output_hidden_states=True)
    assert output.auxiliary_loss is not None and output.auxiliary_loss > 0
    assert all(h.shape[1] == 65 for h in output.hidden_states)  # training masks attention, removes nothing
    model.eval()
    assert model(torch.randn(2, 3, 64, 64)).auxiliary_loss is None


def test_tome_per_layer_merges_r_in_every_block():
    model = FreqViTForImageClassification(tiny_config(reduction_method="tome", tome_r=8)).eval()
    hidden = model(torch.randn(1, 3, 64, 64), output_hidden_states=True).hidden_states
    assert [h.shape[1] for h in hidden] == [65, 57, 49, 41, 33]
    capped = FreqViTForImageClassification(tiny_config(reduction_method="tome", tome_r=40)).eval()
    hidden = capped(torch.randn(1, 3, 64, 64), output_hidden_states=True).hidden_states
    assert [h.shape[1] for h in hidden] == [65, 33, 17, 9, 5]  # at most ⌊(t − 1)/2⌋ merges a block
    with pytest.raises(ValueError, match="tome_r"):
        tiny_config(reduction_method="topk", tome_r=4)


def test_bipartite_matching_merges_the_most_similar_pairs():
    keys = torch.tensor([[[1.0, 0.0], [1.0, 0.01], [0.0, 1.0], [-1.0, 0.2]]])  # token 0 ~ token 1
    positions = bipartite_merge_plan(keys, 1)
    assert positions[0, 0] == positions[0, 1]  # A token 0 went into its partner, B token 1
    tokens, sizes, where = merge_to_count(keys, keys, torch.ones(1, 4), 3)
    assert sizes.sum() == 4 and tokens.shape == (1, 3, 2) and where[0, 0] == where[0, 1]


def test_adaptive_sampling_collapses_repeats():
    scores = torch.tensor([[0.0, 10.0, 0.1, 0.0, 0.1]])
    indices, valid = adaptive_sample(scores, 4, torch.ones_like(scores, dtype=torch.bool))
    kept = indices[valid].tolist()
    assert 1 in kept and len(kept) < 4 and kept == sorted(set(kept))


def test_radial_pattern_prefers_the_centre_and_breaks_ties_by_patch_index():
    order = radial_scores((4, 4), "l2").argsort(descending=True)[:4]
    assert sorted(order.tolist()) == [5, 6, 9, 10]
    assert radial_scores((4, 4), "linf").argsort(descending=True)[:4].sort().values.tolist() == [5, 6, 9, 10]
    # 6 x 6: four patches at distance 0.71, then eight at 1.58, of which the first four by index
    scores = radial_scores((6, 6), "l2")
    assert len(set(scores.tolist())) == 36
    assert top_k_in_order(scores[None], 8).tolist() == [[8, 9, 13, 14, 15, 16, 20, 21]]


def test_clustering_assigns_every_token_to_a_cluster_of_its_own_group():
    groups = torch.cat([torch.randn(5, 3) * 0.01, torch.randn(5, 3) * 0.01 + 5])[None]
    distances = pairwise_distances(groups)
    _, assignment = k_medoids(distances, torch.tensor([[0, 1]]), iterations=3)
    assert len(set(assignment[0, :5].tolist())) == 1 and set(assignment[0, :5]) != set(assignment[0, 5:])
    _, dpc_assignment = density_peak_centres(distances, 2, neighbours=3)
    assert len(set(dpc_assignment[0, :5].tolist())) == 1 and len(set(dpc_assignment[0, 5:].tolist())) == 1


def test_k_medoids_assigns_every_token_to_its_nearest_returned_medoid():
    distances = pairwise_distances(torch.randn(4, 196, 16, generator=torch.Generator().manual_seed(0)))
    medoids, assignment = k_medoids(distances, torch.arange(0, 196, 14).expand(4, -1), iterations=1)
    to_medoids = distances.gather(2, medoids[:, None, :].expand(-1, 196, -1))
    chosen = to_medoids.gather(2, assignment[..., None]).squeeze(-1)
    torch.testing.assert_close(chosen, to_medoids.amin(-1), atol=0, rtol=0)
    assert (assignment.gather(1, medoids) == torch.arange(14)).all()


def test_pairwise_distances_are_exactly_symmetric_with_a_zero_diagonal():
    # a common offset as large as the tokens' norms makes the matrix-product shortcut's rounding visible
    tokens = torch.randn(3, 196, 64, generator=torch.Generator().manual_seed(0)) + 50
    distances = pairwise_distances(tokens)
    assert torch.equal(distances, distances.transpose(1, 2))
    assert (distances.diagonal(dim1=1, dim2=2) == 0).all()
    exact = torch.cdist(tokens.double(), tokens.double(), compute_mode="donot_use_mm_for_euclid_dist")
    torch.testing.assert_close(distances.double(), exact, atol=0, rtol=2e-3)


def test_k_medoids_moves_a_medoid_only_to_a_strictly_better_member():
    # far-apart pairs, far from the origin: within a pair the two costs tie, so the medoid stays, whichever of the
    # two it started on, whatever the rounding
    generator = torch.Generator().manual_seed(0)
    centres = torch.randn(16, 8, generator=generator) * 100 + 1000
    tokens = torch.stack([centres, centres + torch.rand(16, 8, generator=generator)], dim=1).reshape(1, 32, 8)
    initial = torch.arange(0, 32, 2)[None] + torch.randint(0, 2, (1, 16), generator=generator)
    medoids, assignment = k_medoids(pairwise_distances(tokens), initial, iterations=2)
    assert torch.equal(medoids, initial)
    assert assignment.tolist() == [[pair for pair in range(16) for _ in range(2)]]
    # a third member next to the second makes the second strictly better
    trio = torch.tensor([[[0.0], [1.0], [1.5], [100.0]]])
    medoids, _ = k_medoids(pairwise_distances(trio), torch.tensor([[0, 3]]), iterations=1)
    assert medoids.tolist() == [[1, 3]]


def test_sinkhorn_balances_the_clusters():
    weights = sinkhorn_assignment(torch.randn(1, 12, 3), iterations=20).exp()
    torch.testing.assert_close(weights.sum(1), torch.full((1, 3), 1.0), atol=1e-3, rtol=0)


def test_ats_on_real_images_keeps_varying_counts_and_batches_match(deit_tiny, imagenette_val):
    model = FreqViTForImageClassification.from_pretrained(deit_tiny, reduction_method="ats", keep_rate=0.5).eval()
    pixels = AutoImageProcessor.from_pretrained(deit_tiny)(real_images(imagenette_val, 4), return_tensors="pt")[
        "pixel_values"
    ]
    with torch.no_grad():
        output = model(pixels, output_token_provenance=True)
        single = torch.cat([model(pixels[i : i + 1]).logits for i in range(4)])
    kept = output.token_provenance[-1].kept.sum(1)
    assert kept.max() <= output.token_provenance[-1].num_kept
    assert len(set(kept.tolist())) > 1 or kept.max() < output.token_provenance[-1].num_kept  # padding was used
    torch.testing.assert_close(output.logits, single, atol=1e-4, rtol=1e-4)
