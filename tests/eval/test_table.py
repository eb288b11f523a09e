"""The benchmark table (reported metric per task, average, side by side) and the scoped
offline switch, without running a model."""

import os
import sys

import pytest

from pap.errors import PapError
from pap.eval.harness import ModelResult, offline
from pap.eval.table import PAPER_TASKS, parse_task, render


def fake(path, scale):
    results = {task: {"acc,none": 0.5 * scale, "acc_stderr,none": 0.01, "acc_norm,none": 0.6 * scale}
               for task in PAPER_TASKS if task not in ("boolq", "winogrande")}
    results.update({task: {"acc,none": 0.7 * scale} for task in ("boolq", "winogrande")})
    return ModelResult(path, {"results": results, "n-samples": {t: {"effective": 100} for t in PAPER_TASKS}})


def test_paper_table_shows_the_reported_metric_and_the_average_side_by_side():
    columns = [parse_task(t) for t in PAPER_TASKS]
    lines = render([fake("source", 1.0), fake("pruned", 0.5)], columns).splitlines()
    assert lines[0].split() == ["task", "metric", "n", "source", "pruned"]
    shown = {line.split()[0]: line.split()[1:] for line in lines[1:]}
    assert [line.split()[0] for line in lines[1:]] == list(PAPER_TASKS) + ["average"]
    for task in ("arc_challenge", "hellaswag", "openbookqa"):
        assert shown[task] == ["acc_norm", "100", "60.00", "30.00"]
    for task in ("arc_easy", "piqa"):
        assert shown[task] == ["acc", "100", "50.00", "25.00"]
    assert shown["boolq"] == shown["winogrande"] == ["acc", "100", "70.00", "35.00"]
    assert shown["average"] == [f"{100 * (0.5 * 2 + 0.6 * 3 + 0.7 * 2) / 7:.2f}",
                                f"{50 * (0.5 * 2 + 0.6 * 3 + 0.7 * 2) / 7:.2f}"]
    markdown = render([fake("source", 1.0)], [parse_task("piqa:acc_norm")], markdown=True).splitlines()
    assert markdown[2] == "| piqa | acc_norm | 100 | 60.00 |"
    with pytest.raises(PapError, match="computed no 'f1' for boolq"):
        render([fake("source", 1.0)], [parse_task("boolq:f1")])


def test_offline_is_scoped():
    import datasets.config

    before_env = {k: os.environ.get(k) for k in ("HF_DATASETS_OFFLINE", "HF_HUB_OFFLINE")}
    before = datasets.config.HF_HUB_OFFLINE
    with offline(True):
        assert os.environ["HF_DATASETS_OFFLINE"] == os.environ["HF_HUB_OFFLINE"] == "1"
        assert datasets.config.HF_HUB_OFFLINE is True
        assert sys.modules["huggingface_hub.constants"].HF_HUB_OFFLINE is True
    assert {k: os.environ.get(k) for k in before_env} == before_env
    assert datasets.config.HF_HUB_OFFLINE == before
    with offline(False):
        assert {k: os.environ.get(k) for k in before_env} == before_env
