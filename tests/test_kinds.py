"""Array kinds as plug-ins: the registry, names that follow from params, variants side by side in one
store, stores of layout v1 unchanged, and a new kind added in one module (the worked example)."""

import ast
import json
import shutil
import subprocess
import sys
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Literal

import numpy as np
import pytest
import xarray
import zarr
from typer.testing import CliRunner

from hms_prep.store.audit import store_info, verify_store
from hms_prep.building.run import BuildConfig, run_build
from hms_prep.cli import app
from hms_prep.store.codecs import CODECS
from hms_prep.store.coords import store_dimension_names
from hms_prep.domain import CHAINS, SAMPLE_RATE
from hms_prep.sources.kaggle import read_spectrogram, spectrogram_path
from hms_prep.kinds.kaggle_crop import kaggle_crop
from hms_prep.kinds import (
    KINDS,
    ArrayKind,
    Cut,
    KaggleParams,
    MelParams,
    RawParams,
    kind_for,
    kind_named,
    register_kind,
    variant_name,
)
from hms_prep.kinds.base import EEG
from hms_prep.kinds.spec import parse_array_spec, parse_value
from hms_prep.show import show_row
from hms_prep.store.arrays import READ_HALF_OF_V1_KINDS, describe_arrays
from hms_prep.store.labels import read_labels
from hms_prep.store.layout import StoreError, digest, open_store

from conftest import ROOT

V1_ARRAYS = Path(__file__).parent / "data" / "store_v1_arrays.json"  # written by the layout-v1 code


@pytest.fixture(scope="module")
def cluster():
    from distributed import LocalCluster

    with LocalCluster(n_workers=2, threads_per_worker=1, dashboard_address=None) as cluster:
        yield cluster.scheduler_address


@pytest.fixture(scope="module")
def small_data(tmp_path_factory):
    from hms_prep.synth.dataset import synthesize

    out = tmp_path_factory.mktemp("kinds") / "data"
    synthesize(out, n_eegs=4, seed=3, n_test=1)  # 27 rows
    return out


@pytest.fixture(scope="module")
def default_store(small_data, tmp_path_factory, cluster):
    store = tmp_path_factory.mktemp("kinds") / "specs.zarr"
    summary = run_build(BuildConfig(data_dir=str(small_data), store=str(store), chunk_rows=8, scheduler=cluster))
    assert summary.ok
    return store


def copy_of(store: Path, tmp_path: Path) -> Path:
    copy = tmp_path / store.name
    shutil.copytree(store, copy)
    return copy


def chunk_files(store: Path, names) -> dict[str, int]:
    return {str(p.relative_to(store)): p.stat().st_mtime_ns
            for name in names for p in (store / name).rglob("*") if p.is_file()}


# --- the registry -----------------------------------------------------------------------------------

def test_registry_holds_the_three_kinds_by_attrs_kind():
    assert {"eeg_mel", "kaggle", "raw"} <= set(KINDS)
    assert kind_named("eeg_mel") is type(kind_for(MelParams(10)))
    with pytest.raises(KeyError, match=r"unknown array kind 'nope'; this hms-prep knows \["):
        kind_named("nope")
    with pytest.raises(TypeError, match="no array kind takes dict parameters"):
        kind_for({"window_s": 10})


# The EEG kinds' digests changed once since v1 (e15fd0a0fe19f562, dea12b7f27fb7616, 31480938405ef1fc), when
# their params began to record the NaN repair fixed per recording (decisions.md); the Kaggle crop's did not.
@pytest.mark.parametrize("params, name, digest_, shape, codec", [
    (MelParams(10), "eeg_10s", "616d89cfed41175a", (4, 100, 256), "lz4"),
    (MelParams(30), "eeg_30s", "d615f474868fb4aa", (4, 100, 256), "lz4"),
    (KaggleParams(), "kaggle", "67a786224bdc37c0", (4, 100, 300), "zstd"),
    (RawParams(), "raw", "32c43f65ecacb839", None, "lz4"),
])
def test_each_default_kind_keeps_its_v1_name_digest_shape_and_codec(params, name, digest_, shape, codec):
    kind = kind_for(params)
    assert (kind.name, kind.digest, kind.default_codec) == (name, digest_, codec)
    assert kind.digest == digest(kind.attrs()["params"])
    if shape is not None:
        assert kind.role == "image" and kind.item_shape == shape
    else:
        assert kind.role == "signals" and kind.signals[-2:] == ("Fz-Cz", "Cz-Pz")


