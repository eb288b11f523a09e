"""A checkpoint's model settings that `Arch` does not record (RoPE base, norm eps, vocabulary,
tying) must match the config that starts from it, or the run stops with one line naming the
setting: for `checkpoint.init_from` and for `distill.teacher` alike."""

from pathlib import Path

import pytest

from pap.arch import Arch
from pap.checkpoint import ResumeState
from pap.config import ModelConfig, config_from_dict
from pap.errors import PapError
from pap.trainer import check_same_model_settings


def _state(**saved):
    model = ModelConfig(vocab_size=300)
    return ResumeState(path=Path("/ckpt/src"), iteration=0, consumed_samples=0, arch=Arch.from_model_config(model),
                       scheduler=None, layout={}, config={"model": {"vocab_size": 300, "rope_theta": 10000.0,
                                                                    "norm_eps": 1e-5, **saved}})


def test_the_first_differing_setting_is_named_with_both_values():
    model = ModelConfig(vocab_size=300, rope_theta=10000.0, norm_eps=1e-5)
    assert _state().setting_mismatch(model, ("vocab_size", "rope_theta", "norm_eps")) is None
    assert _state(rope_theta=500000.0).setting_mismatch(model, ("vocab_size", "rope_theta")) == \
        ("rope_theta", 500000.0, 10000.0)
    assert _state(rope_theta=500000.0).setting_mismatch(model, ("vocab_size",)) is None  # only the keys asked


def test_init_from_refuses_a_config_with_another_rope_base():
    cfg = config_from_dict({"model": {"vocab_size": 300, "rope_theta": 10000.0, "norm_eps": 1e-5},
                            "data": {"blend": ["-"]}})
    with pytest.raises(PapError, match=r"checkpoint.init_from /ckpt/src: model.rope_theta is 500000.0 there but "
                                       r"10000.0 in the config; set model.rope_theta=500000.0"):
        check_same_model_settings(_state(rope_theta=500000.0), cfg)
