"""`hms-train`: train (the default command), predict, pseudo-label, blend, bench, compare."""

from __future__ import annotations

from hms_prep import startup

startup.quiet_interrupts()  # before the slow imports: a Ctrl-C meanwhile is one line

import json
import sys
from contextlib import contextmanager
from pathlib import Path
from typing import List, Optional

import typer

app = typer.Typer(add_completion=False, help="Train HMS models from a cache store and predict.",
                  context_settings={"help_option_names": ["-h", "--help"]})  # every command: -h as --help
SUBCOMMANDS = ("train", "plan", "predict", "pseudo-label", "blend", "bench", "compare", "export", "list")


def main() -> None:
    """Entry point: `hms-train [train options]` trains; other subcommands by name."""
    args = sys.argv[1:]
    if not args or args[0] not in SUBCOMMANDS + ("--help", "-h", "--version"):
        args = ["train", *args]
    app(args=args, prog_name="hms-train")


def _version(value: bool) -> None:
    if value:
        from importlib.metadata import PackageNotFoundError, version

        try:
            typer.echo(f"hms-train {version('hms-cache')}")
        except PackageNotFoundError:  # run from a checkout that was never installed
            typer.echo("hms-train (not installed)")
        raise typer.Exit()


@app.callback()
def _options(
    version: bool = typer.Option(False, "--version", callback=_version, is_eager=True, help="Print the version and exit."),
) -> None:
    """Train HMS models from a cache store and predict."""


@contextmanager
def _user_errors():
    """Expected failures (bad config values, missing runs, stores or weights, bad inputs) end in one
    `error:` line and exit 1. Anything else (a CUDA out-of-memory, a bug) keeps its traceback."""
    from hms_prep.doctor import TRAIN_PARTS, BrokenInstall, require
    from hms_prep.store.layout import StoreError

    try:
        require(TRAIN_PARTS)  # a broken compiled part is one line naming it, before any import of it fails
        from hms_train.model.backbones import MissingWeightsError
    except BrokenInstall as err:
        for line in str(err).splitlines():
            typer.echo(f"error: {line}", err=True)
        raise typer.Exit(1) from None
    try:
        yield
    except (FileNotFoundError, ValueError, StoreError, MissingWeightsError) as err:  # ConfigError is a ValueError
        typer.echo(f"error: {err}", err=True)
        raise typer.Exit(1) from None


# Arguments shared by the commands that score finished runs (blend, compare).
RUNS = typer.Argument(..., help="Run directories (each with oof.parquet and config.json); files among them "
                      "(runs/* matching runs/blend.json) are skipped with a note.")


def _run_directories(paths: list[Path]) -> list[Path]:
    """The directories among `paths`: `runs/*` also matches the files written beside the runs (blend.json,
    compare.png), which are skipped with one note each. A directory that is not a finished run is still
    refused by the command, by name."""
    for path in paths:
        if path.is_file():
            typer.echo(f"note: skipped {path} (a file, not a run directory)", err=True)
    runs = [path for path in paths if not path.is_file()]
    if not runs:
        raise FileNotFoundError(f"{', '.join(map(str, paths))}: no run directory among them")
    return runs
TARGETS_STORE = typer.Option(None, "--store", help="Train store for the targets (default: the one the runs trained on).")


def _floats(text: Optional[str]) -> Optional[list[float]]:
    return None if text is None else [float(v) for v in text.split(",")]


def _runs_and_weights(runs, weights: Optional[str], blend: Optional[Path], how: str):
    """The runs and weights a command was given: run folders (and --weights), or a blend.json."""
    from hms_train.run.blend import Blend

    if blend is not None:
        if runs or weights:
            raise ValueError("--blend names the runs and their weights: give it without runs or --weights")
        chosen = Blend.load(blend)
        return [Path(r) for r in chosen.runs], chosen.weights
    if not runs:
        raise ValueError(f"give the runs: {how}, or --blend blend.json")
    return list(runs), _floats(weights)