def test_variant_names_follow_from_params():
    assert kind_for(MelParams(10, n_mels=50)).name == "eeg_10s_m50"
    assert kind_for(MelParams(44, n_mels=64)).item_shape == (4, 64, 256)
    assert kind_for(MelParams(10, hop_length=7)).name == "eeg_10s", "the default hop, spelled out"
    other = kind_for(MelParams(10, fmax=25.0))
    assert other.name == f"eeg_10s_{other.digest[:8]}"
    both = kind_for(MelParams(10, n_mels=50, fmax=25.0))
    assert both.name == f"eeg_10s_{both.digest[:8]}" and both.name != other.name
    assert kind_for(KaggleParams(1200)).name == "kaggle_1200s"
    assert kind_for(KaggleParams(1200)).item_shape == (4, 100, 600)
    raw = kind_for(RawParams(band_pass=None))
    assert raw.name == f"raw_{raw.digest[:8]}"
    # 14 s and 44 s windows (David's) give 256 frames with hop W*200//256 = 10 and 34
    assert MelParams(14).resolved().hop_length == 10 and MelParams(44).resolved().hop_length == 34
    for bad in (0, 601, 3.0):
        with pytest.raises(ValueError, match="positive multiple of 2 s"):
            KaggleParams(bad)


def test_imports_run_one_way_and_info_and_verify_import_no_torch(default_store):
    """The mel math (kinds/mel.py, torch) imports nothing of the kinds; the mel kind imports it only to
    compute, so reading a store's description (info, verify) never loads torch."""
    tree = ast.parse((ROOT / "hms_prep" / "kinds" / "mel.py").read_text())
    imported = {n.module for n in ast.walk(tree) if isinstance(n, ast.ImportFrom)}
    imported |= {a.name for n in ast.walk(tree) if isinstance(n, ast.Import) for a in n.names}
    assert "torch" in imported and not [m for m in imported if m.startswith("hms_prep.kinds")]
    code = ("import sys; from hms_prep.store.audit import store_info, verify_store; "
            f"store_info({str(default_store)!r}); assert verify_store({str(default_store)!r}) == []; "
            "print('torch' in sys.modules)")
    result = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    assert result.stdout.split() == ["False"]


# --- --array KIND:key=value,... ------------------------------------------------------------------------

@pytest.mark.parametrize("spec, params, name", [
    ("eeg_mel:window_s=14,n_mels=50", MelParams(14, n_mels=50), "eeg_14s_m50"),  # = --windows 14 --n-mels 50
    ("eeg_mel:window_s=10,hop_length=none,fmax=20", MelParams(10), "eeg_10s"),
    ("eeg_mel: window_s=10, band_pass=0.5-20", MelParams(10, band_pass=(0.5, 20.0)), None),
    ("kaggle:window_s=1200", KaggleParams(1200), "kaggle_1200s"),  # = --kaggle-window 1200
    ("kaggle", KaggleParams(), "kaggle"),
    ("raw:margin_s=10", RawParams(), "raw"),
    ("raw:band_pass=none,midline=false,clip_uv=512", RawParams(None, 512.0, midline=False), None),
])
def test_an_array_spec_gives_the_kinds_params_by_their_declared_types(spec, params, name):
    parsed = parse_array_spec(spec)
    assert parsed == params and type(parsed) is type(params)
    if name:
        assert kind_for(parsed).name == name


def test_array_spec_values_follow_the_field_types():
    assert parse_value("-1--2.5", tuple[float, float]) == (-1.0, -2.5)  # a '-' after a digit separates
    assert parse_value("1-2-3", tuple[int, ...]) == (1, 2, 3)
    assert parse_value("none", int | None) is None and parse_value("7", int | None) == 7
    assert parse_value("yes", bool) is True and parse_value("0", bool) is False
    for text, declared in (("1.5", int), ("1-2-3", tuple[float, float]), ("x", Literal["a", "b"]), ("2", dict)):
        with pytest.raises(ValueError):
            parse_value(text, declared)


# --- stores -----------------------------------------------------------------------------------------

