"""Clinical readers and data set manifests: synthetic files always, the shared data when STREAMEMG_DATA is set."""

from __future__ import annotations

import csv
import lzma
from pathlib import Path

import numpy as np
import pytest

from streamemg.clinical.datasets import (
    EXCLUDED_RECORDS,
    LABEL_MAPPING_NOTE,
    RecordingRef,
    clipped_mask,
    clipped_stretches,
    data_root,
    find_recordings,
    subjects_of,
)
from streamemg.clinical.recordings import READERS, read_recording
from streamemg.errors import DataFormatError
from streamemg.types import CLASS_NAMES

# ------------------------------------------------------------------------------------------------ synthetic files


def _write_emglab(folder: Path, record: str, counts: np.ndarray, compress: bool) -> Path:
    hea = folder / f"{record}.hea"
    hea.write_text(
        f"{record} 1 23437.5 {counts.size}\n{record}.bin 16+20 13.1070/uV\n#diagnosis: ALS\n#muscle: Biceps brachii\n"
    )
    payload = b"\x00" * 20 + counts.astype("<i2").tobytes() + b"\x01" * 20  # 20 trailing bytes as in the originals
    if compress:
        (folder / f"{record}.bin.xz").write_bytes(lzma.compress(payload))
    else:
        (folder / f"{record}.bin").write_bytes(payload)
    return hea


@pytest.mark.parametrize("compress", [False, True])
def test_emglab_header_and_bin(tmp_path: Path, compress: bool) -> None:
    counts = np.array([0, 131, -262, 32767, -32768, 13107], dtype=np.int16)
    hea = _write_emglab(tmp_path, "N2001A01BB01", counts, compress)
    rec = read_recording(hea)
    assert rec.fs == 23437.5
    assert rec.data.shape == (6, 1) and rec.data.dtype == np.float32
    np.testing.assert_allclose(rec.data[:, 0], counts / 13.107, rtol=1e-6)
    assert rec.meta["n_clipped"] == 2
    assert rec.meta["hea_diagnosis"] == "ALS"
    # the signal file itself is read through its header
    sig = tmp_path / ("N2001A01BB01.bin.xz" if compress else "N2001A01BB01.bin")
    np.testing.assert_array_equal(read_recording(sig).data, rec.data)


def test_emglab_a08_stale_tail_is_dropped_by_every_reader_user(tmp_path: Path) -> None:
    counts = (np.arange(240010) % 1000 - 500).astype(np.int16)
    rec = read_recording(_write_emglab(tmp_path, "N2001A08BB07", counts, compress=True))
    assert rec.data.shape == (240000, 1)  # classify and file: replay never see the stale buffer content
    assert rec.meta["trimmed_from"] == 240010
    other = read_recording(_write_emglab(tmp_path, "N2001A07BB07", counts, compress=True))
    assert other.data.shape == (240010, 1)


def test_emglab_truncated_bin_is_an_error(tmp_path: Path) -> None:
    hea = tmp_path / "X.hea"
    hea.write_text("X 1 1000 100\nX.bin 16+20 13.1070/uV\n")
    (tmp_path / "X.bin").write_bytes(b"\x00" * 40)
    with pytest.raises(DataFormatError, match="truncated"):
        read_recording(hea)


def test_hea_without_signal_file(tmp_path: Path) -> None:
    hea = tmp_path / "Y.hea"
    hea.write_text("Y 1 1000 10\nY.bin 16+20 13.1070/uV\n")
    with pytest.raises(DataFormatError, match="not next to the header"):
        read_recording(hea)


def test_wfdb_record_via_wfdb_package(tmp_path: Path) -> None:
    counts = np.array([[-333], [100], [10000], [-20000]], dtype=np.int16)
    (tmp_path / "emg_test.dat").write_bytes(counts.astype("<i2").tobytes())
    (tmp_path / "emg_test.hea").write_text("emg_test 1 4000 4\nemg_test.dat 16 10000/mV 16 0 -333 0 0 EMG\n")
    rec = read_recording(tmp_path / "emg_test.hea")
    assert rec.fs == 4000.0
    assert rec.channels == ("EMG",)
    np.testing.assert_allclose(rec.data[:, 0], counts[:, 0] / 10000 * 1000, rtol=1e-6)  # mV -> µV


