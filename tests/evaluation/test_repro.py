"""The reproduction suite: ``configs/repro.py`` for every kind and size, the comparison report
(``jaxattn.evaluation.comparison``) from hand-made results, and ``experiments/repro.py`` end
to end on a few training steps (train, evaluate, convert dense to LSG, skip, report only)."""

import json
import math
import os
import subprocess
import sys

import numpy as np
import pytest

from configs import repro as repro_config
from experiments import repro
from jaxattn.conversion import lsg_model_config
from jaxattn.evaluation import comparison
from jaxattn.evaluation.retrieval import runnable_length
from jaxattn.training import NonFiniteLossError, builders
from tests.training.helpers import REPO

PNG = b"\x89PNG\r\n\x1a\n"


def is_png(path):
    with open(path, "rb") as f:
        return f.read(8) == PNG


# --------------------------------------------------------------------------- configs


def _shared(config):
    """Everything but the attention and Titans blocks (train.progress aside)."""
    d = config.to_dict()
    del d["attention"]
    del d["model"]["titans"]
    return d


@pytest.mark.parametrize("size", repro_config.SIZES)
def test_every_kind_builds_and_runs_at_every_eval_length(size):
    configs = {k: repro_config.get_config(f"kind={k},size={size}") for k in repro_config.KINDS}
    reference = _shared(configs["dense"])
    train_len = configs["dense"].data.seq_len
    assert train_len == {"tiny": 512, "cpu": 512, "small": 1024}[size]
    assert set(repro.SIZE_DEFAULTS) == set(repro_config.SIZES)  # evaluation settings too
    lengths = repro_config.eval_lengths(configs["dense"], (1, 2, 4, 8, 16))
    assert lengths == [train_len * f for f in (1, 2, 4, 8, 16)]
    kinds_seen = set()
    for kind, config in configs.items():
        assert _shared(config) == reference, kind  # same model size, data, optimizer, seed
        model_cfg = builders.model_config(config)
        data_cfg = builders.data_config(config)
        assert data_cfg.corpus == "task:niah_single_2"
        for length in lengths:
            assert runnable_length(model_cfg, length) == length, (kind, length)
            assert length % data_cfg.align == 0
        if model_cfg.titans is not None:
            assert model_cfg.titans.arch == "mac"
            kinds_seen.add("titans_mac")
        else:
            kinds_seen |= {spec.kind for spec in model_cfg.attention}
    assert kinds_seen == {"dense", "ssmax", "landmark", "lsg", "routing", "titans_mac"}
    # The dense model converted with the lsg kind's geometry runs at every length too.
    lsg = lsg_model_config(builders.model_config(configs["dense"]),
                           **repro_config.lsg_options(configs["lsg"]))
    for length in lengths:
        assert runnable_length(lsg, length) == length


def test_config_arguments():
    config = repro_config.get_config("kind=routing,size=small,steps=300,seq_len=512,"
                                     "task=passkey")
    assert config.train.steps == 300 and config.train.eval_every == 300
    assert config.data.seq_len == 512 and config.data.corpus == "task:passkey"
    assert config.attention.cluster_size == 32 and config.attention.block_size == 32
    with pytest.raises(ValueError, match="unknown kind 'mamba'; valid kinds: dense, ssmax, "
                                         "landmark, lsg, routing, titans_mac"):
        repro_config.get_config("kind=mamba")
    with pytest.raises(ValueError, match="unknown size 'huge'; valid sizes: tiny, cpu, small"):
        repro_config.get_config("size=huge")
    config = repro_config.get_config("kind=dense,size=cpu,seed=7")
    assert config.seed == 7 and repro_config.get_config("kind=dense,size=cpu").seed == 0
    assert repro.config_arg("lsg", size="cpu", task="passkey", seed=7, steps=50) == (
        "kind=lsg,size=cpu,task=passkey,steps=50,seed=7")
    assert repro.config_arg("lsg", size="cpu", task="passkey") == "kind=lsg,size=cpu,task=passkey"
    with pytest.raises(ValueError, match=r"seed must be an int in \[0, 2\*\*32\), got -1"):
        repro_config.get_config("seed=-1")
    with pytest.raises(ValueError, match="seq_len must be a multiple of 128"):
        repro_config.get_config("seq_len=600")
    with pytest.raises(ValueError, match="task must be a retrieval task"):
        repro_config.get_config("task=mqar")
    with pytest.raises(ValueError, match="too short for task 'babilong_qa1'"):
        repro_config.get_config("task=babilong_qa1")
    with pytest.raises(ValueError, match="unknown config argument 'layers'"):
        repro_config.get_config("layers=3")


