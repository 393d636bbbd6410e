r"""The reproduction suite: trains the same small LM with each attention kind, evaluates every
one past its training length and writes a comparison report.

  # CPU, a sanity check (the smoke model, 20 steps, 512 tokens; minutes)
  python -m experiments.repro --workdir=/tmp/repro_tiny --size=tiny

  # CPU, every claim at a scale a 2-core CPU trains (2 layers x 128, 600 steps of 8 x 512)
  python -m experiments.repro --workdir=/tmp/repro_cpu --size=cpu

  # one GPU (6 layers x 256, 2000 steps of 16 x 1024 tokens)
  python -m experiments.repro --workdir=/tmp/repro_small --size=small

Each kind of ``--kinds`` (``dense, ssmax, landmark, lsg, routing, titans_mac``) trains with
``configs/repro.py:kind=KIND,size=SIZE`` in ``WORKDIR/KIND`` (an interrupted run resumes, a
finished one is not trained again), then ``experiments.eval.run`` writes
``WORKDIR/KIND/eval/eval.json`` (+ Markdown and plots):

- ``ppl``: perplexity at ``--eval_lens`` (default: the training length T times 1, 2, 4, 8) on
  the validation split of ``--ppl_corpus`` (default the embedded KJV text, the language of the
  training haystacks; ``train`` for the training task's own windows), with the loss per
  position bucket;
- ``retrieval``: needle accuracy for ``--task`` (the training task, default
  ``niah_single_2``) at prompts of ``L - room`` tokens for each evaluation length ``L`` (room
  for the answer, so at ``L = T`` the answer ends inside the trained positions, as in
  training) x ``--depths``, ``--trials`` prompts per cell;
- ``efficiency``: forward time and peak memory at each evaluation length.

``lsg_from_dense`` (in ``--kinds`` by default) is the trained dense checkpoint converted to
LSG attention with the ``lsg`` kind's geometry (``jaxattn.conversion``, no retraining) and
evaluated the same way in ``WORKDIR/lsg_from_dense``.

Each kind's summary goes to ``WORKDIR/KIND/repro_kind.json``; a kind whose summary matches
the requested steps and evaluation settings is skipped (``--reeval`` evaluates it again).
Then the comparison of every kind found in ``WORKDIR`` is written: ``repro.json``,
``repro.md`` (one table, and the numbers bearing on each claim) and ``ppl_vs_length.png``,
``retrieval_vs_length.png``, ``loss_vs_position.png``. ``--report_only`` only rebuilds the
comparison from the summaries present, so kinds run in separate invocations or on separate
machines (copy their ``WORKDIR/KIND`` directories together) combine into one report.
"""

import json
import os
import sys
import time

import jax
from absl import app, flags, logging
from flax import nnx

from configs import repro as repro_config
from experiments import eval as eval_cli
from jaxattn import conversion, sharding
from jaxattn.data import DataConfig, tasks
from jaxattn.evaluation import comparison, report
from jaxattn.inference import RetrievalConfig
from jaxattn.nn.transformer import TransformerLM
from jaxattn.training import builders, train_and_evaluate
from jaxattn.training.state import TrainState
from jaxattn.training.steps import make_eval_step
from jaxattn.training.trainer import evaluate, load_checkpoint, model_from_state

CONVERTED = "lsg_from_dense"
ALL_KINDS = repro_config.KINDS + (CONVERTED,)
RECORD = "repro_kind.json"
PPL_TRAIN = "train"

# Evaluation settings by size; flags override them.
SIZE_DEFAULTS = {
    "tiny": {"max_windows": 4, "depths": ["0", "0.5", "1"], "trials": 2, "batch_size": 1,
             "repeats": 1},
    "cpu": {"max_windows": 0, "depths": ["0", "0.5", "1"], "trials": 4, "batch_size": 4,
            "repeats": 2},
    "small": {"max_windows": 0, "depths": ["0", "0.25", "0.5", "0.75", "1"], "trials": 10,
              "batch_size": 5, "repeats": 3},
}