@app.command()
def train(
    store: Optional[str] = typer.Option(None, "--store", help="Train store built by hms-prep build [default: the config's, else cache/specs.zarr]."),
    config: Optional[str] = typer.Option(None, "--config", "-c", help="Bundled config name (smoke, seed_richard_b0, seed_david_b0, top, ...) or a TOML path."),
    out: Optional[Path] = typer.Option(None, "--out", help="Run directory [default: runs/run]."),
    device: Optional[str] = typer.Option(None, "--device", help="auto | cpu | cuda (overrides the config)."),
    folds: Optional[str] = typer.Option(None, "--folds", help="Folds to train, e.g. 0,1 (default: config, else all)."),
    epochs: Optional[int] = typer.Option(None, "--epochs", help="Stage-1 epochs (overrides the config)."),
    pretrained: Optional[bool] = typer.Option(
        None, "--pretrained/--no-pretrained", help="Backbone weights the timm way: the local hub cache, else downloaded when the hub answers."
    ),
    weights: Optional[Path] = typer.Option(None, "--weights", help="Backbone weights from a local file (.pth or .safetensors)."),
    set_: List[str] = typer.Option([], "--set", help="Override any field: --set lr=1e-3 --set augment.mixup.p=0."),
    track: List[str] = typer.Option([], "--track", help="Record the run for mlflow or tensorboard (repeatable; each an extra: pip install 'hms-cache[mlflow]')."),
    resume: Optional[Path] = typer.Option(None, "--resume", help="Continue the run in this directory from its last checkpoint, at the batch after it, mid-epoch too (its own config; --device may change)."),
    quiet: bool = typer.Option(False, "--quiet", "-q", help="No progress bars or per-epoch lines."),
):
    """Train every selected fold (two stages), write RUN/ with checkpoints, metrics, OOF and curves.

    Examples:
      hms-train --store cache/specs.zarr --config smoke --device cpu --out runs/smoke
      hms-train --config seed_richard_b0 --folds 0,1,2,3,4 --out runs/richard_b0
      hms-train --config smoke --set lr=1e-3 --set augment.time_flip.p=0 --out runs/try
      hms-train --config seed_richard_b0 --weights /models/tf_efficientnet_b0_ns.safetensors --out runs/b0w
      hms-train --resume runs/b0            (after a crash or a kill: finished folds are kept)
      hms-train --config smoke --track mlflow --track tensorboard --out runs/tracked
      torchrun --nproc-per-node 2 -m hms_train.cli train --config seed_richard_b0 --out runs/ddp
    """
    overrides = [f"store={json.dumps(store)}"] if store is not None else []
    overrides += [f"folds=[{folds}]"] if folds else []
    overrides += [f"epochs={epochs}"] if epochs is not None else []
    overrides += [f"model.pretrained={str(pretrained).lower()}"] if pretrained is not None else []
    overrides += [f"model.weights={json.dumps(str(weights))}"] if weights is not None else []
    overrides += [f"track={json.dumps(track)}"] if track else []
    overrides += set_
    with _user_errors():
        from hms_train.run.config import TrainConfig, load_config
        from hms_train.run.train import train as run_training

        if resume is not None:
            if config or overrides or out:
                raise ValueError("--resume continues a run with its own config.json; drop --config, --set, "
                                 "--out and the other config options (only --device and --quiet apply)")
            run_config = resume / "config.json"
            if not run_config.is_file():
                raise FileNotFoundError(f"{resume}: not a run directory (no config.json)")
            cfg = TrainConfig.from_dict(json.loads(run_config.read_text()))
            out = resume
            if device:
                cfg = TrainConfig.from_dict({**cfg.to_dict(), "device": device})
        else:
            cfg = load_config(config, overrides + ([f"device={json.dumps(device)}"] if device else []))
            out = out or Path("runs/run")
        try:
            summary = run_training(cfg, out, quiet=quiet, resume=resume is not None)
        except KeyboardInterrupt:  # every finished epoch (and step checkpoint) is kept: say how to go on
            typer.echo(f"interrupted; resume with: hms-train --resume {out}", err=True)
            raise typer.Exit(130) from None
    if summary:
        typer.echo(f"{out}: out-of-fold KL {summary['kl']:.4f} (>=10 votes {summary['kl_10plus']:.4f}, "
                   f"prior {summary['prior_kl']:.4f}) over {summary['n']} rows")