def test_suite_settings_and_errors():
    assert repro.answer_room("passkey") == 8
    assert repro.answer_room("niah_single_2") == 16
    assert repro.answer_room("niah_single_3") == 40
    assert repro.check_kinds(["lsg_from_dense", "dense"]) == ["dense", "lsg_from_dense"]
    with pytest.raises(ValueError, match="valid kinds: dense, ssmax, landmark, lsg, routing, "
                                         "titans_mac, lsg_from_dense"):
        repro.check_kinds(["dense", "bigbird"])
    config = repro_config.get_config("size=tiny")
    settings = repro.eval_settings(config, task="niah_single_2", max_windows=2, depths=["0.5"],
                                   trials=1, batch_size=1, repeats=1, top_k=4, chunk_blocks=8)
    assert settings["eval_lens"] == [512, 1024, 2048, 4096]
    assert settings["retrieval_lens"] == [496, 1008, 2032, 4080]
    with pytest.raises(ValueError, match=r"eval_lens \[256\] are too short for task "
                                         r"'niah_single_2'"):
        repro.eval_settings(config, task="niah_single_2", eval_lens=[256, 512], max_windows=2,
                            depths=["0.5"], trials=1, batch_size=1, repeats=1, top_k=4,
                            chunk_blocks=8)
    with pytest.raises(ValueError, match="ppl_corpus"):
        repro.eval_settings(config, task="passkey", ppl_corpus="books", max_windows=2,
                            depths=["0.5"], trials=1, batch_size=1, repeats=1, top_k=4,
                            chunk_blocks=8)


def test_suite_checks_before_running(tmp_path):
    workdir = tmp_path / "never"
    with pytest.raises(ValueError, match="eval length 600 does not fit kind landmark"):
        repro.run_suite(str(workdir), size="tiny", kinds=["dense", "landmark"],
                        eval_lens=[512, 600])
    with pytest.raises(ValueError, match="lsg_from_dense needs the dense run trained to 20 "
                                         "steps"):
        repro.run_suite(str(workdir), size="tiny", kinds=["lsg_from_dense"])
    with pytest.raises(ValueError, match="max_windows must be a non-negative int"):
        repro.run_suite(str(workdir), size="tiny", kinds=["dense"], max_windows=-1)
    assert not workdir.exists()


# --------------------------------------------------------------------------- report


