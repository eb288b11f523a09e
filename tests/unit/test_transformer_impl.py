"""`model.transformer_impl`: what `auto` chose and why is said in one line; `te` without
Transformer Engine fails with one line that names the setting and the fix."""

import pytest
import torch

from pap.errors import PapError
from pap.model import describe_implementation, layer_spec
from tests.helpers import tiny_config

pytestmark = pytest.mark.skipif(torch.cuda.is_available(), reason="checks the CPU fallback")


def _has_transformer_engine() -> bool:
    try:
        import transformer_engine.pytorch  # noqa: F401
    except Exception:
        return False
    return True


def test_auto_on_cpu_says_it_uses_the_local_layers_and_why():
    line = describe_implementation("auto")
    assert line.startswith("local layers (auto: ")
    assert ("Transformer Engine does not import" in line) != _has_transformer_engine()
    assert "no CUDA device" in line or "does not import" in line
    assert "attention: megatron's unfused DotProductAttention" in line
    assert describe_implementation("local").startswith("local layers (model.transformer_impl=local)")


@pytest.mark.parametrize("impl", ["te", "transformer_engine"])
def test_te_required_but_unusable_is_one_clear_error(impl, tmp_path):
    with pytest.raises(PapError) as raised:
        describe_implementation(impl)
    message = str(raised.value)
    assert "\n" not in message and message.startswith(f"model.transformer_impl={impl}: ")
    assert "model.transformer_impl=local" in message  # the fix
    cfg = tiny_config(str(tmp_path / "unused"), model={"transformer_impl": impl})
    from pap.config import config_from_dict

    with pytest.raises(PapError):
        layer_spec(config_from_dict(cfg))