@app.command()
def plan(
    config: Optional[str] = typer.Option(None, "--config", "-c", help="Bundled config name or a TOML path."),
    store: Optional[str] = typer.Option(None, "--store", help="Train store [default: the config's]."),
    set_: List[str] = typer.Option([], "--set", help="Override any field, as for training."),
    as_json: bool = typer.Option(False, "--json", help="Print one JSON object."),
):
    """What a recipe will do, before it runs (it trains nothing): per fold and stage the rows an epoch
    trains on, the validation rows, the rows whose targets come from a file (pseudo-labels; the file
    need not exist yet), epochs, steps per epoch and each epoch's learning rate; and the image shape.

    Examples:
      hms-train plan --config seed_richard_b0 --store cache/specs.zarr
      hms-train plan --config seed_david_b0 --set folds=[0] --json
    """
    overrides = [f"store={json.dumps(store)}"] if store is not None else []
    with _user_errors():
        import dataclasses

        from hms_train.run.config import load_config
        from hms_train.run.plan import describe, plan_run
        from hms_train.run.schedule import describe_rates
        from hms_train.run.train import open_train_reader

        cfg = load_config(config, overrides + set_)
        reader = open_train_reader(cfg)
        cfg = dataclasses.replace(cfg, folds=cfg.folds if cfg.folds is not None else list(range(reader.layout.n_folds)))
        planned = describe(plan_run(cfg, reader, read_files=False), reader)
    if as_json:
        typer.echo(json.dumps(planned, indent=2))
        return
    shape = "x".join(map(str, planned["image_shape"])) if planned["image_shape"] else "no image"
    typer.echo(f"{cfg.store}: model {planned['model']} on {', '.join(planned['inputs'])} ({shape}); "
               f"row table {planned['row_table']!r}: {planned['table_rows']} rows")
    for fold in planned["folds"]:
        for stage in fold["stages"]:
            rates = describe_rates(stage["lr"])
            typer.echo(f"  fold {fold['fold']} {stage['name']}: {stage['train_rows']} training rows "
                       f"({stage['file_target_rows']} with targets from a file), {stage['val_rows']} validation rows, "
                       f"{stage['epochs']} epochs x {stage['steps_per_epoch']} steps; lr per epoch {rates}")


@app.command()
def predict(
    store: str = typer.Option("cache/test.zarr", "--store", help="Test store built with --split test."),
    run: List[Path] = typer.Option([], "--run", help="Run directory; repeat for an ensemble."),
    weights: Optional[str] = typer.Option(None, "--weights", help="Run weights, e.g. 0.6,0.4."),
    blend: Optional[Path] = typer.Option(None, "--blend", help="blend.json from `hms-train blend`: its runs and weights."),
    out: Path = typer.Option(Path("submission.csv"), "--out"),
    device: str = typer.Option("auto", "--device"),
    tta: bool = typer.Option(False, "--tta/--no-tta", help="Average with the time-flipped input."),
):
    """Write submission.csv: every fold model of each run, averaged with the weights.

    Examples:
      hms-train predict --store cache/test.zarr --run runs/b0 --run runs/raw --weights 0.6,0.4
      hms-train predict --store cache/test.zarr --blend runs/blend.json
    """
    with _user_errors():
        from hms_train.run.predict import predict_submission

        run, run_weights = _runs_and_weights(run, weights, blend, "--run RUN (repeatable)")
        table = predict_submission(store, run, out, run_weights, device, tta,
                                   say=lambda line: typer.echo(f"warning: {line}", err=True))
    typer.echo(f"{out}: {table.num_rows} rows from {len(run)} run(s)")