def define_flags():
    """The command-line flags (defined only when this file runs as a program)."""
    flags.DEFINE_string("workdir", None, "Root of the runs (one directory per kind) and the "
                        "comparison report.")
    flags.DEFINE_enum("size", "tiny", list(repro_config.SIZES),
                      "tiny: the smoke model, a sanity check; cpu: 2 layers x 128, the whole "
                      "suite in about an hour on a 2-core CPU; small: the GPU model.")
    flags.DEFINE_list("kinds", list(ALL_KINDS), f"Kinds to run: any of {', '.join(ALL_KINDS)}.")
    flags.DEFINE_integer("steps", 0, "Training steps per kind (0: the size's default).")
    flags.DEFINE_integer("seq_len", 0, "Training length (0: the size's default).")
    flags.DEFINE_integer("seed", 0, "Initialisation and data-order seed of every kind (the "
                         "retrieval prompts stay the same).")
    flags.DEFINE_string("task", repro_config.DEFAULT_TASK,
                        f"Training task and retrieval task: one of "
                        f"{', '.join(tasks.RETRIEVAL_TASKS)}.")
    flags.DEFINE_list("eval_lens", [], "Evaluation lengths (default: T, 2T, 4T, 8T).")
    flags.DEFINE_string("ppl_corpus", "builtin:kjv",
                        "Corpus whose validation split scores perplexity, or 'train' for the "
                        "training task's validation windows.")
    flags.DEFINE_integer("max_windows", None, "ppl: windows per length, 0 for the whole split "
                         "(default by size: 4 tiny, 0 small, so that every length scores the "
                         "same text).")
    flags.DEFINE_list("depths", None, "retrieval: needle depths (default by size).")
    flags.DEFINE_integer("trials", None, "retrieval: prompts per cell (default by size).")
    flags.DEFINE_integer("answer_room", 0, "retrieval: prompt length = L - answer_room "
                         "(0: the task's longest answer + EOS, rounded up to 8).")
    flags.DEFINE_integer("batch_size", None, "Windows / prompts run together (default by size).")
    flags.DEFINE_integer("repeats", None, "efficiency: timed calls (default by size).")
    flags.DEFINE_integer("top_k", 4, "Landmark: blocks retrieved per head and token.")
    flags.DEFINE_integer("chunk_blocks", 8, "Landmark: blocks per window.")
    flags.DEFINE_bool("report_only", False, "Only rebuild the report from the kinds' summaries "
                      "in --workdir.")
    flags.DEFINE_bool("reeval", False, "Evaluate kinds again even when their summary matches.")
    flags.DEFINE_bool("progress", True, "Show progress bars.")
    flags.mark_flags_as_required(["workdir"])


# --------------------------------------------------------------------------- settings


def check_kinds(kinds) -> list[str]:
    """The kinds in canonical order; ``ValueError`` listing the valid ones for an unknown one."""
    kinds = [k.strip() for k in kinds if k.strip()]
    unknown = [k for k in kinds if k not in ALL_KINDS]
    if unknown or not kinds:
        raise ValueError(f"unknown kind(s) {unknown or kinds} in kinds; valid kinds: "
                         f"{', '.join(ALL_KINDS)}")
    return [k for k in ALL_KINDS if k in kinds]


def config_arg(kind: str, *, size: str, task: str, steps: int = 0, seq_len: int = 0,
               seed: int = 0) -> str:
    """The ``configs/repro.py`` argument of a trained kind."""
    parts = [f"kind={kind}", f"size={size}", f"task={task}"]
    for name, value in (("steps", steps), ("seq_len", seq_len), ("seed", seed)):
        if value:
            parts.append(f"{name}={value}")
    return ",".join(parts)


