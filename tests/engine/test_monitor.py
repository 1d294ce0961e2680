"""trainer.monitor: `auto` is scale-free (relative change against the first validation, signed by direction),
explicit keys keep their own scale, and a resumed run recomputes its reference from the checkpoint's history."""

import pytest

from mtlrun.engine.monitor import Monitor
from mtlrun.tasks import Classification, Regression


def _tasks():
    return {"digit": Classification(num_classes=10), "sum": Regression(dim=1)}


def test_auto_is_the_mean_relative_change_against_the_first_validation():
    monitor = Monitor("auto", "auto", _tasks(), 0.0, None)
    first = {"digit/accuracy": 0.80, "sum/mae": 8.5}
    assert monitor.value(first) == 0.0
    # accuracy +5% of 0.80, MAE -10% of 8.5 (lower is better: +10%)
    assert monitor.value({"digit/accuracy": 0.84, "sum/mae": 7.65}) == pytest.approx((0.05 + 0.10) / 2)


def test_auto_does_not_let_the_large_scale_metric_decide():
    monitor = Monitor("auto", "auto", _tasks(), 0.0, None)
    monitor.value({"digit/accuracy": 0.90, "sum/mae": 8.5})
    # the MAE improves by 0.3 (3.5%), the accuracy falls by 0.2 (22%): worse overall. The plain mean of the
    # signed metrics (the old `auto`) would have called this an improvement: (0.70 - 8.2) > (0.90 - 8.5)
    worse = monitor.value({"digit/accuracy": 0.70, "sum/mae": 8.2})
    assert worse == pytest.approx((-0.2 / 0.9 + 0.3 / 8.5) / 2) and worse < 0
    assert (0.70 - 8.2) > (0.90 - 8.5)


def test_auxiliary_tasks_are_left_out_and_explicit_keys_keep_their_scale():
    tasks = _tasks()
    tasks["sum"].auxiliary = True
    monitor = Monitor("auto", "auto", tasks, 0.0, None)
    monitor.value({"digit/accuracy": 0.5, "sum/mae": 3.0})
    assert monitor.value({"digit/accuracy": 0.6, "sum/mae": 100.0}) == pytest.approx(0.2)
    assert Monitor("val/sum/mae", "auto", tasks, 0.0, None).value({"sum/mae": 3.0}) == -3.0
    assert Monitor("val/sum/mae", "max", tasks, 0.0, None).value({"sum/mae": 3.0}) == 3.0


def test_describe_says_what_auto_averages():
    text = Monitor("auto", "auto", _tasks(), 0.0, None).describe()
    assert "digit/accuracy ↑" in text and "sum/mae ↓" in text and "relative change" in text
    assert Monitor("val/sum/mae", "auto", _tasks(), 0.0, None).describe() == \
        "monitor: val/sum/mae (lower is better)"


def test_resume_recomputes_reference_and_best_value_from_the_history():
    history = [{"epoch": 1, "split": "train"}, {"epoch": 1, "split": "val", "digit/accuracy": 0.5, "sum/mae": 4.0},
               {"epoch": 2, "split": "val", "digit/accuracy": 0.6, "sum/mae": 3.0}]
    # best_value as an older mtlrun wrote it (the plain signed mean): replaced by the scale-free value
    state = {"best_value": -1.2, "best_epoch": 2, "epochs_since_best": 0, "history": history}
    monitor = Monitor("auto", "auto", _tasks(), 0.0, None)
    monitor.load_state_dict(state)
    assert monitor.reference == {"digit/accuracy": 0.5, "sum/mae": 4.0}
    assert monitor.best_value == pytest.approx((0.2 + 0.25) / 2)
    assert monitor.value({"digit/accuracy": 0.5, "sum/mae": 4.0}) == 0.0
    assert not monitor.update(3, monitor.value({"digit/accuracy": 0.55, "sum/mae": 3.5}))
