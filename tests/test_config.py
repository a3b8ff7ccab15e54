import pytest

from tdms.config import Config, load_config, parse_override, to_dict


def test_defaults_yaml_then_overrides(tmp_path):
    f = tmp_path / "x.yaml"
    f.write_text("data:\n  crop: 128\ntrain:\n  steps: 7\n")
    cfg = load_config(f, ["train.steps=9", "loss.temporal=5", "model.original_quirks=true"])
    assert cfg.data.crop == 128 and cfg.train.steps == 9
    assert cfg.loss.temporal == 5.0 and isinstance(cfg.loss.temporal, float)
    assert cfg.model.original_quirks is True
    assert cfg.optim.lr == Config().optim.lr


@pytest.mark.parametrize("text, match", [
    ("data:\n  crops: 1\n", "unknown config key 'data.crops'"),
    ("nope: 1\n", "unknown config key 'nope'"),
    ("train:\n  steps: many\n", "wants int"),
    ("data: 3\n", "is a section"),
    ("train:\n  steps: 3\n bad: [\n", r"x.yaml: not valid YAML \(.*line 3"),  # no parser traceback
])
def test_bad_yaml(tmp_path, text, match):
    f = tmp_path / "x.yaml"
    f.write_text(text)
    with pytest.raises(ValueError, match=match):
        load_config(f)


def test_bad_override():
    with pytest.raises(ValueError, match="unknown config key 'train.stepz'"):
        load_config(None, ["train.stepz=3"])
    with pytest.raises(ValueError, match="not of the form"):
        parse_override("train.steps")
    with pytest.raises(ValueError, match=r"override 'train.steps=\[1,': the value is not valid YAML"):
        parse_override("train.steps=[1,")


def test_round_trip_dict():
    d = to_dict(load_config(None, ["data.root=/x"]))
    assert d["data"]["root"] == "/x" and d["model"]["nf"] == 32


def test_exponent_without_a_dot_is_a_float(tmp_path):
    # YAML 1.1 reads 1e-4 as a string; a float field takes it as the number it means
    (tmp_path / "c.yaml").write_text("optim:\n  lr: 3e-4\n")
    cfg = load_config(tmp_path / "c.yaml", ["optim.lr_min=1e-6"])
    assert cfg.optim.lr == 3e-4 and cfg.optim.lr_min == 1e-6
    with pytest.raises(ValueError, match="optim.lr' wants float, got 'fast'"):
        load_config(None, ["optim.lr=fast"])


def test_train_overrides_may_follow_the_flags(monkeypatch, tmp_path):
    """`tdms-train --resume train.steps=N` (extending a run) parses like overrides given first."""
    import tdms.commands.train as cli

    seen = {}
    monkeypatch.setattr(cli, "train", lambda cfg, **kw: seen.update(cfg=cfg, **kw) or tmp_path / "last.pth")
    assert cli.main(["--resume", "train.steps=9", f"train.out={tmp_path}"]) == 0
    assert seen["resume"] is True and seen["cfg"].train.steps == 9 and seen["cfg"].train.out == str(tmp_path)