def answer_room(task: str) -> int:
    """Tokens left after a retrieval prompt: the task's longest answer (over a few examples)
    plus EOS, rounded up to a multiple of 8."""
    length = tasks.min_length(task)
    longest = max(tasks.make_example(task, seed, length).answer_ids.shape[0]
                  for seed in range(16))
    return -(-(longest + 1) // 8) * 8


def eval_settings(config, *, task: str, eval_lens=(), ppl_corpus: str = "builtin:kjv",
                  max_windows: int, depths, trials: int, room: int = 0, batch_size: int,
                  repeats: int, top_k: int, chunk_blocks: int) -> dict:
    """Every evaluation setting of a kind, checked; equal settings let a run be skipped."""
    lengths = eval_cli.parse_lengths(list(eval_lens) or repro_config.eval_lengths(config),
                                     "eval_lens")
    room = room or answer_room(task)
    retrieval_lens = [n - room for n in lengths]
    minimum = tasks.min_length(task)
    short = [n for n in lengths if n - room < minimum]
    if short:
        raise ValueError(f"eval_lens {short} are too short for task {task!r}: prompts of "
                         f"length - answer_room ({room}) need at least {minimum} tokens")
    if ppl_corpus != PPL_TRAIN:
        try:
            DataConfig(corpus=ppl_corpus)
        except ValueError as e:
            raise ValueError(f"ppl_corpus: {e}") from e
    if not isinstance(max_windows, int) or max_windows < 0:
        raise ValueError(f"max_windows must be a non-negative int (0: every window), got "
                         f"{max_windows!r}")
    for name, value in (("trials", trials), ("batch_size", batch_size), ("repeats", repeats)):
        if not isinstance(value, int) or value < 1:
            raise ValueError(f"{name} must be a positive int, got {value!r}")
    return {"eval_lens": lengths, "retrieval_lens": retrieval_lens, "answer_room": room,
            "task": task, "ppl_corpus": ppl_corpus, "max_windows": max_windows,
            "depths": [None if d is None else float(d) for d in eval_cli.parse_depths(depths)],
            "trials": trials, "batch_size": batch_size, "repeats": repeats, "top_k": top_k,
            "chunk_blocks": chunk_blocks}


# --------------------------------------------------------------------------- files


def read_json(path: str):
    with open(path) as f:
        return json.load(f)


def write_json(path: str, value) -> str:
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, "w") as f:
        json.dump(report.to_jsonable(value), f, indent=2, allow_nan=False)
        f.write("\n")
    return path


def latest_step(run_dir: str) -> int:
    """The newest checkpoint step in ``run_dir/checkpoints`` (0 when there is none)."""
    directory = os.path.join(run_dir, "checkpoints")
    steps = [int(d) for d in os.listdir(directory) if d.isdigit()] if os.path.isdir(
        directory) else []
    return max(steps, default=0)


def check_run_config(config, run_dir: str) -> None:
    """Writes ``run_dir/config.json`` the first time; later, ``ValueError`` when the run there
    was trained with a different config (a checkpoint of another shape would not restore)."""
    path = os.path.join(run_dir, "config.json")
    current = json.loads(config.to_json())
    if os.path.exists(path):
        previous = read_json(path)
        ignore = ("train", "checkpoint")  # steps may grow; resuming continues the schedule
        a = {k: v for k, v in previous.items() if k not in ignore}
        b = {k: v for k, v in current.items() if k not in ignore}
        if a != b:
            raise ValueError(f"{run_dir} holds a run of another config (see {path}); use a "
                             "fresh --workdir or remove that directory")
    write_json(path, current)


def count_params(params) -> int:
    return int(sum(x.size for x in jax.tree.leaves(params)))


def _graphdef_and_params(model_cfg):
    """``(graphdef, parameter count)`` of a ``TransformerLM`` of ``model_cfg`` (no arrays)."""
    abstract = nnx.eval_shape(lambda: TransformerLM(model_cfg, rngs=nnx.Rngs(0)))
    return nnx.graphdef(abstract), count_params(nnx.state(abstract, nnx.Param))


# --------------------------------------------------------------------------- one kind


def final_eval(config, run_dir: str) -> dict:
    """The validation loss of the latest checkpoint (as the trainer's periodic evaluation)."""
    model_cfg, state, mesh = load_checkpoint(config, run_dir)
    graphdef, _ = _graphdef_and_params(model_cfg)
    step = jax.jit(make_eval_step(graphdef))
    return evaluate(step, state, builders.data_config(config), sharding.batch_sharding(mesh),
                    max_batches=config.train.eval_batches, model_cfg=model_cfg)


def train_kind(config, run_dir: str, previous: dict | None) -> dict:
    """Trains (or resumes) the run in ``run_dir``; returns its ``train`` summary. A summary of
    the same number of steps in ``previous`` is reused."""
    steps = config.train.steps
    if previous and previous.get("train", {}).get("steps") == steps and latest_step(
            run_dir) == steps:
        return previous["train"]
    start_step = latest_step(run_dir)
    start = time.perf_counter()
    metrics = train_and_evaluate(config, run_dir)
    seconds = time.perf_counter() - start
    if start_step >= steps or not metrics:  # finished before this call: nothing was timed
        seconds = None
        metrics = final_eval(config, run_dir)
    return {"steps": steps, "seconds": seconds, "resumed_from": start_step,
            "final_eval": {k: float(v) for k, v in metrics.items()}}


