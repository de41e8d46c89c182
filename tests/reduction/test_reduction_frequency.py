import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from freqtr_hf.models.freqvit.reduction_frequency import (
    high_frequency_scores,
    merge_into_dc_tokens,
    split_by_score,
    window_index,
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


def test_split_keeps_best_in_original_order():
    scores = torch.tensor([[0.1, 0.9, 0.5, 0.7, 0.2]])
    keep, rest = split_by_score(scores, 3)
    assert keep.tolist() == [[1, 2, 3]]
    assert sorted(rest.tolist()[0]) == [0, 4]


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


def ones(*shape: int) -> torch.Tensor:
    """Token sizes of tokens that are one patch each."""
    return torch.ones(shape)


def test_dc_tokens_are_window_means_and_count_weighted_running_means():
    low = torch.tensor([[[1.0], [3.0], [10.0]]])  # windows 0, 0, 1
    dc, sizes = merge_into_dc_tokens(low, torch.tensor([[0, 0, 1]]), ones(1, 3), num_windows=2)
    assert dc.flatten().tolist() == [2.0, 10.0]
    assert sizes.tolist() == [[2.0, 1.0]]

    new_low = torch.tensor([[[4.0]]])
    folded, folded_sizes = merge_into_dc_tokens(
        new_low, torch.tensor([[0]]), ones(1, 1), 1, dc, sizes, old_dc_windows=torch.tensor([0, 0])
    )
    # count-weighted: (2·2 + 1·10 + 4) / 4 = the plain mean of every patch folded in so far
    assert folded.item() == pytest.approx((1 + 3 + 10 + 4) / 4)
    assert folded_sizes.item() == 4
    token_mean, _ = merge_into_dc_tokens(
        new_low, torch.tensor([[0]]), ones(1, 1), 1, dc, sizes, old_dc_windows=torch.tensor([0, 0]), count_weighted=False
    )
    assert token_mean.item() == pytest.approx((2 + 10 + 4) / 3)
    # an empty window's DC token (no patch, only the filler) is no token to fold, whatever its filler
    empty = torch.tensor([[[100.0]]])
    token_mean, token_sizes = merge_into_dc_tokens(
        new_low, torch.tensor([[0]]), ones(1, 1), 1, torch.cat([dc, empty], 1), torch.cat([sizes, torch.zeros(1, 1)], 1),
        old_dc_windows=torch.tensor([0, 0, 0]), count_weighted=False,
    )
    assert token_mean.item() == pytest.approx((2 + 10 + 4) / 3) and token_sizes.item() == 4
    # a new low-frequency token that stands for 3 patches (a merged one) still counts as one token
    token_mean, _ = merge_into_dc_tokens(
        new_low, torch.tensor([[0]]), torch.tensor([[3.0]]), 1, dc, sizes, old_dc_windows=torch.tensor([0, 0]),
        count_weighted=False,
    )
    assert token_mean.item() == pytest.approx((2 + 10 + 4) / 3)


def test_empty_window_gets_the_global_mean_or_zeros():
    low = torch.tensor([[[2.0], [4.0]]])
    windows = torch.tensor([[0, 0]])
    dc, sizes = merge_into_dc_tokens(low, windows, ones(1, 2), num_windows=4)
    assert dc.flatten().tolist() == [3.0, 3.0, 3.0, 3.0]
    assert sizes.tolist() == [[2.0, 0.0, 0.0, 0.0]]
    zeros, _ = merge_into_dc_tokens(low, windows, ones(1, 2), num_windows=4, fill_global_mean=False)
    assert zeros.flatten().tolist() == [3.0, 0.0, 0.0, 0.0]


def test_dc_merge_keeps_bf16_and_sums_in_fp32():
    low = torch.full((1, 300, 4), 1.001, dtype=torch.bfloat16)
    dc, _ = merge_into_dc_tokens(low, torch.zeros(1, 300, dtype=torch.long), ones(1, 300), num_windows=1)
    assert dc.dtype == torch.bfloat16
    assert dc.float().sub(low[0, 0].float()).abs().max() == 0
