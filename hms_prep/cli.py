"""`hms-prep`: synthesize a dataset, build the cache, inspect it."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Optional

import typer
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn

from hms_prep.codecs import AUTO
from hms_prep.kaggle import KaggleDataError
from hms_prep.store import StoreError

app = typer.Typer(
    add_completion=False,
    no_args_is_help=True,
    help="Preprocess the Kaggle HMS EEG data once into a reusable Zarr cache.",
)
console = Console(stderr=True)


def _fail(message: str, code: int = 1):
    console.print(f"[red]error:[/red] {message}", highlight=False, soft_wrap=True)
    raise typer.Exit(code)


def _int_list(text: str) -> tuple[int, ...]:
    try:
        values = tuple(int(v) for v in text.split(",") if v.strip())
    except ValueError:
        raise typer.BadParameter(f"expected comma-separated integers, got {text!r}") from None
    if not values:
        raise typer.BadParameter("no values given")
    return values


def _names(text: str | None) -> list[str] | None:
    return None if text is None else [name.strip() for name in text.split(",") if name.strip()]


def _band(text: str) -> tuple[float, float] | None:
    if text.lower() == "none":
        return None
    try:
        low, high = (float(v) for v in text.split(","))
    except ValueError:
        raise typer.BadParameter(f"expected LOW,HIGH in Hz or 'none', got {text!r}") from None
    return (low, high)


@app.command()
def synth(
    out: Path = typer.Argument(..., help="Folder to write the Kaggle-layout dataset into."),
    eegs: int = typer.Option(200, "--eegs", help="Number of train EEG recordings."),
    test_eegs: Optional[int] = typer.Option(None, "--test-eegs", help="Number of test EEGs (default eegs/20)."),
    seed: int = typer.Option(0, "--seed", help="Random seed; the output is deterministic for a seed."),
):
    """Write a synthetic dataset in the exact Kaggle layout, with learnable class patterns.

    Example: hms-prep synth data/synth --eegs 200
    """
    from hms_prep.synth import synthesize

    summary = synthesize(out, n_eegs=eegs, seed=seed, n_test=test_eegs)
    typer.echo(
        f"{summary.out_dir}: {summary.train_rows} label rows from {summary.train_eegs} train EEGs "
        f"({summary.patients} patients), {summary.test_eegs} test EEGs in {summary.seconds:.1f} s"
    )


@app.command()
def build(
    data: Path = typer.Option(..., "--data", help="Kaggle folder (train.csv, train_eegs/, ...)."),
    windows: str = typer.Option("10,30", "--windows", help="EEG window lengths in seconds, e.g. 10,30,50."),
    store: Optional[str] = typer.Option(
        None, "--store", help="Store path or fsspec URL (default: cache/specs.zarr, or cache/test.zarr for --split test)."
    ),
    split: str = typer.Option("train", "--split", help="train (every train.csv row) or test (every test EEG)."),
    band_pass: str = typer.Option("none", "--band-pass", help="Band-pass before the mel spectrograms: LOW,HIGH Hz or none."),
    n_mels: int = typer.Option(100, "--n-mels"),
    n_fft: int = typer.Option(1024, "--n-fft"),
    win_length: int = typer.Option(128, "--win-length"),
    hop_length: Optional[int] = typer.Option(None, "--hop-length", help="Samples between frames (default: W*200 // 256)."),
    fmin: float = typer.Option(0.0, "--fmin"),
    fmax: float = typer.Option(20.0, "--fmax"),
    frames: int = typer.Option(256, "--frames", help="Spectrogram frames kept per window."),
    kaggle: bool = typer.Option(True, "--kaggle/--no-kaggle", help="Store the Kaggle spectrogram crops."),
    kaggle_window: int = typer.Option(
        600, "--kaggle-window", help="Kaggle crop length S in seconds (a multiple of 2), centred on the label's "
        "10-min window: 600 is the `kaggle` array, another S the `kaggle_{S}s` array."),
    raw: bool = typer.Option(True, "--raw/--no-raw", help="Store the raw bipolar signals for 1D models."),
    folds: int = typer.Option(5, "--folds", help="Patient-grouped folds."),
    chunk_rows: int = typer.Option(32, "--chunk-rows", help="Rows per chunk (fixed when the store is created)."),
    codec: str = typer.Option(AUTO, "--codec", help="auto (per array kind) | lz4 | blosc-zstd | zstd | none (fixed at creation)."),
    workers: Optional[int] = typer.Option(None, "--workers", help="Local Dask worker processes (default: one per core)."),
    scheduler: Optional[str] = typer.Option(None, "--scheduler", help="Use a running Dask scheduler, tcp://HOST:PORT."),
    device: Optional[str] = typer.Option(
        None, "--device", help="Compute the mel windows in this process on cpu, cuda or cuda:N, batched per chunk, "
        "with --workers threads reading and writing (default: Dask worker processes on CPU)."),
    quiet: bool = typer.Option(False, "--quiet", "-q", help="No progress bar."),
):
    """Precompute every window into the store; incremental, resumable, idempotent.

    Examples:
      hms-prep build --data data/hms --windows 10,30
      hms-prep build --data data/hms --windows 10,30,50        # adds only eeg_50s
      hms-prep build --data data/hms --windows 10,14,30,44 --n-mels 50   # adds eeg_{W}s_m50 beside them
      hms-prep build --data data/hms --kaggle-window 1200      # adds kaggle_1200s beside kaggle
      hms-prep build --data data/hms --split test
      hms-prep build --data data/hms --scheduler tcp://10.0.0.5:8786
      hms-prep build --data data/hms --device cuda --workers 8   # mel windows on the GPU, 8 I/O threads
    """
    from hms_prep.build import BuildConfig, run_build
    from hms_prep.kinds import MelParams, RawParams

    if split not in ("train", "test"):
        raise typer.BadParameter(f"--split must be train or test, got {split!r}")
    try:
        config = BuildConfig(
            data_dir=str(data), store=store, split=split, windows=_int_list(windows),
            mel=MelParams(window_s=10, n_fft=n_fft, win_length=win_length, hop_length=hop_length, n_mels=n_mels,
                          fmin=fmin, fmax=fmax, frames=frames, band_pass=_band(band_pass)),
            kaggle=kaggle, kaggle_window_s=kaggle_window, raw=RawParams() if raw else None, n_folds=folds,
            chunk_rows=chunk_rows, codec=codec, workers=workers, scheduler=scheduler, device=device,
        )
        config.arrays()  # every parameter checked before any work
    except ValueError as err:
        _fail(str(err))
    try:
        with _progress(quiet, "building") as update:
            summary = run_build(config, progress=update)
    except (KaggleDataError, StoreError, ValueError) as err:
        _fail(str(err))
    typer.echo(summary.line())
    if summary.failures:
        failed = summary.failed_rows()
        console.print(f"[red]{len(failed)} rows failed[/red] (recorded in labels.parquet, retried on the next build):")
        for f in failed[:20]:
            console.print(f"  row {f.row} (label {f.label_id}) {', '.join(f.arrays)}: {f.reason}", highlight=False,
                          soft_wrap=True)
        if len(failed) > 20:
            console.print(f"  ... and {len(failed) - 20} more")
        raise typer.Exit(1)


@app.command()
def info(
    store: str = typer.Argument(..., help="Store path or URL."),
    as_json: bool = typer.Option(False, "--json", help="Print one JSON object."),
):
    """Rows, arrays (every variant with its kind and params), chunking, codec, size and completeness.

    Example: hms-prep info cache/specs.zarr --json
    """
    from hms_prep.audit import store_info

    try:
        facts = store_info(store)
    except StoreError as err:
        _fail(str(err))
    if as_json:
        typer.echo(json.dumps(facts, indent=2))
        return
    typer.echo(f"{facts['store']}: {facts['rows']} rows ({facts['split']}), layout v{facts['layout_version']}, "
               f"{facts['folds']} folds, {facts['bytes'] / 2**20:.1f} MiB")
    width = max((len(name) for name in facts["arrays"]), default=0)
    for name, a in facts["arrays"].items():
        p = a["params"]
        detail = ", ".join(f"{k}={v}" for k, v in p.items() if k not in ("freqs_hz", "pairs"))
        typer.echo(f"  {name:{width}s} {a['kind']:8s} {str(tuple(a['shape'])):24s} chunks {tuple(a['chunks'])} "
                   f"{a['dtype']} {'/'.join(a['codec']) or 'raw'}; {a['chunks_done']}/{a['chunks_total']} chunks, "
                   f"{a['rows_failed']} failed rows")
        typer.echo(f"  {'':{width}s} {detail}; digest {a['params_digest']}")


@app.command()
def verify(store: str = typer.Argument(..., help="Store path or URL.")):
    """Check every chunk is complete, values finite, shapes and metadata consistent (exit 1 if not).

    Example: hms-prep verify cache/specs.zarr
    """
    from hms_prep.audit import verify_store

    try:
        problems = verify_store(store)
    except StoreError as err:
        _fail(str(err))
    for problem in problems:
        console.print(f"[red]problem:[/red] {problem}", highlight=False)
    if problems:
        raise typer.Exit(1)
    typer.echo(f"{store}: ok")


@app.command()
def show(
    store: str = typer.Argument(..., help="Store path or URL."),
    row: Optional[int] = typer.Option(None, "--row", help="Row number in the store."),
    label_id: Optional[int] = typer.Option(None, "--label-id", help="The row with this train.csv label_id."),
    eeg_id: Optional[int] = typer.Option(None, "--eeg-id", help="The first row of this EEG."),
    out: Optional[Path] = typer.Option(None, "--out", help="PNG to write (default: row{I}.png in the current folder)."),
    arrays: Optional[str] = typer.Option(
        None, "--arrays", help="Arrays to draw, comma-separated (default: every image array, and raw if stored)."),
):
    """PNG of one row as the trainer sees it (every image array, raw traces below if stored).

    Give exactly one of --row, --label-id, --eeg-id.

    Examples:
      hms-prep show cache/specs.zarr --row 12 --out row12.png
      hms-prep show cache/specs.zarr --label-id 3342474395
      hms-prep show cache/specs.zarr --row 12 --arrays eeg_10s,eeg_10s_m50,kaggle
    """
    from hms_prep.show import show_row

    try:
        path = show_row(store, row=row, label_id=label_id, eeg_id=eeg_id, out=out, arrays=_names(arrays))
    except (StoreError, ValueError) as err:
        _fail(str(err))
    typer.echo(str(path))


class _progress:
    """A rich progress bar with rate and ETA, or nothing when quiet; yields an update(done, total)."""

    def __init__(self, quiet: bool, label: str):
        self.quiet, self.label = quiet, label

    def __enter__(self):
        if self.quiet:
            return None
        self.bar = Progress(
            TextColumn(f"{self.label}"), BarColumn(), MofNCompleteColumn(), TextColumn("rows"),
            TextColumn("{task.fields[rate]}"), TimeElapsedColumn(), TextColumn("ETA"), TimeRemainingColumn(),
            console=console, transient=False,
        )
        self.bar.__enter__()
        self.task = self.bar.add_task(self.label, total=None, rate="")

        def update(done: int, total: int) -> None:
            elapsed = self.bar.tasks[0].elapsed or 1e-9
            self.bar.update(self.task, completed=done, total=total, rate=f"{done / elapsed:.0f} rows/s")

        return update

    def __exit__(self, *exc):
        if not self.quiet:
            self.bar.__exit__(*exc)
        return False


if __name__ == "__main__":
    app()
