import numpy as np
import pytest

from grokscope.errors import ConfigError
from grokscope.steps import select_steps

STEPS = np.array([0, 1, 2, 5, 10, 20, 50, 100, 200, 500, 1000, 2000])


def test_all_and_none():
    assert np.array_equal(select_steps(STEPS), STEPS)
    assert np.array_equal(select_steps(STEPS, "all"), STEPS)


def test_every_k_keeps_last():
    out = select_steps(STEPS, "every:5")
    assert out.tolist() == [0, 20, 1000, 2000]


def test_value_range_and_stride():
    assert select_steps(STEPS, "10:200").tolist() == [10, 20, 50, 100, 200]
    assert select_steps(STEPS, "10:200:2").tolist() == [10, 50, 200]
    assert select_steps(STEPS, slice(500, None)).tolist() == [500, 1000, 2000]


def test_log_subset_includes_ends_and_is_sorted():
    out = select_steps(STEPS, "log:4")
    assert out[0] == 0 and out[-1] == 2000
    assert np.all(np.diff(out) > 0) and len(out) <= 6
    assert np.array_equal(select_steps(STEPS, 100), STEPS)


def test_exact_list():
    assert select_steps(STEPS, "0,100,2000").tolist() == [0, 100, 2000]
    assert select_steps(STEPS, [5, 1]).tolist() == [1, 5]


@pytest.mark.parametrize("bad", ["every:0", "log:0", "3,4", "nonsense", "1:2:3:4", "3000:4000", []])
def test_bad_selections_raise(bad):
    with pytest.raises(ConfigError):
        select_steps(STEPS, bad)


def test_empty_run():
    with pytest.raises(ConfigError, match="no committed steps"):
        select_steps(np.array([], dtype=np.int64))
