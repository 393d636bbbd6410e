"""Reports (JSON, Markdown, PNG plots) and ``experiments/eval.py`` end to end on checkpoints
trained for a few steps: lm_tiny (every suite, through the command line) and landmark
(perplexity through ``LandmarkDecoder``); clear errors before anything is loaded."""

import json
import math
import os
import subprocess
import sys

import numpy as np
import pytest

from configs import landmark as landmark_config
from experiments import eval as eval_cli
from jaxattn.evaluation import report
from jaxattn.inference import RetrievalConfig
from jaxattn.training import train_and_evaluate
from tests.training.helpers import REPO, smoke_config

PNG = b"\x89PNG\r\n\x1a\n"


def is_png(path):
    with open(path, "rb") as f:
        return f.read(8) == PNG


def cli(*flags, devices=1):
    env = dict(os.environ, JAX_PLATFORMS="cpu",
               XLA_FLAGS=f"--xla_force_host_platform_device_count={devices}")
    return subprocess.run([sys.executable, "-m", "experiments.eval", *flags], cwd=REPO, env=env,
                          capture_output=True, text=True, timeout=300)


def train(config, workdir, steps=3):
    with config.unlocked():
        config.train.steps = steps
        config.train.eval_batches = 1
        config.train.progress = False
    train_and_evaluate(config, str(workdir))


# --------------------------------------------------------------------------- reports


def fake_results():
    buckets = lambda losses: [{"start": a, "stop": b, "tokens": 0 if math.isnan(x) else 10,
                               "loss": x, "perplexity": math.exp(x)}
                              for (a, b), x in zip([(0, 16), (16, 32), (32, 64)], losses)]
    ppl = [{"length": n, "method": "forward", "available_windows": 9, "windows": 2,
            "tokens": 100, "loss": 2.0 + i, "perplexity": math.exp(2.0 + i),
            "bits_per_byte": (2.0 + i) / math.log(2), "window_mean_loss": 2.1 + i,
            "buckets": buckets([2.5, 2.0, 1.5] if n == 64 else [2.5, 2.2, float("nan")])}
           for i, n in enumerate([64, 32])]
    grid = {"task": "passkey", "lengths": [256, 512], "depths": [0.0, 0.5, 1.0], "trials": 4,
            "seed": 0, "method": "full attention",
            "accuracy": np.array([[1.0, 0.75, 0.5], [0.25, 0.0, 0.0]]), "rows": []}
    eff = [{"length": n, "batch": 1, "median_ms": 0.5 * n, "min_ms": 0.4 * n, "max_ms": n,
            "compile_ms": 100.0, "peak_bytes": 1000 * n, "tokens_per_s": 2000.0, "error": None}
           for n in (64, 128)]
    eff.append({"length": 100, "batch": 1, "median_ms": None, "min_ms": None, "max_ms": None,
                "compile_ms": None, "peak_bytes": None, "tokens_per_s": None,
                "error": "ValueError: not a multiple | of 64"})
    return {"meta": {"step": 7}, "ppl": ppl, "retrieval": grid, "efficiency": eff}


def test_write_report_writes_json_markdown_and_every_plot(tmp_path):
    files = report.write_report(fake_results(), str(tmp_path / "out"), title="Toy")
    assert set(files) == {"json", "markdown", "ppl_vs_length", "loss_vs_position",
                          "needle_heatmap", "efficiency"}
    for name in ("ppl_vs_length", "loss_vs_position", "needle_heatmap", "efficiency"):
        assert is_png(files[name]) and os.path.getsize(files[name]) > 5000
    with open(files["json"]) as f:
        data = json.loads(f.read(), parse_constant=lambda c: pytest.fail(f"bare {c} in JSON"))
    assert data["retrieval"]["accuracy"] == [[1.0, 0.75, 0.5], [0.25, 0.0, 0.0]]
    assert data["ppl"][1]["buckets"][2]["loss"] is None  # NaN -> null
    with open(files["markdown"]) as f:
        markdown = f.read()
    assert markdown.startswith("# Toy")
    assert "| length | [0, 16) | [16, 32) | [32, 64) |" in markdown
    assert "| 256 | 1.00 | 0.75 | 0.50 | 0.75 |" in markdown
    assert "| 32 | 2.5000 | 2.2000 | — |" in markdown
    assert "not a multiple \\| of 64" in markdown


def test_report_parts_are_optional(tmp_path):
    results = fake_results()
    del results["retrieval"], results["efficiency"]
    files = report.write_report(results, str(tmp_path))
    assert set(files) == {"json", "markdown", "ppl_vs_length", "loss_vs_position"}
    grid = fake_results()["retrieval"]
    grid.update(depths=[None], accuracy=np.array([[0.5], [1.0]]))
    assert is_png(report.plot_needle_heatmap(grid, str(tmp_path / "h.png")))
    assert "depth random" in report.retrieval_table(grid)