def test_default_arrays_keep_the_layout_v1_metadata_and_add_their_read_half(default_store):
    """Stores built by the layout-v1 code open unchanged: same names, codecs and every v1 attribute
    literally (tests/data/store_v1_arrays.json, written by that code), but for the EEG kinds' params,
    which record exactly their NaN repair and band-pass span besides (their digest follows: decisions.md).
    A new build adds exactly the kind's read half, `storage`, `role` and `normalise`, with the values the v1 fallback
    gives, and zarr's `dimension_names` (decisions.md)."""
    from hms_prep.sources.montage import NAN_REPAIR
    from hms_prep.sources.recordings import SEGMENTS_SPAN

    expected = json.loads(V1_ARRAYS.read_text())
    group, layout = open_store(str(default_store))
    assert layout.layout_version == 2  # the arrays are as v1 wrote them; the rows follow label_id (layout 2)
    assert sorted(describe_arrays(group)) == sorted(expected) == ["eeg_10s", "eeg_30s", "kaggle", "raw"]
    recorded_since_v1 = {"eeg_mel": {"nan_repair": NAN_REPAIR, "band_pass_span": None},  # no band-pass
                         "raw": {"nan_repair": NAN_REPAIR, "band_pass_span": SEGMENTS_SPAN}, "kaggle": {}}
    for name, v1 in expected.items():
        metadata = json.loads((default_store / name / "zarr.json").read_text())
        attributes = metadata["attributes"]
        v1_params = {**v1["attributes"]["params"], **recorded_since_v1[v1["attributes"]["kind"]]}
        assert attributes["params"] == v1_params and attributes["params_digest"] == digest(v1_params), name
        same = [key for key in v1["attributes"] if key not in ("params", "params_digest")]
        assert {key: attributes[key] for key in same} == {key: v1["attributes"][key] for key in same}, name
        added = {key: value for key, value in attributes.items() if key not in v1["attributes"]}
        role, normalise = READ_HALF_OF_V1_KINDS[v1["attributes"]["kind"]]
        storage = "segment" if role == "signals" else "row"
        assert added == {"storage": storage, "role": role, "normalise": normalise}, name
        assert metadata["dimension_names"] == list(store_dimension_names(name, v1["attributes"]["axes"], "train")), name
        assert metadata["codecs"] == v1["codecs"], name
        assert (metadata["data_type"], metadata["fill_value"]) == (v1["data_type"], v1["fill_value"]), name


def test_a_store_with_the_v1_metadata_reads_as_a_new_one(default_store, tmp_path):
    """Arrays that carry exactly the v1 metadata (no role, normalise, dimension_names) are described,
    verified and drawn as the new ones are; only xarray needs the dimension names."""
    store = copy_of(default_store, tmp_path)
    for name, v1 in json.loads(V1_ARRAYS.read_text()).items():
        path = store / name / "zarr.json"
        metadata = {**json.loads(path.read_text()), "attributes": v1["attributes"]}
        del metadata["dimension_names"]
        path.write_text(json.dumps(metadata))
    assert "role" not in zarr.open_array(str(store / "kaggle")).attrs
    old, new = (describe_arrays(open_store(str(s))[0]) for s in (store, default_store))

    def read_half(described):  # the EEG kinds' params record their NaN repair since (the next test)
        return {name: replace(d, params={}, params_digest="") for name, d in described.items()}

    assert read_half(old) == read_half(new) and new["kaggle"].normalise == "zscore" and not new["raw"].image
    assert verify_store(str(store)) == []
    assert show_row(str(store), row=3, out=tmp_path / "row3.png").is_file()
    with pytest.raises(KeyError, match="dimension_names"):
        xarray.open_zarr(str(store), consolidated=False)


def test_arrays_whose_nan_repair_depended_on_the_build_are_refused_by_a_build_never_mixed(
        default_store, small_data, tmp_path):
    """The v1 code repaired NaN with the mean of the span a task read, which depended on what it
    computed together: its EEG arrays (params without nan_repair) still read, verify and train, but a
    build that would add to them is refused with one line saying how to go on; the Kaggle crop, whose
    recipe did not change, is still built into."""
    store = copy_of(default_store, tmp_path)
    v1 = json.loads(V1_ARRAYS.read_text())
    path = store / "eeg_10s" / "zarr.json"
    path.write_text(json.dumps({**json.loads(path.read_text()), "attributes": v1["eeg_10s"]["attributes"]}))
    assert verify_store(str(store)) == []
    before = chunk_files(store, ["eeg_10s", "kaggle"])
    result = CliRunner().invoke(app, ["build", "--data", str(small_data), "--store", str(store), "--windows", "10",
                                      "--kaggle-window", "1200", "--no-raw", "--quiet"])
    assert result.exit_code == 1 and "array eeg_10s exists with other parameters" in result.output, result.output
    assert "nan_repair None -> each bipolar signal's NaNs -> its mean over the whole recording" in result.output
    assert "Traceback" not in result.output and chunk_files(store, ["eeg_10s", "kaggle"]) == before
    assert not (store / "kaggle_1200s").exists()