@app.command()
def export(
    runs: List[Path] = typer.Argument(None, help="Run directories to export (or give --blend)."),
    blend: Optional[Path] = typer.Option(None, "--blend", help="blend.json from `hms-train blend`: its runs and weights."),
    weights: Optional[str] = typer.Option(None, "--weights", help="Run weights, e.g. 0.6,0.4 (default: equal)."),
    out: Path = typer.Option(..., "--out", help="A new folder: upload it as a Kaggle dataset."),
    image: Optional[Path] = typer.Option(None, "--image", help="A file of the packages Kaggle's image provides, one per "
                                         "line (default: the export's kaggle-image.txt list)."),
    python: str = typer.Option("3.11", "--python", help="Kaggle's Python version, for the wheels."),
):
    """A folder for Kaggle's offline notebooks: the runs' fold weights, the blend, this project's wheel and
    every dependency Kaggle's image lacks, and infer.py (builds the test store, predicts, writes the
    submission). On Kaggle: !python /kaggle/input/<dataset>/infer.py --data /kaggle/input/hms-harmful-brain-activity-classification --out submission.csv

    Examples:
      hms-train export demo/runs/smoke --out kaggle-export
      hms-train export --blend seed/blend.json --out kaggle-export
    """
    with _user_errors():
        from hms_train.export import Target, export as export_runs

        runs, run_weights = _runs_and_weights(runs, weights, blend, "RUN ...")
        listed = None
        if image is not None:
            if not image.is_file():
                raise FileNotFoundError(f"--image {image}: no such file")
            from hms_train.export import image_names

            listed = image_names(image.read_text().splitlines())
        summary = export_runs(runs, out, run_weights, listed, Target(python=python),
                              say=lambda line: typer.echo(line, err=True))
    typer.echo(f"{summary.out}: {summary.runs} runs, {summary.folds} folds ({summary.half_folds} in float16), "
               f"{len(summary.wheels)} wheels, {summary.bytes / 2**20:.1f} MiB; on Kaggle: python "
               f"{summary.out.name}/infer.py --data /kaggle/input/hms-harmful-brain-activity-classification "
               "--out submission.csv")


@app.command()
def blend(
    runs: List[Path] = RUNS,
    store: Optional[str] = TARGETS_STORE,
    weights: Optional[str] = typer.Option(None, "--weights", help="Fixed run weights, e.g. .1,.1,.1,.2,.5 (divided by their sum): written to --out, scored beside the learned ones."),
    out: Path = typer.Option(Path("blend.json"), "--out", help="Where the runs and their weights go."),
    as_json: bool = typer.Option(False, "--json", help="Print the table as JSON instead."),
):
    """Learn blend weights (non-negative, summing to 1) minimising the out-of-fold KL on the rows the runs
    share, or with --weights score fixed ones beside them; print each run, the blends and the training
    prior (all rows and high-vote rows). --out gets the fixed weights when given, else the learned ones.

    Examples:
      hms-train blend runs/richard_b0 runs/david_b0 runs/raw1d --out runs/blend.json
      hms-train blend runs/david_b0 runs/david_mnv3 --weights 1.2,1 --out runs/david.json   (the seed's)
      hms-train predict --store cache/test.zarr --blend runs/blend.json
    """
    from rich import box
    from rich.console import Console
    from rich.table import Table

    from hms_train.run.blend import blend_runs

    with _user_errors():
        _writable(out)
        runs = _run_directories(runs)
        chosen, rows = blend_runs(runs, store, _floats(weights))
        chosen.save(out)
    if as_json:
        keys = ("name", "rows", "weight", "fixed_weight", "kl", "kl_10plus", "n", "n_10plus")
        typer.echo(json.dumps([{k: (None if r[k] != r[k] else r[k]) for k in keys} for r in rows], indent=2))
        return
    predicted = [r["rows"] for r in rows[:len(runs)]]
    table = Table(title=f"out-of-fold KL on the {chosen.rows} rows all {len(runs)} runs predicted "
                        f"(each predicted {', '.join(map(str, predicted))})", box=box.SIMPLE_HEAD)
    for column in ("run", "fixed", "learned", "KL", "KL high-vote", "high-vote rows"):
        table.add_column(column, justify="left" if column == "run" else "right", overflow="fold")
    for r in rows:
        fixed, learned = ("" if w != w else f"{w:.3f}" for w in (r["fixed_weight"], r["weight"]))  # NaN: none
        table.add_row(r["name"], fixed, learned, f"{r['kl']:.4f}", f"{r['kl_10plus']:.4f}", str(r["n_10plus"]))
    Console().print(table)
    typer.echo(f"{out}: {chosen.weights_from} weights {', '.join(f'{w:.3f}' for w in chosen.weights)}; "
               f"blend KL {chosen.kl:.4f} on {chosen.rows} shared rows")


