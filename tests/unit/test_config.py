import pytest

from pap.config import ConfigError, load_config, parse_blend


def write(tmp_path, text):
    path = tmp_path / "c.yaml"
    path.write_text(text)
    return str(path)


BASE = "data:\n  blend: [x/y_text_document]\n"


def test_yaml_and_dotted_overrides(tmp_path):
    cfg = load_config(write(tmp_path, BASE + "train:\n  iters: 100\n"),
                      ["parallel.tp=2", "parallel.pp=2", "train.iters=6", "train.warmup_iters=1",
                       "train.lr=1e-3", "model.tie_embeddings=true"])
    assert (cfg.parallel.tp, cfg.parallel.pp, cfg.train.iters) == (2, 2, 6)
    assert cfg.train.lr == 1e-3 and cfg.model.tie_embeddings is True
    assert cfg.data.blend == ["x/y_text_document"]


def test_unknown_key_names_the_key(tmp_path):
    with pytest.raises(ConfigError, match=r"unknown config key 'train.iterz'"):
        load_config(write(tmp_path, BASE + "train:\n  iterz: 5\n"))
    with pytest.raises(ConfigError, match=r"unknown config key 'modle'"):
        load_config(write(tmp_path, BASE), ["modle.hidden_size=3"])


def test_wrong_type_names_the_key(tmp_path):
    with pytest.raises(ConfigError, match=r"train.iters must be int, got 'many'"):
        load_config(write(tmp_path, BASE), ["train.iters=many"])
    with pytest.raises(ConfigError, match=r"model.tie_embeddings must be bool"):
        load_config(write(tmp_path, BASE), ["model.tie_embeddings=3"])


def test_tp_must_divide_heads(tmp_path):
    with pytest.raises(ConfigError, match=r"parallel.tp \(3\) does not divide model.num_attention_heads"):
        load_config(write(tmp_path, BASE), ["parallel.tp=3"])


def test_relations_are_checked(tmp_path):
    with pytest.raises(ConfigError, match="parallel.pp"):
        load_config(write(tmp_path, BASE), ["parallel.pp=3"])
    with pytest.raises(ConfigError, match="num_query_groups"):
        load_config(write(tmp_path, BASE), ["model.num_query_groups=3"])
    with pytest.raises(ConfigError, match="warmup_iters"):
        load_config(write(tmp_path, BASE), ["train.iters=5", "train.warmup_iters=5"])
    with pytest.raises(ConfigError, match="data.blend is empty"):
        load_config(write(tmp_path, "train:\n  iters: 50\n"))
    with pytest.raises(ConfigError, match="lr_decay_style must be one of"):
        load_config(write(tmp_path, BASE), ["train.lr_decay_style=wsd2"])


def test_bad_files(tmp_path):
    with pytest.raises(ConfigError, match="cannot read config file"):
        load_config(str(tmp_path / "missing.yaml"))
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_config(write(tmp_path, "model: [unclosed\n"))
    with pytest.raises(ConfigError, match="expected key.sub=value"):
        load_config(write(tmp_path, BASE), ["parallel.tp"])


def test_blend_forms():
    assert parse_blend(["a"]) == (["a"], None)
    assert parse_blend(["a", "b"]) == (["a", "b"], None)
    assert parse_blend([0.3, "a", 0.7, "b"]) == (["a", "b"], [0.3, 0.7])
    with pytest.raises(ConfigError):
        parse_blend([0.3, "a", "b"])


def test_demo_configs_load_and_chain():
    """configs/tiny.yaml trains the source that configs/tiny_pap.yaml prunes: both validate,
    and the pruning run's model settings and layout fit the source and 4 processes."""
    from pathlib import Path

    from pap.arch import Arch
    from pap.trainer import ensure_world_fits

    root = Path(__file__).resolve().parents[2] / "configs"
    source, pruned = load_config(root / "tiny.yaml"), load_config(root / "tiny_pap.yaml")
    assert pruned.prune.enabled and pruned.checkpoint.init_from == source.checkpoint.dir
    assert Arch.from_model_config(pruned.model) == Arch.from_model_config(source.model)
    for cfg in (source, pruned):
        ensure_world_fits(cfg, 4)


def test_base_file_is_merged_under_the_config(tmp_path):
    """`base:` takes another file's settings; the file's own override them key by key, and a
    cycle is one clear error."""
    from pap.config import ConfigError, load_config

    (tmp_path / "a.yaml").write_text("model: {hidden_size: 96, num_layers: 3}\ntrain: {lr: 0.002}\n"
                                     "data: {blend: [x_text_document]}\n")
    (tmp_path / "b.yaml").write_text("base: a.yaml\nmodel: {num_layers: 5}\n")
    cfg = load_config(str(tmp_path / "b.yaml"))
    assert (cfg.model.hidden_size, cfg.model.num_layers, cfg.train.lr) == (96, 5, 0.002)
    (tmp_path / "c.yaml").write_text("base: d.yaml\n")
    (tmp_path / "d.yaml").write_text("base: c.yaml\n")
    with pytest.raises(ConfigError, match="leads back to itself"):
        load_config(str(tmp_path / "c.yaml"))


def test_distill_settings_are_checked():
    from pap.config import ConfigError, load_config

    base = ["data.blend=[x_text_document]", "distill.enabled=true"]
    with pytest.raises(ConfigError, match="distill.teacher is unset and so is checkpoint.init_from"):
        load_config(None, base)
    with_teacher = base + ["distill.teacher=ckpt/source"]
    for override, message in (("distill.alpha=1.5", "distill.alpha must be in"),
                              ("distill.temperature=0", "distill.temperature must be positive"),
                              ("distill.top_k=-1", "distill.top_k must be 0"),
                              ("distill.during=never", "distill.during must be one of"),
                              ("distill.during=pruning", "the teacher would never teach")):
        with pytest.raises(ConfigError, match=message):
            load_config(None, with_teacher + [override])
    assert load_config(None, with_teacher + ["distill.top_k=20"]).distill.top_k == 20
