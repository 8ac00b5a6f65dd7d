"""`hms-prep`: synthesize a dataset, build the cache, inspect it."""

from __future__ import annotations

from hms_prep import startup

startup.quiet_interrupts()  # before the slow imports: a Ctrl-C meanwhile is one line

import json
import signal
import sys
import time
from pathlib import Path
from typing import Optional

import typer
from rich.console import Console
from rich.markup import escape
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn

from hms_prep.store.codecs import AUTO, FAST
from hms_prep.sources.kaggle import KaggleDataError
from hms_prep.store.layout import StoreError

# `hms-prep build` finished, but some rows failed (listed, recorded in labels.parquet, computed again once
# a file they are cut from changes, or with --retry-failed):
# the store is usable without them. 1 is an error that stopped the build, 130 an interruption.
ROWS_FAILED_EXIT = 3

app = typer.Typer(
    add_completion=False,
    no_args_is_help=True,
    help="Preprocess the Kaggle HMS EEG data once into a reusable Zarr cache.",
    context_settings={"help_option_names": ["-h", "--help"]},
    pretty_exceptions_enable=False,
)
console = Console(stderr=True)
PROGRESS_EVERY_S = 10.0  # one progress line this often when stderr is not a terminal (a log file)


def _version(value: bool):
    if value:
        from importlib.metadata import PackageNotFoundError, version

        try:
            typer.echo(f"hms-prep {version('hms-cache')}")
        except PackageNotFoundError:
            typer.echo("hms-prep (not installed as a package)")
        raise typer.Exit()


@app.callback()
def main(
    version: bool = typer.Option(False, "--version", callback=_version, is_eager=True, help="Print the version."),
):
    """Preprocess the Kaggle HMS EEG data once into a reusable Zarr cache."""


