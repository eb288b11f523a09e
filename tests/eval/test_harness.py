"""`pap.eval harness`: lm-eval's accuracy on a local task equals an independent
log-likelihood computation, for a plain Llama export, a pruned remote-code export (cluster
attention, per-layer head counts and FFN widths) and the pap checkpoint of that pruned model."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from tests.eval.common import choice_loglikelihoods, predictions, train_tokenizer, write_task

pytest.importorskip("lm_eval")
pytest.importorskip("transformers")
REPO = Path(__file__).resolve().parents[2]
TASK = "pap_toy_mc"
LIMIT = 12


def harness(*args: str, env=None, expect_ok: bool = True) -> subprocess.CompletedProcess:
    result = subprocess.run([sys.executable, "-m", "pap.eval", "harness", *args], cwd=REPO, capture_output=True,
                            text=True, timeout=600, env={**os.environ, "OMP_NUM_THREADS": "1", **(env or {})})
    if expect_ok:
        assert result.returncode == 0, result.stderr[-3000:]
    return result


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    """Directories of the three models and what the test needs to score them itself."""
    from pap.config import ModelConfig
    from pap.hf.convert import write_hf_dir
    from tests.hf.test_convert import MODELS, make_hf_model
    from tests.hf.test_remote_code import pruned_arch, random_full_state

    root = tmp_path_factory.mktemp("harness")
    tokenizer = train_tokenizer(root / "tokenizer")
    plain = make_hf_model(root / "plain", **MODELS["gqa_tied"])
    (plain / "tokenizer.json").write_bytes(tokenizer.read_bytes())
    arch = pruned_arch()
    full = random_full_state(arch, seed=7)
    pruned = write_hf_dir(full, arch, ModelConfig(vocab_size=300, norm_eps=1e-5), str(root / "pruned"),
                          torch.float32, tokenizer=str(tokenizer))
    return {"root": root, "tokenizer": tokenizer, "plain": plain, "pruned": pruned, "arch": arch, "full": full}


def test_unknown_path_and_unknown_task_are_one_error_line(models, tmp_path):
    (tmp_path / "notes.txt").write_text("not a model")
    result = harness("--model", str(tmp_path), "--tasks", TASK, expect_ok=False)
    _one_error_line(result, f"--model {tmp_path}: neither a Hugging Face export (no config.json) nor a pap checkpoint")
    result = harness("--model", str(models["plain"]), "--tasks", "no_such_task", expect_ok=False)
    _one_error_line(result, "--tasks: unknown task 'no_such_task'")


def _one_error_line(result, message):
    assert result.returncode == 2, result.stderr[-2000:]
    lines = [l for l in (result.stdout + result.stderr).splitlines() if l.strip()]
    errors = [l for l in lines if l.startswith("error: ")]
    assert len(errors) == 1 and message in errors[0], lines[-5:]
    assert not any("Traceback" in l for l in lines), lines[-5:]


@pytest.mark.slow
def test_accuracy_matches_an_independent_loglikelihood_computation(models, tmp_path):
    from transformers import AutoModelForCausalLM

    from pap.arch import Arch
    from tests.eval.workers import checkpoint_from_full_state
    from tests.helpers import run_distributed
    from tests.hf.test_remote_code import reference_logits

    docs = write_task(tmp_path / "tasks", TASK)[:LIMIT]
    arch, full = models["arch"], models["full"]
    checkpoint = tmp_path / "pruned_ckpt"
    run_distributed(checkpoint_from_full_state, 1, arch.to_json(), full, str(checkpoint))
    scratch = tmp_path / "scratch"
    scratch.mkdir()
    output = tmp_path / "out" / "toy.json"
    result = harness("--model", str(models["plain"]), str(models["pruned"]), "--model", str(checkpoint),
                     "--tokenizer", str(models["tokenizer"]), "--include-path", str(tmp_path / "tasks"),
                     "--tasks", TASK, "--limit", str(LIMIT), "--batch-size", "4", "--output", str(output),
                     "--log-samples", env={"TMPDIR": str(scratch)})
    # The checkpoint was exported into a temporary directory, and that is gone.
    assert list(scratch.iterdir()) == []

    plain = AutoModelForCausalLM.from_pretrained(models["plain"], dtype=torch.float32)
    scorers = {str(models["plain"]): lambda ids: plain(ids).logits,
               str(models["pruned"]): lambda ids: reference_logits(full, Arch.from_json(arch.to_json()), ids),
               str(checkpoint): lambda ids: reference_logits(full, arch, ids)}
    document = json.loads(output.read_text())
    accuracy = {}
    for entry in document["models"]:
        samples = sorted(entry["samples"][TASK], key=lambda s: s["doc_id"])
        assert len(samples) == LIMIT and entry["results"][TASK]["acc,none"] is not None
        correct = []
        for doc, sample in zip(docs, samples):
            expected = choice_loglikelihoods(scorers[entry["model"]], models["tokenizer"], doc)
            got = [float(r[0]) for r in sample["filtered_resps"]]
            torch.testing.assert_close(torch.tensor(got), torch.tensor(expected, dtype=torch.float32),
                                       rtol=1e-4, atol=1e-4)
            acc, norm = predictions(expected, doc["choices"])
            assert (sample["acc"], sample["acc_norm"]) == (float(acc == doc["label"]), float(norm == doc["label"]))
            correct.append(acc == doc["label"])
        assert entry["results"][TASK]["acc,none"] == pytest.approx(sum(correct) / LIMIT)
        accuracy[entry["model"]] = sum(correct) / LIMIT
    assert accuracy[str(checkpoint)] == accuracy[str(models["pruned"])]
    # Side by side: one row per task (acc, the reported metric of a task pap does not know),
    # one column per model, then the average.
    lines = result.stdout.splitlines()
    first = next(i for i, line in enumerate(lines) if line.startswith("task "))
    header, row, average = [line.split() for line in lines[first:first + 3]]
    assert header == ["task", "metric", "n", str(models["plain"]), str(models["pruned"]), str(checkpoint)]
    assert row == [TASK, "acc", str(LIMIT)] + [f"{100 * accuracy[m]:.2f}" for m in header[3:]]
    assert average[0] == "average" and average[1:] == row[3:]
    assert output.with_suffix(".md").read_text() == document["table"]