def _eval_config(config, settings):
    """``config`` with the perplexity corpus of ``settings`` (the model is unchanged)."""
    if settings["ppl_corpus"] == PPL_TRAIN:
        return config
    copy = config.copy_and_resolve_references()
    copy.data.corpus = settings["ppl_corpus"]
    return copy


def evaluate_kind(config, run_dir: str, settings: dict, *, model=None, step=None,
                  progress: bool = True) -> dict:
    """``experiments.eval.run`` with ``settings``; writes ``run_dir/eval/``."""
    retrieval = RetrievalConfig(top_k=settings["top_k"], chunk_blocks=settings["chunk_blocks"])
    return eval_cli.run(
        _eval_config(config, settings), run_dir, out=os.path.join(run_dir, "eval"),
        suites=eval_cli.SUITES, eval_lens=settings["eval_lens"],
        max_windows=settings["max_windows"] or None, batch_size=settings["batch_size"],
        task=settings["task"], retrieval_lens=settings["retrieval_lens"],
        depths=settings["depths"], trials=settings["trials"], retrieval=retrieval,
        eff_lens=settings["eval_lens"], repeats=settings["repeats"], progress=progress,
        model=model, step=step)


def _up_to_date(previous, settings, steps_key, steps_value, run_dir) -> bool:
    return bool(previous and previous.get("eval_settings") == settings
                and previous.get(steps_key) == steps_value
                and os.path.exists(os.path.join(run_dir, "eval", "eval.json")))


def run_trained_kind(kind: str, workdir: str, *, arg: str, settings: dict, reeval: bool = False,
                     progress: bool = True) -> dict:
    """Trains and evaluates one kind in ``workdir/kind``; returns and writes its summary."""
    config = repro_config.get_config(arg)
    if not progress:
        with config.unlocked():
            config.train.progress = False
    run_dir = os.path.join(workdir, kind)
    check_run_config(config, run_dir)
    record_path = os.path.join(run_dir, RECORD)
    previous = read_json(record_path) if os.path.exists(record_path) else None
    train = train_kind(config, run_dir, previous)
    if not reeval and _up_to_date(previous, settings, "trained_steps", train["steps"], run_dir):
        logging.info("%s: trained and evaluated already; skipping", kind)
        return previous
    logging.info("%s: evaluating at %s", kind, settings["eval_lens"])
    _, params = _graphdef_and_params(builders.model_config(config))
    evaluate_kind(config, run_dir, settings, progress=progress)
    record = {"kind": kind, "config_arg": arg, "train_len": config.data.seq_len,
              "params": params,
              "trained_steps": train["steps"], "train": train, "eval_settings": settings,
              "eval_file": "eval/eval.json"}
    write_json(record_path, record)
    return record


def converted_model(config, dense_dir: str, lsg_options: dict):
    """``(model, step, parameter count)``: the dense checkpoint in ``dense_dir`` as an LSG
    model."""
    dense_cfg, state, _ = load_checkpoint(config, dense_dir)
    lsg_cfg = conversion.lsg_model_config(dense_cfg, **lsg_options)
    params = conversion.lsg_params_from_dense(state.params, lsg_cfg)
    converted = TrainState(step=state.step, params=params, variables=state.variables,
                           opt_state=None, rng=None)
    return model_from_state(lsg_cfg, converted), int(state.step), count_params(params)