def _writable(out: Path) -> None:
    if not out.parent.is_dir():
        raise FileNotFoundError(f"--out {out}: the folder {out.parent} does not exist")


@app.command("pseudo-label")
def pseudo_label(
    runs: List[Path] = typer.Option([], "--runs", help="Run directories whose OOF predictions to average."),
    blend: Optional[Path] = typer.Option(None, "--blend", help="blend.json from `hms-train blend`: its runs and weights."),
    store: str = typer.Option("cache/specs.zarr", "--store"),
    out: Path = typer.Option(Path("runs/pseudo.parquet"), "--out"),
    min_votes: int = typer.Option(10, "--min-votes", help="Rows with fewer votes get pseudo-labels."),
    all_rows: bool = typer.Option(False, "--all-rows", help="Every row the runs predicted: a teacher's targets "
                                  "for distillation (teacher_targets)."),
    weights: Optional[str] = typer.Option(None, "--weights"),
):
    """Write pseudo-labels for low-vote rows from an ensemble's out-of-fold predictions.

    Examples:
      hms-train pseudo-label --runs runs/b0 --runs runs/raw --out runs/pseudo.parquet
      then: hms-train --config seed_richard_b0_pl --set pseudo_labels='"runs/pseudo.parquet"' --out runs/b0_pl
      hms-train pseudo-label --blend runs/blend.json --all-rows --out runs/teacher.parquet
      then: hms-train --config seed_richard_b0_kd --set teacher_targets='"runs/teacher.parquet"' --out runs/b0_kd
    """
    with _user_errors():
        from hms_train.run.predict import pseudo_labels

        runs, run_weights = _runs_and_weights(runs, weights, blend, "--runs RUN ...")
        table = pseudo_labels(runs, store, out, None if all_rows else min_votes, run_weights)
    rows = "rows" if all_rows else f"rows with < {min_votes} votes"
    typer.echo(f"{out}: {'targets' if all_rows else 'pseudo-labels'} for {table.num_rows} {rows}")


@app.command()
def compare(
    runs: List[Path] = RUNS,
    store: Optional[str] = TARGETS_STORE,
    out: Path = typer.Option(Path("compare.png"), "--out", help="PNG of the runs' learning curves."),
    as_json: bool = typer.Option(False, "--json", help="Print a JSON list instead of the table."),
):
    """Table of the runs' out-of-fold KL (all rows, >= 10 votes, per class), best first, plus their curves.

    Examples:
      hms-train compare runs/b0 runs/raw
      hms-train compare runs/* --store cache/specs.zarr --out curves.png --json
    """
    import math

    from rich import box
    from rich.console import Console
    from rich.table import Table

    from hms_train.run.compare import compare_runs, plot_learning_curves
    from hms_train.run.metric import CLASS_NAMES

    console = Console(stderr=True)
    with _user_errors():
        if not out.parent.is_dir():  # checked before any scoring, not after
            raise FileNotFoundError(f"--out {out}: folder {out.parent} does not exist")
        runs = _run_directories(runs)
        results = compare_runs(runs, store)
        plot_learning_curves(runs, out)
    if as_json:
        clean = [{k: (None if isinstance(v, float) and math.isnan(v) else v) for k, v in r.items()} for r in results]
        typer.echo(json.dumps(clean, indent=2))
    else:
        # Two tables so that each fits 80 columns without shortening a number.
        scores = Table(title="out-of-fold KL, best first", box=box.SIMPLE_HEAD)
        per_class = Table(title="per-class terms of the KL (they sum to it)", box=box.SIMPLE_HEAD)
        for column in ("run", "folds", "rows", "KL", "rows ≥10 votes", "KL ≥10 votes"):
            scores.add_column(column, justify="left" if column == "run" else "right", overflow="fold")
        for column in ("run", *CLASS_NAMES):
            per_class.add_column(column, justify="left" if column == "run" else "right", overflow="fold")
        for r in results:
            scores.add_row(r["run"], ",".join(map(str, r["folds"])), str(r["n"]), f"{r['kl']:.4f}",
                           str(r["n_10plus"]), f"{r['kl_10plus']:.4f}")
            per_class.add_row(r["run"], *(f"{r['per_class'][c]:.4f}" for c in CLASS_NAMES))
        Console().print(scores, per_class)
    if len({r["n"] for r in results}) > 1:
        console.print("[yellow]note:[/yellow] the runs were validated on different numbers of rows; compare with care")
    console.print(f"learning curves: {out}", highlight=False, markup=False)


