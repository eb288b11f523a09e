"""Bad input gets one clear line naming the file and the fix, and nothing is lost: data pairs
that do not belong together, targets the floors cannot reach, converter outputs that would
overwrite what pap did not write, damaged weights files. docs/RELIABILITY.md lists every
case with the test that covers it."""

import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.helpers import tiny_config
from tests.hf.test_convert import MODELS, _one_error_line, convert, make_hf_model
from tests.integration.test_train_cli import REPO, run, write_config


def _damaged_pairs(tmp_path, good: str) -> dict:
    """Data pairs whose .bin does not belong to their .idx: {case: (prefix, message)}."""
    import numpy as np

    from tests.helpers import write_random_dataset

    cases = {}
    # A uint16 index over the int32 .bin of the same documents (rc 0 and garbage before).
    wide = str(tmp_path / "wide_text_document")
    write_random_dataset(wide, seed=0)
    tokens = np.fromfile(good + ".bin", dtype=np.uint16)
    tokens.astype(np.int32).tofile(wide + ".bin")
    cases["dtype"] = (wide, "describes")
    # Another dataset's .bin next to this .idx.
    other = write_random_dataset(str(tmp_path / "other_text_document"), seed=5)
    mixed = str(tmp_path / "mixed_text_document")
    os.link(good + ".idx", mixed + ".idx")
    os.link(other + ".bin", mixed + ".bin")
    cases["other bin"] = (mixed, "describes")
    # A truncated .bin (a copy cut short).
    cut = str(tmp_path / "cut_text_document")
    os.link(good + ".idx", cut + ".idx")
    Path(cut + ".bin").write_bytes(Path(good + ".bin").read_bytes()[:-10])
    cases["truncated bin"] = (cut, "describes")
    # An index whose offsets were damaged (same sizes).
    bad = str(tmp_path / "offsets_text_document")
    os.link(good + ".bin", bad + ".bin")
    raw = bytearray(Path(good + ".idx").read_bytes())
    sequences = int.from_bytes(raw[18:26], "little")
    first_pointer = 34 + 4 * sequences + 8  # the second sequence's byte offset
    raw[first_pointer] ^= 0x10
    Path(bad + ".idx").write_bytes(bytes(raw))
    cases["offsets"] = (bad, "sequence offsets")
    return cases


def test_data_pair_mismatch_is_refused_before_training(tmp_path, random_dataset):
    """A .bin that does not belong to its .idx stops the run at start with one line naming
    the file and the fix (before, a uint16 index over an int32 .bin trained on garbage)."""
    from pap.data import check_dataset
    from pap.errors import PapError

    for case, (prefix, message) in _damaged_pairs(tmp_path, random_dataset).items():
        with pytest.raises(PapError, match=message) as raised:
            check_dataset(prefix, 4096)
        assert prefix in str(raised.value) and "data_prep.tokenize" in str(raised.value), case
    (tmp_path / "cli").mkdir()
    prefix, _ = _damaged_pairs(tmp_path / "cli", random_dataset)["dtype"]
    config = write_config(tmp_path / "c.yaml", tiny_config(prefix, checkpoint={"dir": str(tmp_path / "run")}))
    result = subprocess.run([sys.executable, "-m", "pap.train", "--config", config], cwd=REPO,
                            capture_output=True, text=True, timeout=120)
    lines = [l for l in (result.stdout + result.stderr).splitlines() if l.strip()]
    assert result.returncode == 2 and len(lines) == 1 and lines[0].startswith(f"error: {prefix}.bin: "), lines
    assert not (tmp_path / "run").exists()


def test_unreachable_target_is_said_once(tmp_path, random_dataset):
    """Floors that stop pruning above the target: one line says so, and the run trains on."""
    cfg = tiny_config(random_dataset, train={"iters": 5, "warmup_iters": 1, "eval_iters": 0},
                      prune={"enabled": True, "target_params": 0.1, "grad_steps": 1, "min_ffn": 127, "min_hidden": 64,
                             "min_heads": 4})
    out = run(1, write_config(tmp_path / "c.yaml", cfg), log=tmp_path / "run.log")
    said = [l for l in out.splitlines() if "cannot be reached: every dimension is at its prune.min_* floor" in l]
    assert len(said) == 1, out[-2000:]


def test_out_is_never_deleted_unless_pap_wrote_it(tmp_path):
    """`--out` naming an unrelated folder, the input itself, or a folder holding the input is
    refused with one line and left untouched; an earlier pap output is replaced only with
    --overwrite. (Before, every one of these was deleted.)"""
    hf = make_hf_model(tmp_path / "hf", **MODELS["gqa_tied"])
    unrelated = tmp_path / "notes"
    unrelated.mkdir()
    (unrelated / "keep.txt").write_text("mine")
    for extra in ((), ("--overwrite",)):
        _one_error_line(convert("hf-to-mcore", "--hf", str(hf), "--out", str(unrelated), *extra, expect_ok=False),
                        f"--out {unrelated}")
        assert (unrelated / "keep.txt").read_text() == "mine"
    _one_error_line(convert("hf-to-mcore", "--hf", str(hf), "--out", str(hf), expect_ok=False), "holds the input")
    _one_error_line(convert("hf-to-mcore", "--hf", str(hf), "--out", str(tmp_path), expect_ok=False), "holds the input")
    assert (hf / "config.json").is_file()

    ckpt = tmp_path / "mcore"
    convert("hf-to-mcore", "--hf", str(hf), "--out", str(ckpt))
    _one_error_line(convert("mcore-to-hf", "--ckpt", str(ckpt), "--out", str(ckpt), "--overwrite", expect_ok=False),
                    "holds the input")
    assert (ckpt / "latest_checkpointed_iteration.txt").is_file()
    _one_error_line(convert("hf-to-mcore", "--hf", str(hf), "--out", str(ckpt), expect_ok=False), "--overwrite")
    convert("hf-to-mcore", "--hf", str(hf), "--out", str(ckpt), "--overwrite")
    out = tmp_path / "export"
    convert("mcore-to-hf", "--ckpt", str(ckpt), "--out", str(out))
    _one_error_line(convert("mcore-to-hf", "--ckpt", str(ckpt), "--out", str(out), expect_ok=False), "--overwrite")
    convert("mcore-to-hf", "--ckpt", str(ckpt), "--out", str(out), "--overwrite")
    assert (out / "pap_arch.json").is_file()


def test_truncated_or_garbage_safetensors_is_one_line(tmp_path):
    """A cut-short or foreign file in place of model.safetensors: one line naming it, exit 2."""
    hf = make_hf_model(tmp_path / "hf", **MODELS["gqa_tied"])
    weights = hf / "model.safetensors"
    good = weights.read_bytes()
    for case, data in (("truncated", good[:-100]), ("garbage", b"not safetensors" * 64)):
        weights.write_bytes(data)
        _one_error_line(convert("hf-to-mcore", "--hf", str(hf), "--out", str(tmp_path / case), expect_ok=False),
                        f"{weights}: not a readable safetensors file")
        assert not (tmp_path / case).exists()