def run_converted(workdir: str, *, dense_arg: str, lsg_arg: str, settings: dict,
                  reeval: bool = False, progress: bool = True) -> dict:
    """Evaluates the dense run of ``workdir/dense`` converted to LSG, in
    ``workdir/lsg_from_dense``; returns and writes its summary."""
    config = repro_config.get_config(dense_arg)
    dense_dir = os.path.join(workdir, "dense")
    source_step = latest_step(dense_dir)
    if source_step != config.train.steps:
        raise ValueError(f"{CONVERTED} needs the dense run trained to {config.train.steps} "
                         f"steps in {dense_dir} (found step {source_step}); add dense to "
                         "--kinds")
    run_dir = os.path.join(workdir, CONVERTED)
    record_path = os.path.join(run_dir, RECORD)
    previous = read_json(record_path) if os.path.exists(record_path) else None
    if not reeval and _up_to_date(previous, settings, "source_step", source_step, run_dir):
        logging.info("%s: evaluated already; skipping", CONVERTED)
        return previous
    options = repro_config.lsg_options(repro_config.get_config(lsg_arg))
    model, step, params = converted_model(config, dense_dir, options)
    logging.info("%s: evaluating the dense step-%d model as LSG %s", CONVERTED, step, options)
    evaluate_kind(config, run_dir, settings, model=model, step=step, progress=progress)
    record = {"kind": CONVERTED, "config_arg": dense_arg, "train_len": config.data.seq_len,
              "params": params, "source_step": source_step, "lsg_options": options,
              "train": {"steps": 0, "seconds": None, "final_eval": None,
                        "converted_from": "dense", "source_step": source_step},
              "eval_settings": settings, "eval_file": "eval/eval.json"}
    write_json(record_path, record)
    return record


# --------------------------------------------------------------------------- report


def load_records(workdir: str) -> list[dict]:
    """Every kind's summary in ``workdir`` with its ``eval.json`` as ``"eval"``, in canonical
    order (kinds without ``eval.json`` are left out)."""
    records = []
    for kind in ALL_KINDS:
        path = os.path.join(workdir, kind, RECORD)
        if not os.path.exists(path):
            continue
        record = read_json(path)
        if "error" in record:
            records.append(record)
            continue
        eval_path = os.path.join(workdir, kind, record.get("eval_file", "eval/eval.json"))
        if not os.path.exists(eval_path):
            logging.warning("%s has no %s; left out of the report", kind, eval_path)
            continue
        record["eval"] = read_json(eval_path)
        records.append(record)
    return records


def write_repro_report(workdir: str, *, requested=ALL_KINDS, command: str | None = None) -> dict:
    """Writes the comparison of every kind found in ``workdir``; ``requested`` kinds without
    results are listed as missing. Returns the files written."""
    records = load_records(workdir)
    found = {r["kind"] for r in records}
    missing = [k for k in requested if k not in found]
    meta = {}
    trained = [r for r in records if "error" not in r]
    if trained:
        first = trained[0]
        settings = first.get("eval_settings", {})
        device = (first["eval"].get("meta") or {}).get("device")
        meta = {"training": first.get("config_arg", "").split(",", 1)[-1],
                "train_len": first.get("train_len"), "task": settings.get("task"),
                "perplexity corpus": settings.get("ppl_corpus"),
                "retrieval": f"prompts of L - {settings.get('answer_room')} tokens, depths "
                             f"{settings.get('depths')}, {settings.get('trials')} trials per "
                             "cell",
                "device": device}
    if command:
        meta["command"] = f"`{command}`"
    notes = ["ppl@L: perplexity of windows of L tokens; acc@N: retrieval accuracy, mean over "
             "depths, of prompts of N tokens; eff.: forward pass at the longest length."]
    differing = sorted({r.get("config_arg", "").split(",", 1)[-1] for r in trained})
    if len(differing) > 1:
        notes.append(f"Warning: the kinds were trained with different settings: {differing}.")
    return comparison.write_comparison(records, workdir, title="Reproduction suite", meta=meta,
                                       missing=missing, notes=notes)


# --------------------------------------------------------------------------- main


