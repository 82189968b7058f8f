"""The clinical needle-EMG data sets: where they are, which files count, their labels and caveats.

Three data sets are known, each read from its own folder under the data root:

========================  =====================================  ===========  ===================================
folder                    classes (as stored -> streamemg class)  rate (Hz)    subject key
========================  =====================================  ===========  ===================================
``emglab_n2001``          Normal, ALS, Myopathy                  23437.5      ``C01`` / ``A03`` / ``M02`` ...
``mendeley_543xpjycj9_``  Healthy -> Normal, Neuropathy -> ALS   32768        (class, subject number in class)
``needle_emg``            (neurogenic), Myopathy -> Myopathy
``physionet_emgdb``       healthy -> Normal, neuropathy -> ALS   4000         one subject per class
                          (neurogenic), myopathy -> Myopathy
========================  =====================================  ===========  ===================================

Only files listed in a folder's ``manifest.csv`` are used (some subjects are held aside and absent). The
caveats written in each folder's PROVENANCE.md are applied here, once, for every consumer:

- EMGLAB A08: only samples ``[0, 240000)`` are usable (the tail is stale buffer content); the manifest's
  ``usable_samples`` column carries this and :meth:`RecordingRef.load` trims to it.
- EMGLAB ``N2001A06BB08`` (flat, no signal) is never used, even if a manifest lists it.
- Saturated (clipped) samples: ``n_clipped`` per recording; :func:`clipped_mask` marks them so training can
  drop windows touching them (streams flag them through the quality gate).

"Neuropathy" in Mendeley and emgdb is generic neuropathy (emgdb: an L5 radiculopathy), not ALS. It is mapped
to the neurogenic class ``"ALS"`` because that is the closest of the three classes; every cross-site report
says so (:data:`LABEL_MAPPING_NOTE`).
"""

from __future__ import annotations

import csv
import os
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from ..errors import DataFormatError
from ..types import CLASS_NAMES
from .recordings import KNOWN_STALE_TAILS, Recording, read_recording

__all__ = [
    "DATASET_FOLDERS",
    "EXCLUDED_RECORDS",
    "LABEL_MAPPING_NOTE",
    "RecordingRef",
    "clipped_mask",
    "clipped_stretches",
    "data_root",
    "find_recordings",
    "read_emgdb",
    "read_emglab",
    "read_mendeley",
    "subjects_of",
]

#: Environment variable naming the folder that holds the data set folders.
DATA_ENV = "STREAMEMG_DATA"

#: dataset key -> folder name under the data root.
DATASET_FOLDERS: dict[str, str] = {
    "emglab": "emglab_n2001",
    "mendeley": "mendeley_543xpjycj9_needle_emg",
    "emgdb": "physionet_emgdb",
}

#: Records never used, whatever a manifest says (PROVENANCE: flat, no signal).
EXCLUDED_RECORDS: frozenset[str] = frozenset({"N2001A06BB08"})

#: Stored class name -> streamemg class, per data set.
LABEL_MAPS: dict[str, dict[str, str]] = {
    "emglab": {"Normal": "Normal", "ALS": "ALS", "Myopathy": "Myopathy"},
    "mendeley": {"Healthy": "Normal", "Neuropathy": "ALS", "Myopathy": "Myopathy"},
    "emgdb": {"healthy": "Normal", "neuropathy": "ALS", "myopathy": "Myopathy"},
}

LABEL_MAPPING_NOTE = (
    "Mendeley 'Neuropathy' (generic neuropathy) and emgdb 'neuropathy' (L5 radiculopathy) are scored as the "
    "neurogenic class 'ALS'; 'Healthy' is scored as 'Normal'. They are not ALS diagnoses."
)

#: EMGLAB int16 rails in µV (±32767 / 13.107 units per µV, PROVENANCE): at or beyond these a sample is clipped.
EMGLAB_GAIN_PER_UV = 13.107
EMGLAB_RAIL_UV = 32767 / EMGLAB_GAIN_PER_UV

_EMGDB_RECORDS: dict[str, str] = {"emg_healthy": "healthy", "emg_myopathy": "myopathy", "emg_neuropathy": "neuropathy"}


