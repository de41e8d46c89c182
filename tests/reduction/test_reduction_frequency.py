import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from freqtr_hf.models.freqvit.reduction_frequency import (
    given_up_indices,
    given_up_tokens,
    grid_window_members,
    high_frequency_scores,
    merge_into_dc_tokens,
    received_attention,
    split_by_score,
    transfer_members,
    window_index,
    window_members,
    window_transfer,
)
from freqtr_hf.models.freqvit.token_state import group_means, group_sums


@settings(max_examples=60, deadline=None)
@given(batch=st.integers(0, 3), length=st.integers(0, 6), num_groups=st.integers(1, 4),
       trailing=st.lists(st.integers(1, 3), max_size=2), seed=st.integers(0, 2**16))
def test_group_sums_and_means_are_those_of_a_loop(batch, length, num_groups, trailing, seed):
    """Every shape the reducers use and the empty ones (no token, no image), one group (its own code path) and many."""
    generator = torch.Generator().manual_seed(seed)
    values = torch.randn(batch, length, *trailing, generator=generator)
    groups = torch.randint(num_groups, (batch, length), generator=generator)
    expected = torch.zeros(batch, num_groups, *trailing)
    for b in range(batch):
        for t in range(length):
            expected[b, groups[b, t]] += values[b, t]
    torch.testing.assert_close(group_sums(values, groups, num_groups), expected)
    tokens, weights = torch.randn(batch, length, 3, generator=generator), torch.rand(batch, length, generator=generator)
    means, totals = group_means(tokens.bfloat16(), groups, weights, num_groups)
    expected_totals = group_sums(weights, groups, num_groups)
    expected_means = group_sums(tokens * weights[..., None], groups, num_groups) / expected_totals.clamp_min(1e-12)[..., None]
    assert means.dtype == totals.dtype == torch.float32  # summed in fp32 whatever the tokens' dtype
    torch.testing.assert_close(totals, expected_totals)
    torch.testing.assert_close(means, expected_means, atol=2e-2, rtol=2e-2)  # the tokens were rounded to bf16


def test_scores_are_high_pass_column_means():
    attention = torch.rand(2, 3, 5, 5).softmax(-1)
    high_pass = attention - 1.0 / 5  # A_HP = A - 11ᵀ/n
    expected = high_pass.mean(dim=2).mean(dim=1)
    torch.testing.assert_close(high_frequency_scores(attention), expected)
    # ranks like the mean attention a token receives from all queries
    received = attention.mean(dim=(1, 2))
    assert torch.equal(high_frequency_scores(attention).argsort(), received.argsort())


def test_split_keeps_the_best_and_marks_the_rest_given_up():
    scores = torch.tensor([[0.1, 0.9, 0.5, 0.7, 0.2]])
    keep = split_by_score(scores, 3)
    assert sorted(keep.tolist()[0]) == [1, 2, 3]
    given_up = given_up_tokens(keep, scores)
    assert given_up.tolist() == [[1.0, 0.0, 0.0, 0.0, 1.0]] and given_up.dtype == scores.dtype
    assert given_up_indices(given_up, 2).tolist() == [[0, 4]]


def test_received_attention_ranks_as_the_score():
    attention = torch.rand(2, 3, 7, 7).softmax(-1)
    torch.testing.assert_close(received_attention(attention) - 1 / 7, high_frequency_scores(attention))


