"""Configs: every file loads through the real flag, ``:arg`` parsing is strict, bad configs
fail before training with an error that names the field."""

import glob
import os

import pytest
from absl import flags
from ml_collections import config_flags

from configs import common
from jaxattn.attention import registry
from jaxattn.training import train_and_evaluate
from jaxattn.training import optimizer as optimizer_lib
from jaxattn.training.optimizer import make_schedule
from tests.training.helpers import REPO, smoke_config

CONFIG_FILES = sorted(p for p in glob.glob(os.path.join(REPO, "configs", "*.py"))
                      if os.path.basename(p) not in ("__init__.py", "common.py"))


@pytest.mark.parametrize("path", CONFIG_FILES, ids=os.path.basename)
def test_every_config_loads_through_the_flag(path):
    fv = flags.FlagValues()
    config_flags.DEFINE_config_file("config", None, "", flag_values=fv, lock_config=True)
    fv([__file__, f"--config={path}:smoke"])
    assert fv.config.train.steps == 20
    assert fv.config.attention.kind in registry.list_variants()
    with pytest.raises(AttributeError):
        fv.config.not_a_field = 1  # locked


@pytest.mark.parametrize("arg", ["kind=dense,size=small,steps=30", "kind=landmark,steps=30"])
def test_short_steps_shrink_the_preset_schedule(arg):
    from configs import passkey, repro
    module = repro if "size" in arg else passkey
    config = module.get_config(arg)
    assert config.train.steps == 30
    assert config.optim.warmup_steps == 3  # a tenth of the steps, not the preset's 100/200
    assert config.train.eval_every <= 30 and config.checkpoint.save_every <= 30
    optimizer_lib.make_optimizer(config.optim, total_steps=30)  # valid, no error
    with pytest.raises(ValueError, match="steps must be an int >= 1"):
        common.set_steps(config, 0)


def test_parse_arg_is_strict_and_typed():
    args = common.parse_arg("smoke,steps=5,kind=ssmax", smoke=False, steps=1, kind="dense")
    assert (args.smoke, args.steps, args.kind) == (True, 5, "ssmax")
    with pytest.raises(ValueError, match="unknown config argument 'stpes'.*valid arguments"):
        common.parse_arg("stpes=5", steps=1)
    with pytest.raises(ValueError, match="'steps' must be a int"):
        common.parse_arg("steps=five", steps=1)
    with pytest.raises(ValueError, match="needs a value"):
        common.parse_arg("steps", steps=1)


@pytest.mark.parametrize("overrides,error,match", [
    ({"attention__kind": "flash"}, ValueError, r"unknown attention kind 'flash'.*dense"),
    ({"attention__kind": "local", "attention__block_size": 48}, ValueError,
     r"config.attention.*sequence length 64 is not a multiple of block_size=48"),
    ({"attention__kind": "local", "attention__window": 8}, ValueError, r"window"),
    ({"attention__layers": "dense,nope"}, ValueError, r"unknown attention kind 'nope'"),
    ({"attention__softmax": "sparsemax"}, ValueError, r"softmax"),
    ({"attention__implementation": "triton"}, ValueError,
     r"implementation must be None or one of reference, xla_chunked"),
    ({"data__corpus": "text:/no/such/dir/*.txt"}, FileNotFoundError, r"/no/such/dir"),
    ({"optim__learning_rate": -1e-3}, ValueError, r"optim.learning_rate must be a non-negative"),
    ({"optim__warmup_steps": 10_000}, ValueError, r"optim.warmup_steps"),
    ({"train__steps": 0}, ValueError, r"train.steps must be a positive int"),
    ({"model__num_layers": 0}, ValueError, r"model.num_layers"),
    ({"mesh__data": 3}, ValueError, r"mesh"),
])
def test_bad_config_gives_clear_error(tmp_path, overrides, error, match):
    config = smoke_config(**overrides)
    with pytest.raises(error, match=match):
        train_and_evaluate(config, str(tmp_path))
    assert not os.path.exists(tmp_path / "checkpoints") or not os.listdir(tmp_path / "checkpoints")


def test_schedule_warms_up_then_decays():
    schedule = make_schedule(learning_rate=1.0, warmup_steps=10, total_steps=100,
                             final_lr_fraction=0.1)
    assert float(schedule(0)) == 0.0
    assert float(schedule(5)) == pytest.approx(0.5)
    assert float(schedule(10)) == pytest.approx(1.0)
    assert float(schedule(100)) == pytest.approx(0.1)
    assert 0.1 < float(schedule(55)) < 1.0


def test_titans_config_archs_and_unknown_arch():
    from configs import titans
    for arch in ("mac", "mag", "mal", "lmm"):
        config = titans.get_config(f"arch={arch},smoke")
        assert config.model.titans.arch == arch and config.attention.kind == "dense"
    with pytest.raises(ValueError, match=r"unknown titans arch 'xl'; valid archs: mac, mag, "
                                         r"mal, lmm"):
        titans.get_config("arch=xl")
    # Other configs get no Titans layers: the placeholders stay unset.
    assert all(value is None for value in smoke_config().model.titans.values())


def test_titans_max_grad_norm_reaches_the_model_config():
    from configs import titans
    from jaxattn.training import builders
    config = titans.get_config("arch=mac,smoke")
    assert builders.titans_config(config).max_grad_norm is None  # the paper's rule by default
    config.unlock()
    config.model.titans.max_grad_norm = 0.5
    assert builders.titans_config(config).max_grad_norm == 0.5


@pytest.mark.parametrize("overrides,match", [
    ({"model__titans__window": 8}, r"model.titans.window set but model.titans.arch is not"),
    ({"model__titans__arch": "mac"}, r"model.titans.segment_len must be a positive int "
                                     r"\(required for arch 'mac'\)"),
    ({"model__titans__arch": "gate"}, r"model.titans.arch must be one of mac, mag, mal, lmm"),
    ({"model__titans__arch": "mac", "model__titans__segment_len": 48}, r"data.seq_len: sequence "
     r"length 64 is not a positive multiple of model.titans.segment_len=48.*such as 96"),
    ({"model__titans__arch": "mag", "model__titans__window": 8,
      "attention__kind": "ssmax"}, r"config.attention must stay the plain causal dense kind"),
])
def test_bad_titans_config_gives_clear_error(tmp_path, overrides, match):
    config = smoke_config(**overrides)
    with pytest.raises(ValueError, match=match):
        train_and_evaluate(config, str(tmp_path))