def data_root() -> Path | None:
    """The data root from the ``STREAMEMG_DATA`` environment variable; None if unset or not a folder."""
    value = os.environ.get(DATA_ENV, "").strip()
    if not value:
        return None
    path = Path(value).expanduser()
    return path if path.is_dir() else None


@dataclass(frozen=True)
class RecordingRef:
    """One recording of a clinical data set, with its label and caveats (nothing loaded yet).

    Attributes:
        path: the file to open with :func:`streamemg.clinical.recordings.read_recording` (``.hea`` or ``.asc.xz``).
        dataset: ``"emglab"``, ``"mendeley"`` or ``"emgdb"``.
        subject: globally unique subject key, e.g. ``"emglab:A03"``, ``"mendeley:Neuropathy-53"``.
        label: the streamemg class (a member of ``CLASS_NAMES``), or ``""`` for an unlabelled recording
            (bring-your-own-data manifests; usable for calibration and classification only).
        source_label: the class name as stored in the data set (``"Neuropathy"``, ``"Healthy"``, ...).
        record: the record name (file stem).
        site: recording site (``"copenhagen"``, ``"algiers"``, ``"physionet"``); cross-site splits use it.
        fs: native sampling rate, Hz.
        n_samples: samples in the file.
        usable: half-open native sample range ``[start, stop)`` that holds real signal.
        n_clipped: samples at the ADC rails in the whole file (manifest or reader).
        muscle: muscle (and head) as documented.
        meta: remaining manifest fields that help a report (age, side, diagnosis, ...).
    """

    path: Path
    dataset: str
    subject: str
    label: str
    source_label: str
    record: str
    site: str
    fs: float
    n_samples: int
    usable: tuple[int, int]
    n_clipped: int = 0
    muscle: str = ""
    meta: dict[str, Any] = field(default_factory=dict, compare=False, hash=False)

    def __post_init__(self) -> None:
        if self.label not in CLASS_NAMES and self.label != "":
            raise DataFormatError(
                f"{self.record}: label {self.label!r} is not one of {CLASS_NAMES} (or '' for unlabelled)"
            )
        start, stop = self.usable
        if not 0 <= start < stop <= self.n_samples:
            raise DataFormatError(f"{self.record}: usable range {self.usable} outside [0, {self.n_samples}]")

    @property
    def label_index(self) -> int:
        """Position of :attr:`label` in ``CLASS_NAMES`` (DataFormatError for an unlabelled recording)."""
        if not self.label:
            raise DataFormatError(f"{self.path}: unlabelled recording; training and evaluation need its label")
        return CLASS_NAMES.index(self.label)

    @property
    def usable_s(self) -> float:
        """Usable duration, s."""
        return (self.usable[1] - self.usable[0]) / self.fs

    @property
    def clipped(self) -> bool:
        """True when the usable part may hold saturated samples."""
        return self.n_clipped > 0

    def load(self, trim: bool = True) -> Recording:
        """Read the samples (µV, ``(n, 1)`` float32); ``trim`` keeps only the usable range (A08's tail)."""
        rec = read_recording(self.path, fs=self.fs)
        on_disk = int(rec.meta.get("trimmed_from", rec.n_samples))  # the reader drops known stale tails itself
        if on_disk != self.n_samples:
            raise DataFormatError(
                f"{self.path}: holds {on_disk} samples, the manifest says {self.n_samples}; "
                "the file is not the one the manifest describes"
            )
        if not trim or self.usable == (0, self.n_samples) or self.usable == (0, rec.n_samples):
            return rec
        start, stop = self.usable
        meta = dict(rec.meta)
        meta["trimmed_to"] = (start, stop)
        return Recording(np.ascontiguousarray(rec.data[start:stop]), rec.fs, rec.channels, rec.path, meta)


def clipped_mask(ref: RecordingRef, data: np.ndarray) -> np.ndarray:
    """Boolean ``(n,)`` mask of saturated samples of a loaded recording (any channel).

    EMGLAB: samples at the int16 rails (±2500 µV). Other sets: samples equal to the recording's own extreme
    value when the reader counted rail hits (``n_clipped`` > 0), else nothing.
    """
    x = np.asarray(data, dtype=np.float32)
    if x.ndim == 1:
        x = x[:, None]
    if ref.n_clipped <= 0:
        return np.zeros(x.shape[0], dtype=bool)
    if ref.dataset == "emglab":
        return bool_any(np.abs(x) >= (32767 - 0.5) / EMGLAB_GAIN_PER_UV)
    top, bottom = x.max(axis=0), x.min(axis=0)
    return bool_any((x >= top) | (x <= bottom))


