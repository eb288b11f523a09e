"""bench/retention.py's bookkeeping: runs start after what they need, and the seeded tables
pair each seed's runs and count the seeds a sign holds in."""

import threading
import time

import pytest

from bench.retention import run_graph
from bench.retention_report import difference_cell, median_range, paired


def test_runs_wait_for_their_dependencies_and_keep_list_order():
    started, lock = [], threading.Lock()

    def job(key, seconds=0.02):
        def fn():
            with lock:
                started.append(key)
            time.sleep(seconds)
        return fn

    tasks = [((1, "source"), [], job((1, "source"), 0.1)), ((2, "source"), [], job((2, "source"))),
             ((1, "a"), [(1, "source")], job((1, "a"))), ((2, "a"), [(2, "source")], job((2, "a"))),
             ((1, "b"), [(1, "a")], job((1, "b")))]
    run_graph(tasks, parallel=2)
    assert started.index((1, "a")) > started.index((1, "source"))
    assert started.index((1, "b")) > started.index((1, "a"))
    assert started[:2] == [(1, "source"), (2, "source")]
    assert (2, "a") in started and len(started) == 5


def test_a_run_waiting_on_an_unscheduled_one_is_an_error():
    with pytest.raises(SystemExit, match="not scheduled"):
        run_graph([((1, "a"), [(1, "source")], lambda: None)], parallel=2)


def test_paired_differences_use_the_seeds_both_rows_have():
    diffs, seeds = paired({1: 4.0, 2: 5.0, 3: 6.0}, {1: 4.5, 3: 5.5, 4: 1.0})
    assert seeds == [1, 3] and diffs == [-0.5, 0.5]
    cell, sign = difference_cell([-0.2, -0.1, 0.3])
    assert cell == "-0.1000 [-0.2000, 0.3000]" and sign == "2 of 3"
    assert median_range([]) == "—" and median_range([1.5]) == "1.5000 (1 seed)"