# --------------------------------------------------------------------------- errors


def test_clear_errors_before_loading(tmp_path):
    config = smoke_config()
    missing = tmp_path / "nothing"
    with pytest.raises(FileNotFoundError, match=f"no checkpoint under {missing}/checkpoints"):
        eval_cli.run(config, str(missing), suites=["ppl"], eval_lens=[64])
    assert not missing.exists()  # nothing created on the way
    with pytest.raises(ValueError, match="valid suites: ppl, retrieval, efficiency"):
        eval_cli.run(config, str(missing), suites=["ppl", "speed"])
    with pytest.raises(ValueError, match="valid tasks: passkey, niah_single_1"):
        eval_cli.run(config, str(missing), suites=["retrieval"], task="niah")
    with pytest.raises(ValueError, match=r"\[300\] too short for task 'niah_single_1'"):
        eval_cli.run(config, str(missing), suites=["retrieval"], task="niah_single_1",
                     eval_lens=[300, 1024])
    with pytest.raises(ValueError, match="eval length 66: seq_len=66 must be a multiple of "
                                         "align=4"):
        eval_cli.run(landmark_config.get_config("smoke"), str(missing), suites=["ppl"],
                     eval_lens=[64, 66])
    with pytest.raises(ValueError, match="needs a landmark model"):
        eval_cli.run(config, str(missing), suites=["ppl"], ppl_method="decoder")
    with pytest.raises(ValueError, match="bucket spec"):
        eval_cli.run(config, str(missing), suites=["ppl"], buckets="log:2")


def test_command_line_error_exits_nonzero():
    result = cli("--config=configs/lm_tiny.py:smoke", "--workdir=/nonexistent", "--suite=ppl,x")
    assert result.returncode != 0
    assert "valid suites: ppl, retrieval, efficiency" in result.stderr


# --------------------------------------------------------------------------- end to end


@pytest.mark.slow  # a dense training, then every suite through the command line
def test_command_line_end_to_end_on_lm_tiny(tmp_path):
    train(smoke_config(), tmp_path)
    out = tmp_path / "report"
    result = cli("--config=configs/lm_tiny.py:smoke", f"--workdir={tmp_path}", f"--out={out}",
                 "--suite=ppl,retrieval,efficiency", "--eval_lens=64,128", "--max_windows=3",
                 "--batch_size=2", "--buckets=pow2:16", "--retrieval_lens=256", "--trials=2",
                 "--depths=0,1", "--eff_lens=64", "--repeats=1", "--progress=false")
    assert result.returncode == 0, result.stderr[-3000:]
    assert "## Perplexity against evaluation length" in result.stdout
    with open(out / "eval.json") as f:
        data = json.load(f)
    assert data["meta"]["step"] == 3 and data["meta"]["attention"] == "dense"
    assert data["meta"]["settings"]["ppl_method"] == "forward"
    ppl = data["ppl"]
    assert [r["length"] for r in ppl] == [64, 128]
    for row in ppl:
        assert row["method"] == "forward" and row["windows"] == 3
        assert 0 < row["loss"] < math.log(260) + 1 and row["tokens"] > 0
        assert sum(b["tokens"] for b in row["buckets"]) == row["tokens"]
    assert [b["stop"] for b in ppl[1]["buckets"]] == [16, 32, 64, 128]
    grid = data["retrieval"]
    assert grid["task"] == "passkey" and grid["method"] == "kv cache"
    assert np.asarray(grid["accuracy"]).shape == (1, 2) and len(grid["rows"]) == 2
    eff = data["efficiency"]
    assert [r["length"] for r in eff] == [64]
    assert all(r["error"] is None and r["median_ms"] > 0 for r in eff)
    for name in ("ppl_vs_length", "loss_vs_position", "needle_heatmap", "efficiency"):
        assert is_png(out / f"{name}.png")


@pytest.mark.slow  # a landmark training; tests/nn/test_landmark_model.py trains one by default
def test_landmark_checkpoint_perplexity_through_the_decoder(tmp_path):
    config = landmark_config.get_config("smoke")
    train(config, tmp_path)
    results = eval_cli.run(config, str(tmp_path), suites=["ppl"], eval_lens=[64, 128],
                           max_windows=2, batch_size=2, buckets="pow2:32",
                           retrieval=RetrievalConfig(top_k=2, chunk_blocks=2), progress=False)
    assert results["meta"]["retrieval_config"]["top_k"] == 2
    for row in results["ppl"]:
        assert row["method"] == "decoder" and row["windows"] == 2
        assert 0 < row["loss"] < math.log(260) + 1
    files = results["files"]
    assert set(files) == {"json", "markdown", "ppl_vs_length", "loss_vs_position"}
    assert files["json"] == str(tmp_path / "eval" / "eval.json")
    assert all(is_png(files[k]) for k in ("ppl_vs_length", "loss_vs_position"))