@pytest.mark.parametrize("name", ["a.asc", "a.asc.xz"])
def test_asc_reader(tmp_path: Path, name: str) -> None:
    values = np.array([651.6, 655.5, -12.25, 0.0])
    text = "".join(f"{v:11.4f}" for v in values).encode()
    path = tmp_path / name
    path.write_bytes(lzma.compress(text) if name.endswith(".xz") else text)
    rec = read_recording(path)
    assert rec.fs == 32768.0 and rec.meta["fs_assumed"] is True
    np.testing.assert_allclose(rec.data[:, 0], values, rtol=1e-6)
    assert read_recording(path, fs=1000.0).fs == 1000.0


def test_readers_registered() -> None:
    for suffix in (".hea", ".bin", ".bin.xz", ".dat", ".asc", ".asc.xz", ".npy", ".csv"):
        assert suffix in READERS


def test_data_root_env(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.delenv("STREAMEMG_DATA", raising=False)
    assert data_root() is None
    monkeypatch.setenv("STREAMEMG_DATA", str(tmp_path / "missing"))
    assert data_root() is None
    monkeypatch.setenv("STREAMEMG_DATA", str(tmp_path))
    assert data_root() == tmp_path


def test_emglab_manifest_rules_on_synthetic_folder(tmp_path: Path) -> None:
    folder = tmp_path / "emglab_n2001"
    folder.mkdir()
    rows = []
    rng = np.random.default_rng(0)
    for record, subject, cls, n, usable in [
        ("N2001A08BB01", "A08", "ALS", 300, 240000),
        ("N2001A06BB08", "A06", "ALS", 300, 300),
        ("N2001C01BB51", "C01", "Normal", 300, 300),
        ("N2001M02BB01", "M02", "Myopathy", 300, 300),  # listed but absent on disk
    ]:
        if record != "N2001M02BB01":
            _write_emglab(folder, record, rng.integers(-500, 500, n).astype(np.int16), compress=True)
        rows.append(
            {
                "record": record,
                "bin_file": f"{record}.bin.xz",
                "hea_file": f"{record}.hea",
                "subject": subject,
                "cls": cls,
                "fs_hz": "23437.5",
                "n_samples_header": str(n),
                "usable_samples": str(min(usable, n) if record != "N2001A08BB01" else 200),
                "n_clipped": "0",
                "muscle": "Biceps",
            }
        )
    with open(folder / "manifest.csv", "w", newline="") as fh:
        w = csv.DictWriter(fh, fieldnames=list(rows[0]))
        w.writeheader()
        w.writerows(rows)
    refs = find_recordings([tmp_path])
    records = {r.record: r for r in refs}
    assert set(records) == {"N2001A08BB01", "N2001C01BB51"}  # excluded flat file and absent file dropped
    a08 = records["N2001A08BB01"]
    assert a08.usable == (0, 200)
    assert a08.load().n_samples == 200
    assert a08.subject == "emglab:A08" and a08.label == "ALS"


def test_clipped_stretches() -> None:
    mask = np.array([0, 1, 1, 0, 0, 1, 0, 0, 0, 1], dtype=bool)
    assert clipped_stretches(mask) == [(1, 3), (5, 6), (9, 10)]
    assert clipped_stretches(mask, merge_gap=2) == [(1, 6), (9, 10)]
    assert clipped_stretches(np.zeros(4, bool)) == []


def test_recording_ref_validates_label_and_range(tmp_path: Path) -> None:
    kw = dict(path=tmp_path, dataset="emglab", subject="s", source_label="x", record="r", site="s", fs=1.0)
    with pytest.raises(DataFormatError):
        RecordingRef(label="Healthy", n_samples=10, usable=(0, 10), **kw)  # type: ignore[arg-type]
    with pytest.raises(DataFormatError):
        RecordingRef(label="Normal", n_samples=10, usable=(0, 11), **kw)  # type: ignore[arg-type]


# ------------------------------------------------------------------------------------------------ shared data


@pytest.fixture(scope="module")
def root() -> Path:
    r = data_root()
    if r is None:
        pytest.skip("clinical data folder not available: set STREAMEMG_DATA to the folder holding the data sets")
    return r


@pytest.fixture(scope="module")
def refs(root: Path) -> list[RecordingRef]:
    return find_recordings([root])


def _manifest(root: Path, folder: str) -> list[dict[str, str]]:
    with open(root / folder / "manifest.csv", newline="") as fh:
        return list(csv.DictReader(fh))


@pytest.mark.data
def test_only_manifest_files_and_labels(root: Path, refs: list[RecordingRef]) -> None:
    emglab = [r for r in refs if r.dataset == "emglab"]
    mendeley = [r for r in refs if r.dataset == "mendeley"]
    listed = {row["record"] for row in _manifest(root, "emglab_n2001")} - EXCLUDED_RECORDS
    assert {r.record for r in emglab} <= listed
    assert len(emglab) == len(listed)
    assert len(mendeley) == len(_manifest(root, "mendeley_543xpjycj9_needle_emg"))
    assert all(r.label in CLASS_NAMES for r in refs)
    assert {r.source_label: r.label for r in mendeley} == {
        "Healthy": "Normal",
        "Neuropathy": "ALS",
        "Myopathy": "Myopathy",
    }
    assert "not ALS" in LABEL_MAPPING_NOTE or "not ALS diagnoses" in LABEL_MAPPING_NOTE
    for subject, items in subjects_of(refs).items():
        assert len({r.label for r in items}) == 1, subject
        assert len({r.dataset for r in items}) == 1, subject


@pytest.mark.data
def test_emglab_values_match_manifest(root: Path, refs: list[RecordingRef]) -> None:
    rows = {row["record"]: row for row in _manifest(root, "emglab_n2001")}
    for ref in [r for r in refs if r.dataset == "emglab"][::60]:
        rec = ref.load(trim=False)
        row = rows[ref.record]
        assert rec.fs == 23437.5 and rec.n_samples == int(row["n_samples_header"])
        assert float(rec.data.std()) == pytest.approx(float(row["std_uV"]), rel=2e-3)
        assert float(rec.data.mean()) == pytest.approx(float(row["mean_uV"]), abs=0.01)


@pytest.mark.data
def test_a08_tail_trimmed_and_clipping_found(refs: list[RecordingRef]) -> None:
    a08 = [r for r in refs if r.record.startswith("N2001A08")]
    if a08:
        assert all(r.usable == (0, 240000) for r in a08)
        assert a08[0].load().n_samples == 240000
        assert not clipped_mask(a08[0], a08[0].load().data).any()  # the rail hits are all in the junk tail
    clipped = [r for r in refs if r.record == "N2001A03BB55"]
    if clipped:
        rec = clipped[0].load()
        mask = clipped_mask(clipped[0], rec.data)
        assert mask.sum() >= clipped[0].n_clipped
        assert len(clipped_stretches(mask, merge_gap=100)) > 1
    assert not any(r.record in EXCLUDED_RECORDS for r in refs)


@pytest.mark.data
def test_mendeley_and_emgdb_values(root: Path, refs: list[RecordingRef]) -> None:
    rows = {Path(row["file"]).name.split(".")[0]: row for row in _manifest(root, "mendeley_543xpjycj9_needle_emg")}
    ref = next(r for r in refs if r.dataset == "mendeley")
    rec = ref.load()
    assert rec.fs == 32768.0 and rec.n_samples == 163840
    assert float(rec.data.std()) == pytest.approx(float(rows[ref.record]["std_uV"]), rel=2e-3)
    emgdb = {r.record: r for r in refs if r.dataset == "emgdb"}
    assert set(emgdb) == {"emg_healthy", "emg_myopathy", "emg_neuropathy"}
    healthy = emgdb["emg_healthy"].load()
    assert healthy.fs == 4000.0 and healthy.n_samples == 50860
    assert float(healthy.data.std()) == pytest.approx(81.6, abs=0.1)  # PROVENANCE: std 81.6 µV
    assert emgdb["emg_neuropathy"].label == "ALS"


def test_csv_with_and_without_a_header_keeps_every_sample(tmp_path: Path) -> None:
    rows = np.arange(12, dtype=np.float64).reshape(6, 2)
    plain = tmp_path / "plain.csv"
    np.savetxt(plain, rows, delimiter=",")
    rec = read_recording(plain, fs=8000.0)
    np.testing.assert_array_equal(rec.data, rows)  # the first row is a sample, not a header
    assert rec.channels == ("ch1", "ch2")

    named = tmp_path / "named.csv"
    named.write_text("time,L,R\n" + "".join(f"{i / 8000},{a},{b}\n" for i, (a, b) in enumerate(rows)))
    rec = read_recording(named)
    np.testing.assert_array_equal(rec.data, rows)
    assert rec.channels == ("L", "R") and rec.fs == pytest.approx(8000.0)

    broken = tmp_path / "broken.csv"
    broken.write_text("L,R\n1,2\n3,oops\n")
    with pytest.raises(DataFormatError, match=r"broken\.csv: not a numeric CSV"):
        read_recording(broken, fs=8000.0)
