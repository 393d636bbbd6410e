"""Dense -> LSG conversion: weights reused, global tokens initialised as documented, and the
experiments entry evaluating both models at several lengths."""

import json

import jax
import numpy as np
import pytest

from jaxattn import conversion
from jaxattn.data import BOS_ID
from jaxattn.training import train_and_evaluate
from tests.training.helpers import smoke_config

LSG = dict(block_size=16, sparse_block_size=4, sparsity_factor=2, sparsity_type="pooling",
           num_global_tokens=2)


@pytest.fixture(scope="module")
def dense_run(tmp_path_factory):
    workdir = tmp_path_factory.mktemp("dense")
    config = smoke_config(train__steps=10)
    train_and_evaluate(config, str(workdir))
    return config, str(workdir)


def test_params_are_reused_and_globals_initialised(dense_run):
    config, workdir = dense_run
    dense_cfg, state, _ = conversion.load_dense(config, workdir)
    lsg_cfg = conversion.lsg_model_config(dense_cfg, **LSG)
    assert all(spec.kind == "lsg" and spec.options.causal for spec in lsg_cfg.attention)
    params = conversion.lsg_params_from_dense(state.params, lsg_cfg)
    shared = {k: v for k, v in params.items() if k != "global_tokens"}
    jax.tree.map(np.testing.assert_array_equal, shared, state.params)
    embedding = np.asarray(state.params["embed"]["embedding"])
    np.testing.assert_array_equal(params["global_tokens"][0], embedding[BOS_ID])
    np.testing.assert_allclose(params["global_tokens"][1], embedding.mean(axis=0), rtol=1e-6)
    with pytest.raises(ValueError, match="already hold global_tokens"):
        conversion.lsg_params_from_dense(params, lsg_cfg)


def test_convert_entry_reports_both_models(dense_run, tmp_path):
    config, workdir = dense_run
    rows, markdown = conversion.compare_with_dense(config, workdir, eval_lens=[64, 128], eval_batches=2,
                                     lsg_options=LSG, out=str(tmp_path))
    assert {(r["model"], r["eval_len"]) for r in rows} == {
        ("dense", 64), ("dense", 128), ("lsg", 64), ("lsg", 128)}
    assert all(np.isfinite(r["perplexity"]) and r["perplexity"] > 1 for r in rows)
    saved = json.loads((tmp_path / "convert_lsg.json").read_text())
    assert saved["rows"] == rows and saved["train_len"] == 64
    assert "| 128 | 2 |" in markdown


def test_convert_errors(dense_run, tmp_path):
    config, workdir = dense_run
    with pytest.raises(ValueError, match="multiple of block_size=16"):
        conversion.compare_with_dense(config, workdir, eval_lens=[72], eval_batches=1, lsg_options=LSG,
                        out=str(tmp_path))
    with pytest.raises(FileNotFoundError, match="no checkpoint"):
        conversion.load_dense(config, str(tmp_path / "empty"))