def bool_any(mask: np.ndarray) -> np.ndarray:
    """``(n, C)`` bool -> ``(n,)``: any channel set."""
    return np.asarray(mask.any(axis=1) if mask.ndim == 2 else mask, dtype=bool)


def clipped_stretches(mask: np.ndarray, merge_gap: int = 0) -> list[tuple[int, int]]:
    """Half-open ``[start, stop)`` runs of True in a ``(n,)`` mask; runs closer than ``merge_gap`` are merged."""
    m = np.asarray(mask, dtype=bool)
    if not m.any():
        return []
    d = np.diff(np.concatenate([[0], m.astype(np.int8), [0]]))
    starts, stops = np.flatnonzero(d == 1), np.flatnonzero(d == -1)
    runs: list[tuple[int, int]] = []
    for a, b in zip(starts.tolist(), stops.tolist(), strict=True):
        if runs and a - runs[-1][1] <= merge_gap:
            runs[-1] = (runs[-1][0], b)
        else:
            runs.append((a, b))
    return runs


def _read_manifest(path: Path) -> list[dict[str, str]]:
    try:
        with open(path, newline="") as fh:
            return list(csv.DictReader(fh))
    except (OSError, csv.Error) as exc:
        raise DataFormatError(f"{path}: unreadable manifest ({exc})") from exc


def _need(row: dict[str, str], key: str, where: Path) -> str:
    value = row.get(key)
    if value is None or value == "":
        raise DataFormatError(f"{where}: manifest row lacks {key!r}: {row}")
    return value


def read_emglab(folder: Path) -> list[RecordingRef]:
    """EMGLAB N2001 recordings listed in ``folder/manifest.csv`` whose ``.hea`` and signal file are present."""
    manifest = folder / "manifest.csv"
    refs: list[RecordingRef] = []
    for row in _read_manifest(manifest):
        record = _need(row, "record", manifest)
        if record in EXCLUDED_RECORDS:
            continue
        hea = folder / _need(row, "hea_file", manifest)
        if not hea.exists() or not (folder / _need(row, "bin_file", manifest)).exists():
            continue
        n = int(_need(row, "n_samples_header", manifest))
        usable = int(row.get("usable_samples") or n)
        for prefix, keep in KNOWN_STALE_TAILS.items():  # PROVENANCE: A08's tail is stale buffer content
            if record.startswith(prefix):
                usable = min(usable, keep)
        cls = _need(row, "cls", manifest)
        refs.append(
            RecordingRef(
                path=hea,
                dataset="emglab",
                subject=f"emglab:{_need(row, 'subject', manifest)}",
                label=LABEL_MAPS["emglab"][cls],
                source_label=cls,
                record=record,
                site="copenhagen",
                fs=float(_need(row, "fs_hz", manifest)),
                n_samples=n,
                usable=(0, usable),
                n_clipped=int(float(row.get("n_clipped") or 0)),
                muscle=row.get("muscle", ""),
                meta={k: row.get(k, "") for k in ("age", "gender", "side", "diagnosis", "level", "std_uV")},
            )
        )
    return refs


def read_mendeley(folder: Path) -> list[RecordingRef]:
    """Mendeley 543xpjycj9 biceps recordings listed in ``folder/manifest.csv`` and present on disk."""
    manifest = folder / "manifest.csv"
    refs: list[RecordingRef] = []
    for row in _read_manifest(manifest):
        rel = _need(row, "file", manifest)
        path = folder / rel
        if not path.exists():
            continue
        cls = _need(row, "cls", manifest)
        n = int(_need(row, "n_samples", manifest))
        name = Path(rel).name
        refs.append(
            RecordingRef(
                path=path,
                dataset="mendeley",
                subject=f"mendeley:{cls}-{_need(row, 'subject_in_class', manifest)}",
                label=LABEL_MAPS["mendeley"][cls],
                source_label=cls,
                record=name.split(".")[0],
                site="algiers",
                fs=float(_need(row, "fs_hz", manifest)),
                n_samples=n,
                usable=(0, n),
                n_clipped=0,
                muscle="Biceps brachii",
                meta={k: row.get(k, "") for k in ("side_muscle", "record_id", "frac_power_45_55hz", "std_uV")},
            )
        )
    return refs


