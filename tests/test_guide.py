"""Slice proposal rules (engine.guide)."""

import pytest
import torch

from engine import errors as E
from engine.guide import RULES, cell_centres, distance_to_annotated, even_slices, propose, residual_scores


def test_even_slices_include_both_ends():
    assert even_slices(10, 30, 3) == [10, 20, 30]
    assert even_slices(10, 30, 1) == [20]
    assert even_slices(4, 5, 4) == [4, 5]  # duplicates on a tiny extent collapse


def test_distance_to_annotated():
    d = distance_to_annotated(7, [1, 5])
    assert d.tolist() == [1, 0, 1, 2, 1, 0, 1]
    assert distance_to_annotated(3, []).tolist() == [3, 3, 3]


def test_residual_picks_largest_scores_with_gap():
    s = torch.zeros(20)
    s[[4, 5, 12, 17]] = torch.tensor([9.0, 8.0, 7.0, 1.0])
    # 5 is within min_gap of 4, so the third pick is 17
    assert propose("residual", 3, 20, scores=s, min_gap=1) == [4, 12, 17]
    assert propose("residual", 2, 20, scores=s, min_gap=0) == [4, 5]
    # annotated slices are never proposed, the extent bounds the choice
    assert 4 not in propose("residual", 2, 20, annotated=[4], scores=s, extent=(3, 15), min_gap=0)
    assert all(3 <= z <= 15 for z in propose("residual", 4, 20, scores=s, extent=(3, 15)))


def test_min_gap_relaxes_instead_of_proposing_fewer():
    s = torch.rand(12, generator=torch.Generator().manual_seed(0)) + 0.1
    got = propose("residual", 2, 12, annotated=[3, 6, 9], extent=(3, 9), scores=s, min_gap=1)
    assert len(got) == 2 and not set(got) & {3, 6, 9} and all(3 <= z <= 9 for z in got)
    got = propose("gap", 3, 12, annotated=[3, 6, 9], extent=(3, 9), min_gap=1)
    assert len(got) == 3 and not set(got) & {3, 6, 9}
    # only when the extent is exhausted are fewer returned
    assert propose("gap", 5, 12, annotated=[3, 4, 6], extent=(3, 6), min_gap=1) == [5]


def test_gap_rule_fills_largest_gaps():
    assert propose("gap", 1, 30, annotated=[0, 10, 29], extent=(0, 29)) == [20] or propose(
        "gap", 1, 30, annotated=[0, 10, 29], extent=(0, 29)
    ) == [19]
    got = propose("gap", 2, 30, annotated=[], extent=(5, 25))
    assert len(got) == 2 and all(5 <= z <= 25 for z in got)


def test_residual_gap_prefers_far_disagreement():
    s = torch.ones(21)
    assert propose("residual_gap", 1, 21, annotated=[0, 20], scores=s) == [10]


def test_random_is_reproducible_and_in_extent():
    a = propose("random", 4, 40, extent=(10, 30), generator=torch.Generator().manual_seed(3))
    b = propose("random", 4, 40, extent=(10, 30), generator=torch.Generator().manual_seed(3))
    assert a == b and len(set(a)) == 4 and all(10 <= z <= 30 for z in a)


def test_residual_scores_match_direct_sum():
    g = torch.Generator().manual_seed(1)
    q, p = torch.rand(7, 9, 5, generator=g), torch.rand(7, 9, 5, generator=g)
    w = torch.rand(7, 9, 5, generator=g)
    torch.testing.assert_close(residual_scores(q, p), (q - p).abs().sum((1, 2)), rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(residual_scores(q, p, w), (w * (q - p).abs()).sum((1, 2)), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize(
    "call,err",
    [
        (lambda: propose("magic", 2, 10), E.InputError),
        (lambda: propose("even", 0, 10), E.InputError),
        (lambda: propose("even", 2, 10, extent=(5, 12)), E.SliceIndexError),
        (lambda: propose("even", 2, 10, annotated=[11]), E.SliceIndexError),
        (lambda: propose("residual", 2, 10), E.InputError),
        (lambda: propose("residual", 2, 10, scores=torch.ones(9)), E.InputError),
    ],
)
def test_bad_input_is_typed(call, err):
    with pytest.raises(err):
        call()


def test_every_rule_returns_ints():
    s = torch.rand(15, generator=torch.Generator().manual_seed(2))
    for rule in RULES:
        got = propose(rule, 3, 15, annotated=[0, 14], scores=s, generator=torch.Generator().manual_seed(0))
        assert all(type(z) is int for z in got) and len(got) == 3


def test_cell_centres_skip_the_extent_ends():
    assert cell_centres(0, 30, 3) == [5, 15, 25]
    got = cell_centres(10, 40, 6)
    assert got == [13, 18, 23, 27, 32, 37]
    assert got == sorted(got) and 10 < got[0] and got[-1] < 40
    assert [40 + 10 - z for z in reversed(got)] == got  # symmetric on the integer grid


def test_cells_rule_cold_start_is_half_of_a_two_round_plan():
    plan = cell_centres(0, 47, 6)
    got = propose("cells", 3, 60, extent=(0, 47))
    assert len(got) == 3 and set(got) <= set(plan)
    assert got[0] == plan[0] and got[-1] == plan[-1]  # near both ends, not on them
    assert 0 not in got and 47 not in got


def test_cells_rule_fills_the_largest_gaps_with_half_cells_at_the_ends():
    # drawn 10 and 30 in extent (0, 40): the middle gap (20) scores 10, the end
    # candidates score 2*(z - lo)+1 capped by their distance to the drawn slice
    got = propose("cells", 1, 41, annotated=[10, 30], extent=(0, 40))
    assert got == [20]
    got = propose("cells", 3, 41, annotated=[10, 30], extent=(0, 40))
    assert got == [3, 20, 37]  # the end gaps count double: 3 scores min(7, 2*3+1)


def test_cells_rule_on_a_few_thick_slices_draws_the_ends_like_even_then_gap():
    # 8 object slices, 3 then 2 picks: at most 4 slices per pick, so the ends count
    first = propose("cells", 3, 11, extent=(2, 9))
    assert first == propose("even", 3, 11, extent=(2, 9)) and {2, 9} <= set(first)
    second = propose("cells", 2, 11, annotated=first, extent=(2, 9))
    assert second == propose("gap", 2, 11, annotated=first, extent=(2, 9))
    assert not set(second) & set(first)
    # one slice more than 4 per pick: cell centres again, ends not proposed
    got = propose("cells", 2, 11, extent=(0, 8))
    assert 0 not in got and 8 not in got