def _eval(train_len, losses, accuracy=None, eff=None):
    """An ``eval.json``-like dict: perplexity rows at ``losses`` ({length: loss}, two buckets
    each), a retrieval grid ({prompt length: [accuracy per depth]}), efficiency rows."""
    results = {"meta": {"train_len": train_len, "device": "cpu", "step": 5}, "ppl": [
        {"length": n, "loss": x, "perplexity": math.exp(x), "bits_per_byte": x / math.log(2),
         "window_mean_loss": x, "windows": 1, "tokens": n, "method": "forward",
         "buckets": [{"start": 0, "stop": n // 2, "tokens": n // 2, "loss": x - 0.1},
                     {"start": n // 2, "stop": n, "tokens": n // 2, "loss": x + 0.1}]}
        for n, x in losses.items()]}
    if accuracy:
        results["retrieval"] = {"task": "passkey", "lengths": list(accuracy),
                                "depths": [0.0, 1.0], "trials": 4, "seed": 0,
                                "method": "full attention", "accuracy": list(accuracy.values()),
                                "rows": []}
    if eff:
        results["efficiency"] = eff
    return results


def _eff(tokens_per_s, peak, error=None):
    return [{"length": 256, "tokens_per_s": 1.0, "peak_bytes": 1, "error": None},
            {"length": 1024, "tokens_per_s": tokens_per_s, "peak_bytes": peak, "error": error}]


def fake_records():
    train = lambda steps, seconds, loss: {"steps": steps, "seconds": seconds,
                                          "final_eval": {"loss": loss, "perplexity": 1.0}}
    return [
        {"kind": "dense", "params": 5_181_696, "train": train(2000, 95.4, 1.25),
         "eval": _eval(256, {256: 1.5, 512: 2.5, 1024: 4.0},
                       {248: [1.0, 0.5], 504: [0.0, 0.0], 1016: [0.0, 0.0]},
                       _eff(20000.0, 3 * 2**20))},
        {"kind": "ssmax", "params": 5_181_744, "train": train(2000, 101.0, 1.2),
         "eval": _eval(256, {256: 1.4, 512: 1.45, 1024: 1.5},
                       {248: [1.0, 1.0], 504: [0.5, 0.5], 1016: [0.25, 0.0]},
                       _eff(19000.0, 3 * 2**20))},
        {"kind": "landmark", "params": 5_181_696, "train": train(2000, 130.0, 1.3),
         "eval": _eval(256, {256: 1.6, 512: 1.6, 1024: 1.65},
                       {248: [1.0, 1.0], 504: [1.0, 0.5], 1016: [1.0, 1.0]},
                       _eff(None, None, "RESOURCE_EXHAUSTED"))},
        {"kind": "routing", "config_arg": "kind=routing,size=small",
         "error": "NonFiniteLossError: loss is nan at step 12 | stopping"},
        {"kind": "lsg_from_dense", "params": 5_181_952,
         "train": {"steps": 0, "seconds": None, "final_eval": None, "converted_from": "dense",
                   "source_step": 2000},
         "eval": _eval(256, {256: 1.55, 512: 1.6, 1024: 1.62})},
    ]


def test_comparison_report_from_hand_made_results(tmp_path):
    files = comparison.write_comparison(fake_records(), str(tmp_path), title="Toy",
                                        meta={"size": "small"}, missing=["titans_mac"])
    assert set(files) == {"json", "markdown", "ppl_vs_length", "retrieval_vs_length",
                          "loss_vs_position"}
    for name in ("ppl_vs_length", "retrieval_vs_length", "loss_vs_position"):
        assert is_png(files[name]) and os.path.getsize(files[name]) > 5000
    with open(files["markdown"]) as f:
        markdown = f.read()
    assert markdown.startswith("# Toy\n\n- size: small\n")
    e = lambda x: f"{math.exp(x):.3f}"
    assert ("| kind | params | train steps / time | final val loss | ppl@256 | ppl@512 | "
            "ppl@1024 | acc@248 | acc@504 | acc@1016 | eff. length | tokens/s | peak MiB |"
            in markdown)
    assert (f"| dense | 5.18M | 2000 / 95 s | 1.2500 | {e(1.5)} | {e(2.5)} | {e(4.0)} | 0.75 | "
            "0.00 | 0.00 | 1024 | 20000 | 3.0 |") in markdown
    assert (f"| ssmax | 5.18M | 2000 / 101 s | 1.2000 | {e(1.4)} | {e(1.45)} | {e(1.5)} | 1.00 | "
            "0.50 | 0.12 | 1024 | 19000 | 3.0 |") in markdown
    assert "| landmark | 5.18M | 2000 / 130 s | 1.3000 |" in markdown
    assert "| 1.00 | 0.75 | 1.00 | 1024 | error | — |" in markdown
    assert (f"| lsg_from_dense | 5.18M | 0 (converted from dense step 2000) | — | {e(1.55)} | "
            f"{e(1.6)} | {e(1.62)} | — | — | — | — | — | — |") in markdown
    assert "| titans_mac | no results |" in markdown
    assert "| routing | failed: NonFiniteLossError: loss is nan at step 12 \\| stopping |" in (
        markdown)
    # The claims section quotes the table's numbers.
    assert ("| SSMax keeps loss flat past the training length where softmax degrades | "
            "loss(L) - loss(T), nats/token: dense +2.500 at 1024; ssmax +0.100 at 1024 |"
            in markdown)
    assert ("landmark: 1.00 within T; 0.88 past T (0.75@504, 1.00@1016); dense: 0.75 within "
            "T; 0.00 past T (0.00@504, 0.00@1016)") in markdown
    assert ("lsg_from_dense +0.120 at 1024; dense +2.500 at 1024" in markdown)
    assert "Titans" not in markdown  # no titans_mac results, no claim row
    with open(files["json"]) as f:
        data = json.load(f)
    assert data["missing"] == ["titans_mac"]
    rows = {r["kind"]: r for r in data["rows"]}
    assert rows["dense"]["loss"] == {"256": 1.5, "512": 2.5, "1024": 4.0}
    assert rows["ssmax"]["retrieval"]["1016"] == 0.125
    assert rows["landmark"]["eff_error"] == "RESOURCE_EXHAUSTED"
    assert rows["lsg_from_dense"]["retrieval"] == {} and rows["lsg_from_dense"]["steps"] == 0
    assert rows["routing"]["error"].startswith("NonFiniteLossError")
    assert rows["routing"]["ppl"] == {}


def test_comparison_report_parts_are_optional(tmp_path):
    records = fake_records()[4:]  # perplexity only
    files = comparison.write_comparison(records, str(tmp_path))
    assert set(files) == {"json", "markdown", "ppl_vs_length", "loss_vs_position"}
    files = comparison.write_comparison([], str(tmp_path / "empty"), missing=["dense"])
    assert set(files) == {"json", "markdown"}
    with open(files["markdown"]) as f:
        assert "| dense | no results |" in f.read()
    # Runs trained at different lengths are flagged.
    other = fake_records()[1]
    other["eval"]["meta"]["train_len"] = 512
    files = comparison.write_comparison([fake_records()[0], other], str(tmp_path / "mixed"))
    with open(files["markdown"]) as f:
        assert "trained at different lengths [256, 512]" in f.read()


# --------------------------------------------------------------------------- end to end


@pytest.mark.slow  # trains dense and SSMax and converts to LSG through the command line
def test_cli_trains_evaluates_converts_and_reports(tmp_path, monkeypatch):
    workdir = tmp_path / "suite"
    flags = [f"--workdir={workdir}", "--size=tiny", "--kinds=dense,ssmax,lsg_from_dense",
             "--task=passkey", "--seq_len=256", "--steps=3", "--eval_lens=256,512",
             "--trials=1", "--depths=0.5", "--max_windows=1", "--repeats=1", "--progress=false"]
    env = dict(os.environ, JAX_PLATFORMS="cpu",
               XLA_FLAGS="--xla_force_host_platform_device_count=1")
    proc = subprocess.run([sys.executable, "-m", "experiments.repro", *flags], cwd=REPO, env=env,
                          capture_output=True, text=True, timeout=400)
    assert proc.returncode == 0, proc.stderr[-3000:]
    for name in ("repro.json", "repro.md", "ppl_vs_length.png", "retrieval_vs_length.png",
                 "loss_vs_position.png"):
        assert (workdir / name).exists(), name
    assert is_png(workdir / "ppl_vs_length.png")
    with open(workdir / "repro.json") as f:
        report = json.load(f)
    assert [r["kind"] for r in report["rows"]] == ["dense", "ssmax", "lsg_from_dense"]
    assert report["missing"] == []
    markdown = (workdir / "repro.md").read_text()
    assert "--kinds=dense,ssmax,lsg_from_dense" in markdown  # the command is recorded
    for row in report["rows"]:
        kind = row["kind"]
        with open(workdir / kind / "eval" / "eval.json") as f:
            results = json.load(f)
        # Every number of the row is the kind's own evaluation.
        assert [r["length"] for r in results["ppl"]] == [256, 512]
        assert row["ppl"] == {str(r["length"]): r["perplexity"] for r in results["ppl"]}
        assert results["retrieval"]["lengths"] == [248, 504]  # L - answer room of passkey
        assert row["retrieval"] == {"248": results["retrieval"]["accuracy"][0][0],
                                    "504": results["retrieval"]["accuracy"][1][0]}
        assert row["tokens_per_s"] == results["efficiency"][-1]["tokens_per_s"] > 0
        assert all(np.isfinite(v) for v in row["ppl"].values())
        cell = f"{row['ppl']['512']:.3f}"
        assert any(line.startswith(f"| {kind} |") and cell in line
                   for line in markdown.splitlines())
        if kind == "lsg_from_dense":
            assert results["meta"]["attention"] == "lsg" and row["source_step"] == 3
            assert row["params"] == report["rows"][0]["params"] + 64  # one global token
        else:
            assert row["steps"] == 3 and row["final_loss"] > 0 and row["train_seconds"] > 0
            assert results["meta"]["step"] == 3
    # A second run finds everything done and changes nothing; report_only rebuilds the report
    # from the summaries and lists requested kinds that have none.
    stamp = os.path.getmtime(workdir / "dense" / "eval" / "eval.json")
    kwargs = dict(size="tiny", kinds=["dense", "ssmax", "lsg_from_dense"], task="passkey",
                  steps=3, seq_len=256, eval_lens=[256, 512], max_windows=1, depths=["0.5"],
                  trials=1, repeats=1, progress=False)
    _, failures = repro.run_suite(str(workdir), **kwargs)
    assert failures == {}
    assert os.path.getmtime(workdir / "dense" / "eval" / "eval.json") == stamp
    os.remove(workdir / "repro.md")
    files, _ = repro.run_suite(str(workdir), **dict(kwargs, kinds=["dense", "landmark"]),
                               report_only=True)
    markdown = (workdir / "repro.md").read_text()
    assert files["markdown"] == str(workdir / "repro.md")
    assert "| landmark | no results |" in markdown and "| ssmax | 98" in markdown
    # Another size in the same directory is refused rather than restored into the wrong shape.
    with pytest.raises(ValueError, match="holds a run of another config"):
        repro.run_suite(str(workdir), **dict(kwargs, kinds=["dense"], seq_len=384))
    # A kind that fails is reported as failed; the others still run (here: are skipped).
    real = repro.run_trained_kind

    def diverging(kind, *args, **kw):
        if kind == "ssmax":
            raise NonFiniteLossError("loss is nan at step 2")
        return real(kind, *args, **kw)

    monkeypatch.setattr(repro, "run_trained_kind", diverging)
    _, failures = repro.run_suite(str(workdir), **kwargs)
    assert failures == {"ssmax": "NonFiniteLossError: loss is nan at step 2"}
    markdown = (workdir / "repro.md").read_text()
    assert "| ssmax | failed: NonFiniteLossError: loss is nan at step 2 |" in markdown
    assert "| dense | 98.9k | 3 / " in markdown and "| lsg_from_dense | 98.9k |" in markdown