def read_emgdb(folder: Path) -> list[RecordingRef]:
    """The three PhysioNet emgdb records present in ``folder`` (no manifest: the documented record names)."""
    refs: list[RecordingRef] = []
    for record, cls in _EMGDB_RECORDS.items():
        hea = folder / f"{record}.hea"
        if not hea.exists() or not (folder / f"{record}.dat").exists():
            continue
        rec = read_recording(hea)
        refs.append(
            RecordingRef(
                path=hea,
                dataset="emgdb",
                subject=f"emgdb:{cls}",
                label=LABEL_MAPS["emgdb"][cls],
                source_label=cls,
                record=record,
                site="physionet",
                fs=float(rec.fs),
                n_samples=rec.n_samples,
                usable=(0, rec.n_samples),
                n_clipped=int(rec.meta.get("n_clipped", 0)),
                muscle="Tibialis anterior",
            )
        )
    return refs


_READERS = {"emglab": read_emglab, "mendeley": read_mendeley, "emgdb": read_emgdb}


def detect_dataset(folder: Path) -> str | None:
    """Which data set a folder holds (by its name, else by its files), or None."""
    for key, name in DATASET_FOLDERS.items():
        if folder.name == name:
            return key
    if (folder / "manifest.csv").exists():
        with open(folder / "manifest.csv", newline="") as fh:
            header = fh.readline()
        if "hea_file" in header:
            return "emglab"
        if "subject_in_class" in header:
            return "mendeley"
    if (folder / "emg_healthy.hea").exists() or (folder / "emg_myopathy.hea").exists():
        return "emgdb"
    return None


def find_recordings(
    folders: Sequence[str | Path] | None = None, datasets: Iterable[str] | None = None
) -> list[RecordingRef]:
    """Every usable recording under the given folders (each a data root or one data set's folder).

    Args:
        folders: data folders; None means :func:`data_root`.
        datasets: restrict to these data set keys (``"emglab"``, ``"mendeley"``, ``"emgdb"``).

    Raises:
        DataFormatError: a folder does not exist or holds no known data set.
    """
    if folders is None:
        root = data_root()
        if root is None:
            raise DataFormatError(
                f"no data folder: set {DATA_ENV} to the folder holding {', '.join(DATASET_FOLDERS.values())}"
            )
        folders = [root]
    wanted = set(datasets) if datasets is not None else set(DATASET_FOLDERS)
    unknown = wanted - set(DATASET_FOLDERS)
    if unknown:
        raise DataFormatError(f"unknown data set(s) {sorted(unknown)}; known: {sorted(DATASET_FOLDERS)}")
    refs: list[RecordingRef] = []
    seen: set[Path] = set()
    for f in folders:
        folder = Path(f).expanduser()
        if not folder.is_dir():
            raise DataFormatError(f"{folder}: not a folder")
        kind = detect_dataset(folder)
        pairs: list[tuple[str, Path]]
        if kind is not None:
            pairs = [(kind, folder)]
        else:
            pairs = [(k, folder / n) for k, n in DATASET_FOLDERS.items() if (folder / n).is_dir()]
            if not pairs:
                raise DataFormatError(
                    f"{folder}: holds none of the known data sets ({', '.join(DATASET_FOLDERS.values())})"
                )
        for key, sub in pairs:
            if key not in wanted:
                continue
            for ref in _READERS[key](sub):
                if ref.path.resolve() not in seen:
                    seen.add(ref.path.resolve())
                    refs.append(ref)
    return refs


def subjects_of(refs: Iterable[RecordingRef]) -> dict[str, list[RecordingRef]]:
    """Group recordings by subject key (insertion order kept)."""
    out: dict[str, list[RecordingRef]] = {}
    for r in refs:
        out.setdefault(r.subject, []).append(r)
    return out
