"""Bring-your-own-data manifests: columns, aliases, relative paths, spans, and errors naming file, line, column."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from streamemg.clinical.manifest import manifest_refs, parse_label, read_manifest, read_manifests
from streamemg.errors import DataFormatError

FS = 8000.0


@pytest.fixture()
def folder(tmp_path: Path) -> Path:
    """Three 2 s .npy recordings (one with a sidecar rate) and a .csv recording in a sub-folder."""
    rng = np.random.default_rng(0)
    rec = tmp_path / "rec"
    rec.mkdir()
    for name in ("a", "b", "c"):
        np.save(rec / f"{name}.npy", (rng.standard_normal(int(2 * FS)) * 50).astype(np.float32))
    (rec / "c.npy.json").write_text(json.dumps({"fs": 10000}))
    t = np.arange(int(FS)) / FS
    np.savetxt(rec / "d.csv", np.c_[t, rng.standard_normal(t.size)], delimiter=",", header="time,emg", comments="")
    return tmp_path


def write(path: Path, text: str) -> Path:
    path.write_text(text)
    return path


def test_columns_aliases_sites_and_relative_paths(folder: Path) -> None:
    m = write(
        folder / "mylab.csv",
        "# our biceps recordings\n"
        "Path,Label,Subject,fs,start_s,stop_s,note\n"
        "rec/a.npy,healthy,P1,8000,0.5,1.75,first visit\n"
        "\n"
        "rec/b.npy,NEUROGENIC,P2,8000,,,\n"
        "rec/c.npy,,P3,,,,no label: calibration only\n"
        "rec/d.csv,Myopathy,P4,,,,rate from the time column\n",
    )
    rows = read_manifest(m)
    assert [r.line for r in rows] == [3, 5, 6, 7]  # comment and blank lines keep the numbering
    assert [r.label for r in rows] == ["Normal", "ALS", None, "Myopathy"]
    assert all(r.site == "mylab" for r in rows)  # default site: the manifest's name
    assert rows[0].path == folder / "rec" / "a.npy"
    refs = manifest_refs([m])
    a, b, c, d = refs
    assert a.usable == (4000, 14000) and a.fs == FS and a.n_samples == 16000
    assert b.usable == (0, 16000) and b.label == "ALS"
    assert c.fs == 10000.0 and c.label == ""  # sidecar rate; unlabelled
    assert d.fs == pytest.approx(FS)
    assert a.subject == "mylab:P1" and a.dataset == "site:mylab" and a.site == "mylab"
    assert len({r.record for r in refs}) == 4


def test_site_column_and_absolute_paths(folder: Path) -> None:
    m = write(folder / "x.csv", f"path,label,subject,site,fs\n{folder / 'rec' / 'a.npy'},ALS,S1,clinicB,8000\n")
    (ref,) = manifest_refs([m])
    assert ref.site == "clinicB" and ref.subject == "clinicB:S1"


@pytest.mark.parametrize(
    ("text", "match"),
    [
        ("label,subject\nALS,1\n", r"x\.csv:1: no 'path' column"),
        ("path,lable\nrec/a.npy,ALS\n", r"x\.csv:1: unknown column 'lable'"),
        ("path,label\nrec/a.npy,Parkinson\n", r"x\.csv:2: column 'label': 'Parkinson' is not a class"),
        ("path,fs\nrec/a.npy,fast\n", r"x\.csv:2: column 'fs': 'fast' is not a number above 0"),
        ("path,start_s\nrec/a.npy,-1\n", r"x\.csv:2: column 'start_s'"),
        ("path,start_s,stop_s\nrec/a.npy,1.5,1.0\n", r"x\.csv:2: column 'stop_s': 1 s is not after start_s"),
        ("path,label\n\nrec/a.npy,ALS,extra\n", r"x\.csv:3: 3 cells but the header has 2 columns"),
        ("path\nrec/a.npy\n# again\nrec/a.npy\n", r"x\.csv:4: column 'path'.*already listed on line 2"),
        ("path,label\n,ALS\n", r"x\.csv:2: column 'path' is empty"),
        ("path,label\n", r"a header but no recordings"),
        ("", r"empty"),
    ],
)
def test_bad_manifests_name_file_line_and_column(folder: Path, text: str, match: str) -> None:
    with pytest.raises(DataFormatError, match=match):
        read_manifest(write(folder / "x.csv", text))


@pytest.mark.parametrize(
    ("text", "kwargs", "match"),
    [
        ("path,label,subject,fs\nrec/a.npy,,S1,8000\n", {"require_label": True},
         r"x\.csv:2: column 'label' is empty but training and evaluation need a label"),
        ("path,label,fs\nrec/a.npy,ALS,8000\n", {"require_subject": True}, r"x\.csv:2: column 'subject' is empty"),
        ("path,label\nrec/missing.npy,ALS\n", {}, r"x\.csv:2: column 'path': .*missing\.npy does not exist"),
        ("path,label\nrec/a.npy,ALS\n", {}, r"x\.csv:2: column 'path': .*sampling rate.*'fs' column"),
        ("path,fs,stop_s\nrec/a.npy,8000,9\n", {}, r"x\.csv:2: column 'stop_s': 9 s is beyond the end"),
        ("path,label,subject,fs\nrec/a.npy,ALS,S1,8000\nrec/b.npy,Myopathy,S1,8000\n", {},
         r"x\.csv:3: column 'label': subject 'S1' is Myopathy here but ALS at .*x\.csv:2"),
    ],
)
def test_bad_rows_when_opened(folder: Path, text: str, kwargs: dict, match: str) -> None:
    with pytest.raises(DataFormatError, match=match):
        manifest_refs([write(folder / "x.csv", text)], **kwargs)


def test_same_file_in_two_manifests_is_refused(folder: Path) -> None:
    m1 = write(folder / "one.csv", "path\nrec/a.npy\n")
    m2 = write(folder / "two.csv", "path\nrec/b.npy\nrec/a.npy\n")
    with pytest.raises(DataFormatError, match=r"two\.csv:3: column 'path'.*also listed at .*one\.csv:2"):
        read_manifests([m1, m2])


def test_missing_manifest_and_labels() -> None:
    with pytest.raises(DataFormatError, match="no such file"):
        read_manifest("/nonexistent/lab.csv")
    assert parse_label(" Healthy ") == "Normal" and parse_label("neuropathy") == "ALS" and parse_label("") is None
    with pytest.raises(ValueError):
        parse_label("normalish")