@app.command()
def bench(
    store: str = typer.Option("cache/specs.zarr", "--store", help="Store built by hms-prep build."),
    config: Optional[str] = typer.Option(None, "--config", "-c", help="A recipe (bundled name or TOML): its inputs, layout, augmentations and model."),
    set_: List[str] = typer.Option([], "--set", help="Override a config field, as for training."),
    inputs: Optional[str] = typer.Option(None, "--inputs", help="Arrays to read, without --config (default: the default recipe's)."),
    batch_size: Optional[int] = typer.Option(None, "--batch-size", min=1, help="[default: 32, or the config's with --train]"),
    batches: int = typer.Option(50, "--batches", min=1, help="Timed batches (steps) per pass."),
    device: str = typer.Option("auto", "--device", help="auto | cpu | cuda."),
    augment: bool = typer.Option(False, "--augment/--no-augment", help="Also time the training augmentations."),
    train: bool = typer.Option(False, "--train", help="Time the recipe's model training (needs --config): images/s, data path, device busy."),
    compile_model: bool = typer.Option(False, "--compile", help="With --train: torch.compile the model first."),
    threads: int = typer.Option(4, "--threads", min=1, help="Reader decoding threads."),
    as_json: bool = typer.Option(False, "--json", help="Print one JSON object."),
):
    """Samples/s from the store to a ready batch on the device, and where the time goes; with --train,
    how fast a recipe's model trains and whether the data path keeps up.

    Examples:
      hms-train bench --store cache/specs.zarr --inputs eeg_10s,eeg_30s,kaggle --batches 100 --augment
      hms-train bench --store cache/specs.zarr --config seed_david_b0 --json        # image_shape 1x400x768
      hms-train bench --store cache/specs.zarr --config seed_richard_b0 --train --device cuda --compile
    """
    names = [name.strip() for name in (inputs or "").split(",") if name.strip()]
    with _user_errors():
        from hms_train.run.bench import format_report, format_train_report, run_bench, run_train_bench
        from hms_train.run.config import load_config

        recipe = load_config(config, set_) if config else None
        if train:
            if recipe is None:
                raise ValueError("--train times a recipe's model: give --config NAME")
            result = run_train_bench(recipe, store, batches, device, batch_size, compile_model, threads)
            report = format_train_report(result, store, config)
        else:
            result = run_bench(store, names, batch_size or 32, batches, device, augment, threads, config=recipe)
            report = format_report(result, store, result["inputs"])
    typer.echo(json.dumps(result) if as_json else report)


@app.command("list")
def list_registered(
    plugin: List[str] = typer.Option([], "--plugin", help="Also a plug-in module's (repeatable), as a recipe's plugins = [...]."),
):
    """What a recipe can name: the model kinds (the inputs each takes; its settings for [model], with
    their defaults), the augmentations ([augment.NAME], in chain order) and the row tables (rows = ...);
    installed plug-ins and --plugin modules included.

    Example: hms-train list --plugin my_package.tiny_conv
    """
    with _user_errors():
        from hms_prep.plugins import load_plugins
        from hms_train.data.tables import TABLES
        from hms_train.image.augment import AUGMENTATIONS
        from hms_train.model.kinds import MODELS

        load_plugins(plugin)
        for title, registry in (("model kinds: [model] name = NAME, then its settings", MODELS),
                                ("augmentations: [augment.NAME]", AUGMENTATIONS), ("row tables: rows = NAME", TABLES)):
            typer.echo(title)
            for line in registry.describe():
                typer.echo(line)


startup.imported()  # Ctrl-C is KeyboardInterrupt again, which the commands handle

if __name__ == "__main__":
    main()