def test_variants_are_added_beside_the_defaults_and_a_second_run_computes_nothing(default_store, small_data,
                                                                                   tmp_path, cluster):
    store = copy_of(default_store, tmp_path)
    before = chunk_files(store, ["eeg_10s", "eeg_30s", "kaggle", "raw"])
    command = ["build", "--data", str(small_data), "--store", str(store), "--windows", "10,14,30,44",
               "--n-mels", "50", "--scheduler", cluster, "--quiet"]
    result = CliRunner().invoke(app, command)
    assert result.exit_code == 0, result.output
    assert "computed eeg_10s_m50, eeg_14s_m50, eeg_30s_m50, eeg_44s_m50; reused kaggle, raw" in result.output
    assert chunk_files(store, ["eeg_10s", "eeg_30s", "kaggle", "raw"]) == before, "defaults untouched"
    group, _ = open_store(str(store))
    for window in (10, 14, 30, 44):
        array = group[f"eeg_{window}s_m50"]
        assert array.shape[1:] == (4, 50, 256) and array.attrs["params"]["n_mels"] == 50
        assert array.attrs["params"]["hop_length"] == window * SAMPLE_RATE // 256
    assert verify_store(str(store)) == []
    labels = read_labels(str(store))
    assert {"repaired_eeg_14s_m50", "raw_start"} <= set(labels.column_names)

    again = CliRunner().invoke(app, command)
    assert again.exit_code == 0 and "nothing to compute" in again.output
    info = CliRunner().invoke(app, ["info", str(store)])
    assert info.exit_code == 0 and "eeg_14s_m50 eeg_mel" in info.output and "n_mels=50" in info.output


def test_a_wider_kaggle_crop_is_centred_on_the_same_point(default_store, small_data, tmp_path, cluster):
    store = copy_of(default_store, tmp_path)
    summary = run_build(BuildConfig(data_dir=str(small_data), store=str(store), windows=(), raw=None,
                                    kaggle_window_s=1200, chunk_rows=8, scheduler=cluster))
    assert summary.computed == ["kaggle_1200s"] and summary.ok
    group, _ = open_store(str(store))
    wide, narrow = group["kaggle_1200s"][:], group["kaggle"][:]
    assert wide.shape == (narrow.shape[0], 4, 100, 600)
    np.testing.assert_array_equal(wide[..., 150:450], narrow)  # the 10 minutes sit in the middle
    labels = read_labels(str(store)).to_pylist()
    row = labels[0]
    time_s, power = read_spectrogram(spectrogram_path(small_data, "train", row["spectrogram_id"]))
    crop, n_rows, nan_fraction = kaggle_crop(time_s, power, row["spectrogram_label_offset_seconds"], 1200)
    np.testing.assert_array_equal(wide[0], crop.astype(np.float16))
    assert n_rows < 600, "the file is shorter than 20 min: padded"
    padded_or_nan = (600 - n_rows + nan_fraction * n_rows) / 600  # padding counts as repaired
    assert row["repaired_kaggle_1200s"] == pytest.approx(padded_or_nan)
    assert "kaggle_1200s: Kaggle 20 min" in show_part_titles(store)


def show_part_titles(store: Path) -> str:
    from hms_prep.show import part_title

    group, _ = open_store(str(store))
    return " ".join(part_title(name, group[name].attrs.asdict()) for name in describe_arrays(group))


def test_raw_variants_must_share_the_segment_layout(default_store, small_data, tmp_path, cluster):
    store = copy_of(default_store, tmp_path)
    with pytest.raises(StoreError, match=r"share one segment layout, so one margin_s \(raw margin_s=10, raw_\w+ margin_s=5\)"):
        run_build(BuildConfig(data_dir=str(small_data), store=str(store), raw=RawParams(margin_s=5),
                              chunk_rows=8, scheduler=cluster))
    assert sorted(describe_arrays(open_store(str(store))[0])) == ["eeg_10s", "eeg_30s", "kaggle", "raw"]


