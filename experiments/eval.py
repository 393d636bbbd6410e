r"""Evaluates a trained checkpoint: perplexity against length with the loss per position
bucket, a retrieval accuracy grid (lengths x needle depths) and the forward pass's time and
memory against length.

  python -m experiments.eval --config=configs/lm_tiny.py --workdir=/tmp/lm_tiny \
      --suite=ppl,retrieval,efficiency --eval_lens=512,1024,2048,4096 --max_windows=16 \
      --task=passkey --depths=0,0.25,0.5,0.75,1 --trials=10 --eff_lens=512,1024,2048,4096

  # a landmark model: perplexity through LandmarkDecoder (chunks + top-k retrieval)
  python -m experiments.eval --config=configs/landmark.py --workdir=/tmp/landmark \
      --suite=ppl --eval_lens=512,2048,8192,32768 --top_k=4 --chunk_blocks=8

Loads the latest checkpoint in ``--workdir`` (the config must be the one the run trained
with). Suites (``--suite``, comma-separated):

- ``ppl``: ``jaxattn.evaluation.perplexity_by_length`` on the run's validation split, cut into
  non-overlapping windows of each ``--eval_lens`` length (at most ``--max_windows`` each).
  Landmark models read the windows with ``LandmarkDecoder`` (``--ppl_method=auto``; ``forward``
  runs the grouped softmax over the whole window instead).
- ``retrieval``: ``jaxattn.evaluation.retrieval_grid`` for ``--task`` at ``--retrieval_lens``
  (default ``--eval_lens``) x ``--depths`` with ``--trials`` prompts per cell.
- ``efficiency``: ``jaxattn.evaluation.forward_efficiency`` at ``--eff_lens`` (default
  ``--eval_lens``).

Writes ``eval.json``, ``eval.md`` and PNG plots to ``--out`` (default ``WORKDIR/eval``). The
model is evaluated on the first device.
"""

import dataclasses
import os
import time

import jax
from absl import app, flags, logging
from flax import nnx
from ml_collections import config_flags

from jaxattn.evaluation import perplexity as ppl_lib
from jaxattn.evaluation import report
from jaxattn.evaluation import retrieval as retrieval_lib
from jaxattn.inference import RetrievalConfig
from jaxattn.training import builders
from jaxattn.training.trainer import load_checkpoint, model_from_state

SUITES = ("ppl", "retrieval", "efficiency")


def define_flags():
    """Defines the command-line flags. Called only when this file runs as a program, so that
    ``run`` can be imported next to other entry points that define flags of the same names
    (``experiments.bench`` has ``--suite``, ``--out`` and ``--repeats``)."""
    config_flags.DEFINE_config_file("config", None, "Config the model was trained with.")
    flags.DEFINE_string("workdir", None, "Workdir of the run (its checkpoints).")
    flags.DEFINE_string("out", None, "Report directory (default WORKDIR/eval).")
    flags.DEFINE_list("suite", list(SUITES), f"Suites to run: any of {', '.join(SUITES)}.")
    flags.DEFINE_list("eval_lens", ["512", "1024", "2048", "4096"],
                      "ppl: evaluation lengths in tokens (also the default of "
                      "--retrieval_lens and --eff_lens).")
    flags.DEFINE_integer("max_windows", 16,
                         "ppl: windows per length at most (0: the whole validation split).")
    flags.DEFINE_integer("batch_size", 1, "Windows (ppl) or prompts (retrieval) run together.")
    flags.DEFINE_string("buckets", ppl_lib.DEFAULT_BUCKETS,
                        "ppl: position buckets, 'pow2:N' or 'linear:N'.")
    flags.DEFINE_enum("ppl_method", "auto", list(ppl_lib.METHODS),
                      "ppl: auto (the decoder for landmark models), forward or decoder.")
    flags.DEFINE_string("task", "passkey",
                        f"retrieval: one of {', '.join(retrieval_lib.tasks.RETRIEVAL_TASKS)}.")
    flags.DEFINE_list("retrieval_lens", None, "retrieval: prompt lengths (default --eval_lens).")
    flags.DEFINE_list("depths", ["0", "0.25", "0.5", "0.75", "1"],
                      "retrieval: needle depths in [0, 1], or 'random'.")
    flags.DEFINE_integer("trials", 10, "retrieval: prompts per (length, depth).")
    flags.DEFINE_integer("seed", 0, "retrieval: seed of the needles.")
    flags.DEFINE_integer("top_k", 4, "Landmark: blocks retrieved per head and token.")
    flags.DEFINE_integer("chunk_blocks", 8, "Landmark: blocks per window.")
    flags.DEFINE_string("selection", "per_token_and_head", "Landmark: block selection.")
    flags.DEFINE_bool("offload", False, "Landmark: keep the block cache in host memory.")
    flags.DEFINE_list("eff_lens", None, "efficiency: lengths (default --eval_lens).")
    flags.DEFINE_integer("eff_batch", 1, "efficiency: batch size.")
    flags.DEFINE_integer("repeats", 3, "efficiency: timed calls (the median is reported).")
    flags.DEFINE_bool("progress", True, "Show progress bars.")
    flags.mark_flags_as_required(["config", "workdir"])