def _fail(message: str, code: int = 1):
    for line in message.splitlines() or [""]:  # one "error:" line per cause (e.g. each broken part)
        console.print(f"[red]error:[/red] {escape(line)}", highlight=False, soft_wrap=True)
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
    eegs: Optional[int] = typer.Option(None, "--eegs", help="Number of train EEG recordings (default 200)."),
    test_eegs: Optional[int] = typer.Option(None, "--test-eegs", help="Number of test EEGs (default eegs/20)."),
    seed: int = typer.Option(0, "--seed", help="Random seed; the output is deterministic for a seed."),
    like: Optional[str] = typer.Option(
        None, "--like", help="competition: train.csv laid out like the real table (106,800 rows at --fraction 1)."
    ),
    fraction: Optional[float] = typer.Option(None, "--fraction", help="With --like competition: share of its EEGs, in (0, 1]."),
    jobs: int = typer.Option(1, "--jobs", help="Processes writing the signal files (the output is the same for any)."),
):
    """Write a synthetic dataset in the exact Kaggle layout, with learnable class patterns.

    Example: hms-prep synth data/synth --eegs 200
    Example: hms-prep synth data/full --like competition --fraction 0.02 --jobs 2
    """
    from hms_prep.synth.dataset import synthesize, synthesize_like_competition

    if like not in (None, "competition"):
        raise typer.BadParameter(f"--like must be 'competition', got {like!r}")
    if like is None and fraction is not None:
        raise typer.BadParameter("--fraction needs --like competition")
    if like is not None and eegs is not None:
        raise typer.BadParameter("--eegs and --like competition exclude each other; scale with --fraction")
    if fraction is not None and not 0 < fraction <= 1:
        raise typer.BadParameter(f"--fraction must be in (0, 1], got {fraction}")
    if jobs < 1:
        raise typer.BadParameter(f"--jobs must be at least 1, got {jobs}")
    if like is None:
        summary = synthesize(out, n_eegs=200 if eegs is None else eegs, seed=seed, n_test=test_eegs, jobs=jobs)
    else:
        summary = synthesize_like_competition(out, 1.0 if fraction is None else fraction, seed, test_eegs, jobs)
    typer.echo(
        f"{summary.out_dir}: {summary.train_rows} label rows from {summary.train_eegs} train EEGs "
        f"({summary.patients} patients, {summary.train_spectrograms} spectrograms), {summary.test_eegs} test EEGs, "
        f"{summary.eeg_seconds / 3600:.1f} h of EEG in {summary.seconds:.1f} s"
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
    array: Optional[list[str]] = typer.Option(
        None, "--array", help="An array of any registered kind, KIND:key=value,... (repeatable), its params parsed "
        "by their declared types: eeg_mel:window_s=14,n_mels=50, raw:band_pass=1-40, kaggle:window_s=1200; "
        "none for None, LOW-HIGH for a pair."),
    plugin: Optional[list[str]] = typer.Option(
        None, "--plugin", help="Import MODULE first: a plug-in that registers array kinds (repeatable; installed "
        "plug-ins, entry points of hms_cache.plugins, load by themselves)."),
    folds: int = typer.Option(5, "--folds", help="Patient-grouped folds."),
    chunk_rows: Optional[int] = typer.Option(
        None, "--chunk-rows", help="Rows per chunk (default 32; fixed when the store is created, refused if it differs)."),
    codec: Optional[str] = typer.Option(
        None, "--codec", help=f"{AUTO} (default: per array kind, smallest) | {FAST} (per array kind, fastest to read: "
        "EEG windows uncompressed, ~15 % more disk) | lz4 | blosc-zstd | zstd | none (fixed at creation)."),
    workers: Optional[int] = typer.Option(None, "--workers", help="Local Dask worker processes (default: one per core)."),
    scheduler: Optional[str] = typer.Option(None, "--scheduler", help="Use a running Dask scheduler, tcp://HOST:PORT."),
    connect_timeout: Optional[float] = typer.Option(
        None, "--connect-timeout", help="Seconds to reach --scheduler (its handshake, then a worker) before "
        "giving up in one line (default 10)."),
    on_dask: bool = typer.Option(False, "--on-dask", help="Run the tasks on Dask worker processes even when the build "
                                 "is small (default: at most 400 rows to compute run in this process)."),
    repair: bool = typer.Option(False, "--repair", help="Also read back every chunk and recompute damaged ones."),
    retry_failed: bool = typer.Option(False, "--retry-failed",
                                      help="Compute failed rows again even if none of their files changed "
                                           "(after fixing a bug, not the data)."),
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
      hms-prep build --data data/hms --array eeg_mel:window_s=14,n_mels=50 --array raw:band_pass=1-40
      hms-prep build --data data/hms --plugin my_kinds --array band_power:window_s=10   # a plug-in's kind
      hms-prep build --data data/hms --split test
      hms-prep build --data data/hms --scheduler tcp://10.0.0.5:8786
      hms-prep build --data data/hms --repair                  # recompute chunks that fail their checksum
      hms-prep build --data data/hms --device cuda --workers 8   # mel windows on the GPU, 8 I/O threads

    Exit codes: 0 built; 3 built, but some rows failed (listed, usable without them); 1 an error stopped
    the build, or chunk tasks crashed (counted and named; their chunks are not done); 130 interrupted
    (Ctrl-C): the same command resumes where it stopped.
    """
    from hms_prep.building.config import BuildConfig
    from hms_prep.building.execute import BuildError
    from hms_prep.building.run import run_build
    from hms_prep.doctor import BrokenInstall
    from hms_prep.kinds import MelParams, RawParams
    from hms_prep.plugins import load_plugins
    from hms_prep.kinds.spec import parse_array_spec
    from hms_prep.store.lock import StoreLocked

    if split not in ("train", "test"):
        raise typer.BadParameter(f"--split must be train or test, got {split!r}")
    window_list = _int_list(windows)
    from hms_prep.kinds.eeg_mel import WINDOW_S

    outside = [w for w in window_list if not WINDOW_S[0] <= w <= WINDOW_S[1]]
    if outside:  # named by the flag the user typed, not by the params' field
        _fail(f"--windows {windows}: each window must be {WINDOW_S[0]}..{WINDOW_S[1]} seconds, got {outside[0]}")
    try:
        load_plugins(plugin or ())  # before --array: a plug-in's kinds are then known
        extra_arrays = tuple(parse_array_spec(spec) for spec in array or ())
        config = BuildConfig(
            data_dir=str(data), store=store, split=split, windows=window_list,
            # The template takes the first asked window: each window's params are checked in config.check().
            mel=MelParams(window_s=window_list[0], n_fft=n_fft, win_length=win_length, hop_length=hop_length,
                          n_mels=n_mels, fmin=fmin, fmax=fmax, frames=frames, band_pass=_band(band_pass)),
            kaggle=kaggle, kaggle_window_s=kaggle_window, raw=RawParams() if raw else None,
            extra_arrays=extra_arrays, n_folds=folds,
            chunk_rows=chunk_rows, codec=codec, workers=workers, scheduler=scheduler, repair=repair,
            retry_failed=retry_failed, device=device, in_process=False if on_dask else None,
            **({} if connect_timeout is None else {"connect_timeout_s": connect_timeout}),  # else the config's 10
        )
        config.check()  # every option checked before any work
    except ValueError as err:
        _fail(str(err))
    try:
        with _progress(quiet, "building") as update:
            summary = run_build(config, progress=update, say=_say)
    except KeyboardInterrupt:
        console.print("interrupted; run the same command again to resume", highlight=False)
        raise typer.Exit(130)
    except (KaggleDataError, StoreError, ValueError, BuildError, StoreLocked, BrokenInstall) as err:
        _fail(str(err))
    except OSError as err:  # a full disk, a read-only filesystem: one line naming the path
        _fail(f"{err.filename or config.store_url}: {err.strerror or err}")
    # The build is over and its store complete: a Ctrl-C from here on (the summary, the interpreter's exit)
    # has nothing left to stop, and would only end the process by the signal, with no exit status of ours.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    typer.echo(summary.line())
    if summary.crashed:  # the store is unfinished: never a success, nor the "usable without them" code 3
        _fail(f"{summary.crash_line()}; their chunks are not done (hms-prep verify lists them): fix the cause "
              "and run the same command again")
    if summary.failures:
        failed = summary.failed_rows()
        console.print(f"[red]{len(failed)} rows failed[/red] (recorded in labels.parquet; computed again once "
                      "a file they are cut from changes, or with --retry-failed):")
        for f in failed[:20]:
            console.print(f"  row {f.row} (label {f.label_id}) {', '.join(f.arrays)}: {f.reason}", highlight=False,
                          soft_wrap=True, markup=False)
        if len(failed) > 20:
            console.print(f"  ... and {len(failed) - 20} more")
        raise typer.Exit(ROWS_FAILED_EXIT)


@app.command()
def info(
    store: str = typer.Argument(..., help="Store path or URL."),
    as_json: bool = typer.Option(False, "--json", help="Print one JSON object."),
):
    """Rows, arrays (every variant with its kind and params), chunking, codec, size and completeness.

    Example: hms-prep info cache/specs.zarr --json
    """
    from hms_prep.store.audit import store_info

    try:
        facts = store_info(store)
    except StoreError as err:
        _fail(str(err))
    if as_json:
        typer.echo(json.dumps(facts, indent=2))
        return
    dropped = f" ({facts['rows_dropped']} dropped: no longer in the CSV)" if facts["rows_dropped"] else ""
    typer.echo(f"{facts['store']}: {facts['rows']} rows{dropped} ({facts['split']}), layout v{facts['layout_version']}, "
               f"{facts['folds']} folds, {facts['bytes'] / 2**20:.1f} MiB")
    width = max((len(name) for name in facts["arrays"]), default=0)
    for name, a in facts["arrays"].items():
        p = a["params"]
        detail = ", ".join(f"{k}={v}" for k, v in p.items() if k not in ("freqs_hz", "pairs"))
        typer.echo(f"  {name:{width}s} {a['kind']:8s} {str(tuple(a['shape'])):24s} chunks {tuple(a['chunks'])} "
                   f"{a['dtype']} {'/'.join(a['codec']) or 'raw'}; {a['chunks_done']}/{a['chunks_total']} chunks, "
                   f"{a['rows_failed']} failed rows")
        typer.echo(f"  {'':{width}s} storage {a['storage']}, role {a['role']}, normalise {a['normalise']}; {detail}; "
                   f"digest {a['params_digest']}")
    for line in facts["damaged"]:  # arrays whose metadata cannot be read: named, not described
        console.print(f"[red]damaged:[/red] {escape(line)} (hms-prep build --repair rewrites it)", highlight=False,
                      soft_wrap=True)


@app.command()
def verify(store: str = typer.Argument(..., help="Store path or URL.")):
    """Check every chunk is complete, values finite, shapes and metadata consistent (exit 1 if not).

    Example: hms-prep verify cache/specs.zarr
    """
    from hms_prep.store.audit import verify_store

    try:
        problems = verify_store(store)
    except StoreError as err:
        _fail(str(err))
    for problem in problems:
        console.print(f"[red]problem:[/red] {escape(problem)}", highlight=False, soft_wrap=True)
    if problems:
        raise typer.Exit(1)
    typer.echo(f"{store}: ok")


@app.command()
def compact(store: str = typer.Argument(..., help="Store path or URL.")):
    """Reclaim the raw regions that train.csv row changes left behind (the store stops growing).

    Example: hms-prep compact cache/specs.zarr
    """
    from hms_prep.compact import compact_store
    from hms_prep.store.lock import StoreLocked

    try:
        done = compact_store(store)
    except KeyboardInterrupt:  # safe at any write, as a kill is (hms_prep/compact.py)
        console.print("interrupted; run the same command again to resume", highlight=False)
        raise typer.Exit(130)
    except (StoreError, StoreLocked) as err:
        _fail(str(err))
    except OSError as err:  # a full disk, a read-only filesystem: one line naming the path
        _fail(f"{err.filename or store}: {err.strerror or err}")
    typer.echo(done.line(store))


@app.command()
def show(
    store: str = typer.Argument(..., help="Store path or URL."),
    row: Optional[int] = typer.Option(None, "--row", help="Row number in the store."),
    label_id: Optional[int] = typer.Option(None, "--label-id", help="The row with this train.csv label_id."),
    eeg_id: Optional[int] = typer.Option(None, "--eeg-id", help="The first row of this EEG."),
    out: Optional[Path] = typer.Option(None, "--out", help="PNG to write (default: row{I}.png in the current folder)."),
    arrays: Optional[str] = typer.Option(
        None, "--arrays", help="Arrays to draw, comma-separated (default: every image array, and raw if stored)."),
    plugin: Optional[list[str]] = typer.Option(
        None, "--plugin", help="Import MODULE first (repeatable): a plug-in kind's parts get its own titles."),
):
    """PNG of one row as the trainer sees it (every image array, raw traces below if stored).

    Give exactly one of --row, --label-id, --eeg-id.

    Examples:
      hms-prep show cache/specs.zarr --row 12 --out row12.png
      hms-prep show cache/specs.zarr --label-id 3342474395
      hms-prep show cache/specs.zarr --row 12 --arrays eeg_10s,eeg_10s_m50,kaggle
    """
    from hms_prep.plugins import load_plugins
    from hms_prep.show import show_row

    try:
        load_plugins(plugin or ())
        path = show_row(store, row=row, label_id=label_id, eeg_id=eeg_id, out=out, arrays=_names(arrays))
    except (StoreError, ValueError) as err:
        _fail(str(err))
    typer.echo(str(path))


@app.command("list")
def list_registered(
    plugin: Optional[list[str]] = typer.Option(None, "--plugin", help="Also a plug-in module's kinds (repeatable), as for build."),
):
    """What a build can make: the array kinds (the file each is cut from, its role, and its params for
    --array KIND:key=value,... with their defaults), the sources and the codecs (--codec); installed
    plug-ins and --plugin modules included.

    Example: hms-prep list --plugin extra_kind
    """
    from hms_prep.kinds import KINDS
    from hms_prep.plugins import load_plugins
    from hms_prep.sources.recordings import SOURCES
    from hms_prep.store.codecs import CODECS, POLICIES

    try:
        load_plugins(plugin or ())
        sections = (("array kinds: --array KIND:key=value,...", KINDS), ("sources: a kind's source", SOURCES),
                    (f"codecs: --codec NAME (or {' / '.join(POLICIES)}: each kind's choice)", CODECS))
        for title, registry in sections:
            typer.echo(title)
            for line in registry.describe():
                typer.echo(line)
    except ValueError as err:
        _fail(str(err))


@app.command()
def doctor():
    """Load every compiled part the project relies on (torch, torchvision's operators and timm,
    the Blosc and zstd codecs, CRC-32C, scipy, pyarrow) and run one small operation through each; one
    line per broken part naming the package, its versions and the fix (exit 1). `make setup` runs it.

    Example: hms-prep doctor
    """
    from hms_prep.doctor import PARTS, check, installed

    broken = check()
    for part in PARTS.values():
        if all(b.part is not part for b in broken):
            typer.echo(f"ok  {part.name} ({installed(part.packages)})")
    if broken:
        _fail("\n".join(b.line() for b in broken))


def _say(line: str) -> None:
    # markup=False: a notice is plain text; "hms-cache[dashboard]" or a path with [brackets] is not a style
    console.print(line, highlight=False, soft_wrap=True, markup=False)


class _progress:
    """A rich progress bar with rate and ETA on a terminal, one plain line every PROGRESS_EVERY_S
    otherwise (a log file), or nothing when quiet; yields an update(done, total). The bar starts with
    the first update, so a build with nothing to compute shows none. Its rows/s is the summary's
    (record.rows_per_s, over the seconds since the build started)."""

    def __init__(self, quiet: bool, label: str):
        self.quiet, self.label, self.bar = quiet, label, None

    def __enter__(self):
        if self.quiet:
            return None
        if not console.is_terminal:
            return _LogProgress(self.label)

        from hms_prep.building.record import rows_per_s  # here: `hms-prep -h` imports no build module

        def update(done: int, total: int, seconds: float) -> None:
            if self.bar is None:
                self._start()
            self.bar.update(self.task, completed=done, total=total, rate=f"{rows_per_s(done, seconds):.1f} rows/s")

        return update

    def _start(self):
        self.bar = Progress(
            TextColumn(f"{self.label}"), BarColumn(), MofNCompleteColumn(), TextColumn("rows"),
            TextColumn("{task.fields[rate]}"), TimeElapsedColumn(), TextColumn("ETA"), TimeRemainingColumn(),
            console=console, transient=False,
        )
        self.bar.__enter__()
        self.task = self.bar.add_task(self.label, total=None, rate="")

    def __exit__(self, *exc):
        if self.bar is not None:
            self.bar.__exit__(*exc)
        return False


class _LogProgress:
    """update(done, total, seconds) printing "building: 120/1450 rows (8%), 12.0 rows/s, ETA 1 min 50 s" at
    the first update, then at most every PROGRESS_EVERY_S, and at the end."""

    def __init__(self, label: str):
        self.label, self.last = label, None

    def __call__(self, done: int, total: int, seconds: float) -> None:
        now = time.monotonic()
        if self.last is not None and now - self.last < PROGRESS_EVERY_S and done < total:
            return
        from hms_prep.building.record import rows_per_s

        self.last = now
        rate = rows_per_s(done, seconds)
        eta = f", ETA {_duration((total - done) / rate)}" if 0 < done < total and rate > 0 else ""
        print(f"{self.label}: {done}/{total} rows ({100 * done / max(total, 1):.0f}%), {rate:.1f} rows/s{eta}",
              file=sys.stderr, flush=True)


def _duration(seconds: float) -> str:
    minutes, secs = divmod(int(round(seconds)), 60)
    return f"{minutes} min {secs} s" if minutes else f"{secs} s"


startup.imported()  # Ctrl-C is KeyboardInterrupt again, which the commands handle

if __name__ == "__main__":
    app()