def test_verify_flags_params_edited_by_hand(default_store, tmp_path):
    store = copy_of(default_store, tmp_path)
    array = zarr.open_array(str(store / "eeg_30s"), mode="r+")
    array.attrs["params"] = {**array.attrs["params"], "n_mels": 64}
    problems = verify_store(str(store))
    assert len(problems) == 1 and "eeg_30s: params_digest d615f474868fb4aa does not match" in problems[0]


# --- the worked example: a new kind in one module ---------------------------------------------------

@dataclass(frozen=True)
class EnvelopeParams:
    window_s: int = 10
    frames: int = 50

    def to_dict(self) -> dict:
        return {**asdict(self), "sample_rate": SAMPLE_RATE, "scaling": "log1p(mean |x|)"}

    def digest(self) -> str:
        return digest(self.to_dict())


@dataclass(frozen=True)
class EegEnvelope(ArrayKind):
    """log1p of the mean absolute amplitude of each bipolar signal in `frames` time bins: (4, 4, frames)."""

    params: EnvelopeParams
    kind = "eeg_envelope"
    params_type = EnvelopeParams
    source = EEG  # cut from the NaN-repaired bipolar signals, read once per recording with the others
    default_codec = "lz4"
    stage = "envelope"

    @property
    def name(self) -> str:
        window = self.params.window_s
        return variant_name(f"envelope_{window}s", self.params, EnvelopeParams(window), {"frames": "f{}"})

    @property
    def item_shape(self) -> tuple[int, ...]:
        return (len(CHAINS), 4, self.params.frames)

    def cut(self, recording, rows) -> Cut:
        values = {}
        for row in recording.good:
            if row.row in rows:
                window = np.abs(recording.centred_window(row, self.params.window_s)[:16])
                values[row.row] = np.log1p(window.reshape(4, 4, self.params.frames, -1).mean(-1))
        return Cut(values=values)

    @staticmethod
    def title(params: dict) -> str:
        return f"EEG envelope {params['window_s']} s · {params['frames']} bins"


@pytest.fixture
def envelope_kind():
    register_kind(EegEnvelope)  # a plug-in module does this with @register_kind at import
    yield EegEnvelope
    KINDS.unregister(EegEnvelope.kind)


def test_a_new_kind_is_one_module(envelope_kind, default_store, small_data, tmp_path):
    store = f"memory://kinds-example/{tmp_path.name}/specs.zarr"  # in-process workers see the test's kind
    config = BuildConfig(data_dir=str(small_data), store=store, raw=None, chunk_rows=8, workers=1,
                         extra_arrays=(EnvelopeParams(),))
    first = run_build(config)
    assert first.ok and "envelope_10s" in first.computed
    assert run_build(config).computed == []
    assert verify_store(store) == []
    assert store_info(store)["arrays"]["envelope_10s"]["kind"] == "eeg_envelope"
    group, _ = open_store(store)
    assert group["envelope_10s"].shape == (27, 4, 4, 50)
    assert group["envelope_10s"].metadata.codecs[1].cname.value == "lz4"
    assert np.isfinite(group["envelope_10s"][:]).all() and group["envelope_10s"][:].max() > 0
    path = show_row(store, row=0, out=tmp_path / "row0.png", arrays=["eeg_10s", "envelope_10s"])
    assert path.is_file()
    with pytest.raises(ValueError, match="no array eeg_50s; it has eeg_10s, eeg_30s, envelope_10s, kaggle"):
        show_row(store, row=0, out=tmp_path / "x.png", arrays=["eeg_50s"])


def test_a_kind_that_clashes_is_refused():
    with pytest.raises(ValueError, match=r"^array kind 'eeg_mel' is registered twice \(by hms_prep.kinds.eeg_mel and "):
        register_kind(type("Other", (EegEnvelope,), {"kind": "eeg_mel"}))
    with pytest.raises(ValueError, match="clashes with EegMel"):  # one params type, one kind
        register_kind(type("Other", (EegEnvelope,), {"kind": "other", "params_type": MelParams}))
    assert CODECS["lz4"] and "eeg_envelope" not in KINDS