def parse_suites(suites) -> list[str]:
    """Suite names from a list or a comma-separated string; ``ValueError`` for unknown ones."""
    if isinstance(suites, str):
        suites = suites.split(",")
    names = [s.strip() for s in suites if s.strip()]
    unknown = [s for s in names if s not in SUITES]
    if unknown or not names:
        raise ValueError(f"unknown suite(s) {unknown or names}; valid suites: {', '.join(SUITES)}")
    return list(dict.fromkeys(names))


def parse_lengths(values, what: str) -> list[int]:
    try:
        lengths = [int(v) for v in values]
    except (TypeError, ValueError):
        raise ValueError(f"{what} must be positive integers, got {values!r}") from None
    if not lengths or any(n < 1 for n in lengths):
        raise ValueError(f"{what} must be positive integers, got {values!r}")
    return lengths


def parse_depths(values) -> list[float | None]:
    depths = []
    for v in values:
        if isinstance(v, str) and v.strip().lower() in ("random", "none"):
            depths.append(None)
            continue
        try:
            depths.append(float(v))
        except (TypeError, ValueError):
            raise ValueError(f"depths must be numbers in [0, 1] or 'random', got {v!r}") from None
    return depths


def check_checkpoint_dir(workdir: str) -> str:
    """The run's checkpoint directory; ``FileNotFoundError`` naming it when it holds no step
    (checked before building anything, and without creating it)."""
    directory = os.path.abspath(os.path.join(workdir, "checkpoints"))
    steps = ([d for d in os.listdir(directory) if d.isdigit()]
             if os.path.isdir(directory) else [])
    if not steps:
        raise FileNotFoundError(f"no checkpoint under {directory}; train the model first "
                                f"(python -m experiments.train --workdir={workdir} ...)")
    return directory


def _on_first_device(model):
    graph, state = nnx.split(model)
    return nnx.merge(graph, jax.device_put(state, jax.devices()[0]))