def test_window_index_formula_on_uneven_grids():
    grid = (5, 7)
    windows = window_index(grid, 2).view(5, 7)
    for r in range(5):
        for c in range(7):
            assert windows[r, c] == (r * 2 // 5) * 2 + (c * 2 // 7)
    assert window_index((14, 14), 1).unique().tolist() == [0]


def test_window_transfer_follows_window_centres():
    assert window_transfer((14, 14), 2, 1).tolist() == [0, 0, 0, 0]
    # a 4x4 window grid folds into 2x2: each quadrant of old windows goes to its quadrant
    assert window_transfer((8, 8), 4, 2).view(4, 4).tolist() == [[0, 0, 1, 1], [0, 0, 1, 1], [2, 2, 3, 3], [2, 2, 3, 3]]


def window_means_by_loop(tokens, windows, weights, num_windows, fill_global_mean):
    """The DC tokens by their definition, one window at a time."""
    means = torch.zeros(tokens.shape[0], num_windows, tokens.shape[2])
    for b in range(tokens.shape[0]):
        total = weights[b].sum()
        overall = (weights[b, :, None] * tokens[b]).sum(0) / total if total > 0 else torch.zeros(tokens.shape[2])
        for w in range(num_windows):
            share = weights[b] * (windows[b] == w)
            if share.sum() > 0:
                means[b, w] = (share[:, None] * tokens[b]).sum(0) / share.sum()
            elif fill_global_mean:
                means[b, w] = overall
    return means


@settings(max_examples=60, deadline=None)
@given(batch=st.integers(1, 3), length=st.integers(1, 12), num_windows=st.integers(1, 5), count_weighted=st.booleans(),
       fill_global_mean=st.booleans(), seed=st.integers(0, 2**16))
def test_dc_tokens_are_weighted_window_means(batch, length, num_windows, count_weighted, fill_global_mean, seed):
    """Any windows, sizes (0 leaves a token out), empty windows: the one matmul gives each window's mean."""
    generator = torch.Generator().manual_seed(seed)
    tokens = torch.randn(batch, length, 3, generator=generator)
    windows = torch.randint(num_windows, (batch, length), generator=generator)
    sizes = torch.randint(0, 4, (batch, length), generator=generator).float()
    members = window_members(windows, num_windows) if num_windows > 1 else None
    if members is None:
        windows = torch.zeros_like(windows)
    dc, dc_sizes = merge_into_dc_tokens(tokens, members, sizes, count_weighted, fill_global_mean)
    weights = sizes if count_weighted else (sizes > 0).float()
    torch.testing.assert_close(dc, window_means_by_loop(tokens, windows, weights, num_windows, fill_global_mean))
    expected_sizes = torch.stack([(sizes * (windows == w)).sum(1) for w in range(num_windows)], 1)
    torch.testing.assert_close(dc_sizes, expected_sizes)


def test_window_members_are_the_window_index():
    members = grid_window_members((5, 7), 2)
    assert members.shape == (4, 35) and torch.equal(members.long().argmax(0), window_index((5, 7), 2))
    assert torch.equal(transfer_members((8, 8), 4, 2).long().argmax(0), window_transfer((8, 8), 4, 2))


def test_dc_tokens_are_count_weighted_running_means():
    # three low-frequency patches, windows 0, 0, 1; the kept token (size 0) is left out
    tokens = torch.tensor([[[1.0], [3.0], [10.0], [50.0]]])
    members = window_members(torch.tensor([[0, 0, 1, 0]]), 2)
    dc, sizes = merge_into_dc_tokens(tokens, members, torch.tensor([[1.0, 1.0, 1.0, 0.0]]))
    assert dc.flatten().tolist() == [2.0, 10.0]
    assert sizes.tolist() == [[2.0, 1.0]]
    # the next stage folds both DC tokens and one new low-frequency patch into one window
    folded, folded_sizes = merge_into_dc_tokens(torch.cat([torch.tensor([[[4.0]]]), dc], 1), None,
                                                torch.cat([torch.ones(1, 1), sizes], 1))
    # count-weighted: (2·2 + 1·10 + 4) / 4 = the plain mean of every patch folded in so far
    assert folded.item() == pytest.approx((1 + 3 + 10 + 4) / 4) and folded_sizes.item() == 4
    token_mean, _ = merge_into_dc_tokens(torch.cat([torch.tensor([[[4.0]]]), dc], 1), None,
                                         torch.cat([torch.ones(1, 1), sizes], 1), count_weighted=False)
    assert token_mean.item() == pytest.approx((2 + 10 + 4) / 3)
    # an empty window's DC token (no patch, only the filler) is no token to fold, whatever its filler
    with_empty = torch.cat([torch.tensor([[[4.0]]]), dc, torch.tensor([[[100.0]]])], 1)
    token_mean, token_sizes = merge_into_dc_tokens(
        with_empty, None, torch.tensor([[1.0, 2.0, 1.0, 0.0]]), count_weighted=False
    )
    assert token_mean.item() == pytest.approx((2 + 10 + 4) / 3) and token_sizes.item() == 4


def test_empty_window_gets_the_global_mean_or_zeros():
    tokens = torch.tensor([[[2.0], [4.0]]])
    members = window_members(torch.tensor([[0, 0]]), 4)
    dc, sizes = merge_into_dc_tokens(tokens, members, torch.ones(1, 2))
    assert dc.flatten().tolist() == [3.0, 3.0, 3.0, 3.0]
    assert sizes.tolist() == [[2.0, 0.0, 0.0, 0.0]]
    zeros, _ = merge_into_dc_tokens(tokens, members, torch.ones(1, 2), fill_global_mean=False)
    assert zeros.flatten().tolist() == [3.0, 0.0, 0.0, 0.0]


def test_dc_merge_keeps_bf16():
    """Half-precision tokens stay in their dtype (no fp32 copy of them); the weights are fp32 rounded to bf16 and
    the matmul accumulates in fp32, so a mean of equal tokens is that token."""
    tokens = torch.full((1, 300, 4), 1.001, dtype=torch.bfloat16)
    dc, sizes = merge_into_dc_tokens(tokens, None, torch.ones(1, 300))
    assert dc.dtype == torch.bfloat16 and sizes.dtype == torch.float32
    assert dc.float().sub(tokens[0, 0].float()).abs().max() <= 2 ** -7
