"""Early stopping (spec 2.9): improvement iff value > best + min_delta, stop after `patience` misses, resumable."""

from __future__ import annotations

import pytest

from rfdetr.util.early_stopping import EarlyStopping, select_metric


def test_stops_after_patience_epochs_without_improvement() -> None:
    stopper = EarlyStopping(patience=3, min_delta=0.01)
    decisions = [stopper.update(ap, epoch) for epoch, ap in enumerate([0.10, 0.20, 0.205, 0.15, 0.209])]
    assert decisions == [False, False, False, False, True]  # 0.205 and 0.209 are within min_delta of 0.20
    assert (stopper.best, stopper.best_epoch, stopper.counter) == (0.20, 1, 3)
    assert stopper.should_stop


def test_improvement_resets_the_counter() -> None:
    stopper = EarlyStopping(patience=2, min_delta=0.0)
    assert [stopper.update(ap) for ap in (0.3, 0.3, 0.31, 0.2, 0.31)] == [False, False, False, False, True]


def test_best_starts_at_zero() -> None:
    stopper = EarlyStopping(patience=1, min_delta=0.001)
    assert stopper.update(0.0005)  # not above 0 + min_delta: counts as a miss, as upstream
    with pytest.raises(ValueError):
        EarlyStopping(patience=0)


def test_state_round_trip() -> None:
    stopper = EarlyStopping(patience=3)
    for ap in (0.4, 0.39, 0.38):
        stopper.update(ap)
    resumed = EarlyStopping(patience=3)
    resumed.load_state_dict(stopper.state_dict())
    assert resumed.state_dict() == stopper.state_dict() == {"best": 0.4, "best_epoch": None, "counter": 2,
                                                            "last_epoch": None}
    assert resumed.update(0.37)  # the third miss in a row, across the resume


def test_patience_counts_epochs_when_evaluations_are_sparse() -> None:
    """--eval_interval 3: a miss adds the epochs since the previous evaluation, so patience stays in epochs."""
    stopper = EarlyStopping(patience=5, min_delta=0.0)
    assert not stopper.update(0.3, 2)  # epochs 0-2: improves
    assert not stopper.update(0.3, 5) and stopper.counter == 3
    resumed = EarlyStopping(patience=5, min_delta=0.0)
    resumed.load_state_dict(stopper.state_dict())  # a resume between evaluations keeps the epoch count
    assert resumed.update(0.2, 8) and resumed.counter == 6
    first = EarlyStopping(patience=5, min_delta=0.0)
    assert first.update(0.0, 4) and first.counter == 5  # the first evaluation covers epochs 0-4


def test_state_without_last_epoch_counts_one_per_update() -> None:
    """A checkpoint written before evaluations could be skipped (every epoch evaluated) resumes as it did."""
    stopper = EarlyStopping(patience=3, min_delta=0.0)
    stopper.load_state_dict({"best": 0.4, "best_epoch": 3, "counter": 1})
    assert not stopper.update(0.3, 9) and stopper.counter == 2
    assert stopper.update(0.3, 12) and stopper.counter == 5


def test_select_metric() -> None:
    assert select_metric(0.3, 0.35) == 0.35  # best of raw and EMA by default
    assert select_metric(0.4, 0.35) == 0.4
    assert select_metric(0.4, 0.35, use_ema=True) == 0.35
    assert select_metric(0.4, None, use_ema=True) == 0.4  # whichever exists
    assert select_metric(None, 0.2) == 0.2
    with pytest.raises(ValueError):
        select_metric(None, None)