def run_suite(workdir: str, *, size: str, kinds, task: str = repro_config.DEFAULT_TASK,
              steps: int = 0, seq_len: int = 0, seed: int = 0, eval_lens=(),
              ppl_corpus: str = "builtin:kjv",
              max_windows: int | None = None, depths=None, trials: int | None = None,
              room: int = 0, batch_size: int | None = None, repeats: int | None = None,
              top_k: int = 4, chunk_blocks: int = 8, report_only: bool = False,
              reeval: bool = False, progress: bool = True, command: str | None = None) -> dict:
    """Runs the suite (see the module doc).

    Returns:
      ``(files, failures)``: the report's files (``write_repro_report``) and ``{kind: error}``
      for the kinds that raised; those are recorded in the report and the others still run.
    """
    kinds = check_kinds(kinds)
    if size not in repro_config.SIZES:
        raise ValueError(f"unknown size {size!r}; valid sizes: {', '.join(repro_config.SIZES)}")
    if report_only:
        return write_repro_report(workdir, requested=kinds, command=command), {}
    defaults = SIZE_DEFAULTS[size]
    args = {k: config_arg(k, size=size, task=task, steps=steps, seq_len=seq_len, seed=seed)
            for k in repro_config.KINDS}
    configs = {k: repro_config.get_config(a) for k, a in args.items()}  # all checked up front
    settings = eval_settings(
        configs["dense"], task=task, eval_lens=eval_lens, ppl_corpus=ppl_corpus,
        max_windows=defaults["max_windows"] if max_windows is None else max_windows,
        depths=depths or defaults["depths"], trials=trials or defaults["trials"], room=room,
        batch_size=batch_size or defaults["batch_size"],
        repeats=repeats or defaults["repeats"], top_k=top_k, chunk_blocks=chunk_blocks)
    for kind in kinds:
        model_cfg = builders.model_config(
            configs["lsg" if kind == CONVERTED else kind])
        for length in settings["eval_lens"]:
            try:
                for spec in model_cfg.attention:
                    spec.options.check_seq_len(length)
                if model_cfg.titans is not None:
                    model_cfg.titans.check_length("eval length", length)
            except ValueError as e:
                raise ValueError(f"eval length {length} does not fit kind {kind}: {e}") from e
    dense_dir = os.path.join(workdir, "dense")
    if (CONVERTED in kinds and "dense" not in kinds
            and latest_step(dense_dir) != configs["dense"].train.steps):
        raise ValueError(f"{CONVERTED} needs the dense run trained to "
                         f"{configs['dense'].train.steps} steps in {dense_dir}; add dense to "
                         "kinds")
    for kind in kinds:  # a directory holding another config's run fails now, not midway
        if kind != CONVERTED:
            check_run_config(configs[kind], os.path.join(workdir, kind))
    start = time.perf_counter()
    failures = {}
    for i, kind in enumerate(kinds):
        logging.info("[%d/%d] %s", i + 1, len(kinds), kind)
        kind_start = time.perf_counter()
        try:
            if kind == CONVERTED:
                run_converted(workdir, dense_arg=args["dense"], lsg_arg=args["lsg"],
                              settings=settings, reeval=reeval, progress=progress)
            else:
                run_trained_kind(kind, workdir, arg=args[kind], settings=settings,
                                 reeval=reeval, progress=progress)
        except Exception as e:  # pylint: disable=broad-except
            # One kind failing (a diverging loss, memory) must not cost the others' results.
            logging.exception("%s failed", kind)
            failures[kind] = f"{type(e).__name__}: {e}"
            write_json(os.path.join(workdir, kind, RECORD), {
                "kind": kind, "config_arg": args.get(kind, args["dense"]),
                "error": failures[kind]})
        logging.info("%s done in %.1f s", kind, time.perf_counter() - kind_start)
        jax.clear_caches()
    logging.info("suite done in %.1f s", time.perf_counter() - start)
    return write_repro_report(workdir, requested=kinds, command=command), failures


def main(argv):
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments: {argv[1:]}")
    f = flags.FLAGS
    files, failures = run_suite(
        f.workdir, size=f.size, kinds=f.kinds, task=f.task, steps=f.steps, seq_len=f.seq_len,
        seed=f.seed, eval_lens=f.eval_lens, ppl_corpus=f.ppl_corpus, max_windows=f.max_windows,
        depths=f.depths, trials=f.trials, room=f.answer_room, batch_size=f.batch_size,
        repeats=f.repeats, top_k=f.top_k, chunk_blocks=f.chunk_blocks,
        report_only=f.report_only, reeval=f.reeval, progress=f.progress,
        command="python -m experiments.repro " + " ".join(sys.argv[1:]))
    with open(files["markdown"]) as fh:
        print(fh.read())
    print("wrote", ", ".join(sorted(files.values())))
    if failures:
        raise SystemExit(f"failed kinds: {failures}")


if __name__ == "__main__":
    define_flags()
    app.run(main)