def run(config, workdir: str, *, out: str | None = None, suites=SUITES,
        eval_lens=(512, 1024, 2048, 4096), max_windows: int | None = 16, batch_size: int = 1,
        buckets: str = ppl_lib.DEFAULT_BUCKETS, ppl_method: str = "auto", task: str = "passkey",
        retrieval_lens=None, depths=retrieval_lib.DEFAULT_DEPTHS, trials: int = 10,
        seed: int = 0, retrieval: RetrievalConfig | None = None, eff_lens=None,
        eff_batch: int = 1, repeats: int = 3, progress: bool = True, model=None,
        step: int | None = None) -> dict:
    """Runs the suites on the latest checkpoint of ``workdir`` and writes the report to
    ``out`` (default ``WORKDIR/eval``); returns the results (``eval.json``'s content) with
    ``"files"``: the paths written.

    ``model``: evaluate this ``TransformerLM`` instead of a checkpoint (a converted model,
    say); ``workdir`` then only places the default ``out``, ``config`` still gives the data,
    and ``step`` is reported as the step.

    Every argument is checked before the checkpoint is loaded: unknown suites or task,
    lengths too short for the task or not fitting the run's data (``ValueError``), a workdir
    without checkpoint (``FileNotFoundError``).
    """
    suites = parse_suites(suites)
    eval_lens = parse_lengths(eval_lens, "eval_lens")
    retrieval = retrieval or RetrievalConfig()
    data_cfg = builders.data_config(config)
    if "ppl" in suites:
        if ppl_method not in ppl_lib.METHODS:
            raise ValueError(f"ppl_method must be one of {', '.join(ppl_lib.METHODS)}, got "
                             f"{ppl_method!r}")
        if ppl_method == "decoder" and builders.model_config(config).landmark is None:
            raise ValueError("ppl_method='decoder' needs a landmark model; use auto or forward")
        ppl_lib.bucket_edges(max(eval_lens), buckets)
        for length in eval_lens:
            try:
                dataclasses.replace(data_cfg, seq_len=length, batch_size=batch_size)
            except ValueError as e:
                raise ValueError(f"eval length {length}: {e}") from e
    if "retrieval" in suites:
        retrieval_lib.check_task(task)
        retrieval_lens = retrieval_lib.check_lengths(
            task, parse_lengths(retrieval_lens or eval_lens, "retrieval_lens"))
        if not retrieval_lib.takes_depth(task):
            logging.warning("task %s places its needles itself; one column of random depths",
                            task)
            depths = None
        else:
            depths = retrieval_lib.check_depths(task, depths)
    eff_lens = parse_lengths(eff_lens or eval_lens, "eff_lens")
    if model is None:
        check_checkpoint_dir(workdir)
        model_cfg, state, _ = load_checkpoint(config, workdir)
        step = int(state.step)
        model = _on_first_device(model_from_state(model_cfg, state))
        del state
    else:
        model_cfg = model.cfg
        model = _on_first_device(model)
    landmark = model_cfg.landmark is not None
    results = {"meta": {
        "workdir": os.path.abspath(workdir), "step": step,
        "device": jax.devices()[0].device_kind, "platform": jax.devices()[0].platform,
        "attention": ",".join(dict.fromkeys(spec.kind for spec in model_cfg.attention)),
        "titans": getattr(getattr(model_cfg, "titans", None), "arch", None),
        "train_len": model_cfg.train_len, "corpus": data_cfg.corpus, "suites": suites}}
    settings = {"batch_size": batch_size}
    if "ppl" in suites:
        settings.update(eval_lens=eval_lens, max_windows=max_windows, buckets=buckets,
                        ppl_method=ppl_lib.resolve_method(model, ppl_method))
    if "retrieval" in suites:
        settings.update(task=task, retrieval_lens=retrieval_lens, trials=trials, seed=seed)
    if "efficiency" in suites:
        settings.update(eff_lens=eff_lens, eff_batch=eff_batch, repeats=repeats)
    results["meta"]["settings"] = settings
    if landmark:
        results["meta"]["retrieval_config"] = dataclasses.asdict(retrieval)
    timings = {}
    if "ppl" in suites:
        start = time.perf_counter()
        results["ppl"] = ppl_lib.perplexity_by_length(
            model, data_cfg, eval_lens, batch_size=batch_size, max_windows=max_windows,
            buckets=buckets, method=ppl_method, retrieval=retrieval, progress=progress)
        timings["ppl"] = time.perf_counter() - start
    if "retrieval" in suites:
        start = time.perf_counter()
        results["retrieval"] = retrieval_lib.retrieval_grid(
            model, task, retrieval_lens, depths, trials=trials, seed=seed,
            batch_size=batch_size, retrieval=retrieval, progress=progress)
        timings["retrieval"] = time.perf_counter() - start
    if "efficiency" in suites:
        start = time.perf_counter()
        results["efficiency"] = ppl_lib.forward_efficiency(
            model, eff_lens, batch_size=eff_batch, repeats=repeats, progress=progress)
        timings["efficiency"] = time.perf_counter() - start
    results["meta"]["seconds"] = {k: round(v, 2) for k, v in timings.items()}
    out = out or os.path.join(workdir, "eval")
    results["files"] = report.write_report(results, out, title=f"Evaluation of step {step}")
    return results


def main(argv):
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments: {argv[1:]}")
    f = flags.FLAGS
    retrieval = RetrievalConfig(top_k=f.top_k, chunk_blocks=f.chunk_blocks,
                                selection=f.selection, offload=f.offload)
    results = run(
        f.config, f.workdir, out=f.out, suites=f.suite, eval_lens=f.eval_lens,
        max_windows=f.max_windows or None, batch_size=f.batch_size, buckets=f.buckets,
        ppl_method=f.ppl_method, task=f.task, retrieval_lens=f.retrieval_lens,
        depths=parse_depths(f.depths), trials=f.trials, seed=f.seed, retrieval=retrieval,
        eff_lens=f.eff_lens, eff_batch=f.eff_batch, repeats=f.repeats, progress=f.progress)
    with open(results["files"]["markdown"]) as fh:
        print(fh.read())
    print("wrote", ", ".join(sorted(results["files"].values())))


if __name__ == "__main__":
    define_flags()
    app.run(main)
