"""Bring your own data: a CSV manifest that lists a lab's own recordings.

One row per recording. Columns (header names are case-insensitive; order is free):

==========  ========  ==============================================================================
column      needed    meaning
==========  ========  ==============================================================================
``path``    always    the recording file; a relative path is relative to the manifest's folder. Every
                      format the readers know (``.hea`` + ``.bin``/``.dat``, ``.asc``, ``.npy``, ``.csv``,
                      their ``.xz`` forms).
``label``   training  ``Normal``, ``ALS`` or ``Myopathy`` (any case); aliases ``Healthy`` -> Normal,
                      ``Neuropathy`` / ``Neurogenic`` -> ALS. Empty (or no column): unlabelled.
``subject`` training  who was recorded: the key that keeps one person on one side of every split.
``site``    no        the recording setup; default: the manifest's file name without ``.csv``.
``fs``      .npy/.csv the sampling rate in Hz for formats that carry none (a sidecar JSON also works).
``start_s`` no        start of the usable span, seconds from the file's start (default 0).
``stop_s``  no        end of the usable span, seconds (default: the end of the file).
``note``    no        free text, ignored.
==========  ========  ==============================================================================

Lines that are empty or start with ``#`` are comments. A bad row is an error that names the manifest, the
line and the column and says how to fix it; no row is ever skipped silently. :func:`read_manifest` checks
the text only (fast; ``classify`` uses it), :func:`manifest_refs` also opens every file once to learn its
rate and length (``train``, ``evaluate`` and ``calibrate`` use it).
"""

from __future__ import annotations

import csv
import hashlib
import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

from ..errors import DataFormatError
from ..types import CLASS_NAMES
from .datasets import RecordingRef
from .recordings import read_recording

__all__ = ["COLUMNS", "LABEL_ALIASES", "ManifestRow", "manifest_refs", "parse_label", "read_manifest"]

#: every column a manifest may have
COLUMNS: tuple[str, ...] = ("path", "label", "subject", "site", "fs", "start_s", "stop_s", "note")

#: accepted label spellings (lower case) -> streamemg class
LABEL_ALIASES: dict[str, str] = {
    "normal": "Normal",
    "healthy": "Normal",
    "als": "ALS",
    "neuropathy": "ALS",
    "neurogenic": "ALS",
    "myopathy": "Myopathy",
}

_LABEL_HELP = "use Normal, ALS or Myopathy (aliases Healthy, Neuropathy, Neurogenic), or leave it empty"


@dataclass(frozen=True)
class ManifestRow:
    """One checked row of a manifest.

    Attributes:
        manifest: the manifest file.
        line: 1-based line number in that file.
        path: the recording (absolute or relative to the working folder, resolved against the manifest).
        label: a member of ``CLASS_NAMES``, or None when unlabelled.
        subject: subject key as written (None when empty).
        site: recording setup.
        fs: sampling rate given in the manifest, Hz (None: the file's own).
        start_s, stop_s: usable span, seconds (None: the file's start / end).
    """

    manifest: Path
    line: int
    path: Path
    label: str | None
    subject: str | None
    site: str
    fs: float | None
    start_s: float | None
    stop_s: float | None

    @property
    def where(self) -> str:
        """``manifest.csv:LINE`` for error messages."""
        return f"{self.manifest}:{self.line}"


def parse_label(value: str) -> str | None:
    """A label cell -> class name (None for empty); raises ValueError for an unknown label."""
    key = value.strip().lower()
    if not key:
        return None
    if key not in LABEL_ALIASES:
        raise ValueError(value)
    return LABEL_ALIASES[key]


def _number(row: ManifestRow | None, cell: str, column: str, where: str, positive: bool) -> float | None:
    text = cell.strip()
    if not text:
        return None
    try:
        value = float(text)
    except ValueError:
        value = float("nan")
    if not math.isfinite(value) or (value <= 0 if positive else value < 0):
        need = "a number above 0" if positive else "a number of seconds >= 0"
        raise DataFormatError(f"{where}: column {column!r}: {text!r} is not {need}")
    return value


def read_manifest(path: str | Path) -> list[ManifestRow]:
    """Read and check one manifest (text only; the recordings are not opened).

    Raises:
        DataFormatError: the file is missing or unreadable, the header lacks ``path`` or names an unknown
            column, or a row is malformed (bad label, number, span, duplicate file); the message names the
            file, the line and the column.
    """
    manifest = Path(path).expanduser()
    if not manifest.is_file():
        raise DataFormatError(f"manifest {manifest}: no such file; give a CSV file with a 'path' column")
    try:
        text = manifest.read_text(encoding="utf-8-sig")
    except (OSError, UnicodeDecodeError) as exc:
        raise DataFormatError(f"manifest {manifest}: cannot be read as UTF-8 text ({exc})") from exc
    lines = [(i + 1, ln) for i, ln in enumerate(text.splitlines()) if ln.strip() and not ln.lstrip().startswith("#")]
    if not lines:
        raise DataFormatError(
            f"manifest {manifest}: empty; the first line must be a header such as 'path,label,subject'"
        )
    try:
        parsed = list(csv.reader([ln for _, ln in lines]))
    except csv.Error as exc:
        raise DataFormatError(f"manifest {manifest}: not valid CSV ({exc})") from exc
    header_line = lines[0][0]
    header = [h.strip().lower() for h in parsed[0]]
    for h in header:
        if h not in COLUMNS:
            raise DataFormatError(
                f"{manifest}:{header_line}: unknown column {h!r}; known columns are {', '.join(COLUMNS)} "
                "(free text belongs in 'note')"
            )
    if len(set(header)) != len(header):
        dup = sorted({h for h in header if header.count(h) > 1})
        raise DataFormatError(f"{manifest}:{header_line}: column(s) {dup} appear more than once")
    if "path" not in header:
        raise DataFormatError(
            f"{manifest}:{header_line}: no 'path' column; the header must name at least 'path' "
            "(e.g. 'path,label,subject')"
        )
    default_site = manifest.name[:-4] if manifest.name.lower().endswith(".csv") else manifest.name
    rows: list[ManifestRow] = []
    seen: dict[tuple[Path, float | None, float | None], int] = {}
    for (line, _), cells in zip(lines[1:], parsed[1:], strict=True):
        where = f"{manifest}:{line}"
        if len(cells) != len(header):
            raise DataFormatError(
                f"{where}: {len(cells)} cells but the header has {len(header)} columns ({', '.join(header)}); "
                "quote cells that contain commas"
            )
        cell = dict(zip(header, cells, strict=True))
        raw_path = cell["path"].strip()
        if not raw_path:
            raise DataFormatError(f"{where}: column 'path' is empty; give the recording file")
        p = Path(raw_path).expanduser()
        p = p if p.is_absolute() else manifest.parent / p
        try:
            label = parse_label(cell.get("label", ""))
        except ValueError:
            raise DataFormatError(f"{where}: column 'label': {cell['label']!r} is not a class; {_LABEL_HELP}") from None
        subject = cell.get("subject", "").strip() or None
        site = cell.get("site", "").strip() or default_site
        fs = _number(None, cell.get("fs", ""), "fs", where, positive=True)
        start = _number(None, cell.get("start_s", ""), "start_s", where, positive=False)
        stop = _number(None, cell.get("stop_s", ""), "stop_s", where, positive=True)
        if start is not None and stop is not None and stop <= start:
            raise DataFormatError(f"{where}: column 'stop_s': {stop:g} s is not after start_s {start:g} s")
        key = (p.resolve(), start, stop)
        if key in seen:
            raise DataFormatError(
                f"{where}: column 'path': {raw_path} (same span) is already listed on line {seen[key]}; "
                "list each recording once"
            )
        seen[key] = line
        rows.append(ManifestRow(manifest, line, p, label, subject, site, fs, start, stop))
    if not rows:
        raise DataFormatError(f"manifest {manifest}: a header but no recordings; add one row per recording")
    return rows


def read_manifests(paths: Iterable[str | Path]) -> list[ManifestRow]:
    """:func:`read_manifest` of each, concatenated (the same file listed by two manifests is an error)."""
    rows: list[ManifestRow] = []
    first: dict[tuple[Path, float | None, float | None], ManifestRow] = {}
    for m in paths:
        for r in read_manifest(m):
            key = (r.path.resolve(), r.start_s, r.stop_s)
            if key in first and first[key].manifest != r.manifest:
                raise DataFormatError(f"{r.where}: column 'path': {r.path} is also listed at {first[key].where}")
            first[key] = r
            rows.append(r)
    return rows


def _dataset_key(site: str) -> str:
    return f"site:{site}"


def row_ref(row: ManifestRow, require_label: bool = False, require_subject: bool = False) -> RecordingRef:
    """Open one row's file (once, to learn its rate and length) and describe it as a :class:`RecordingRef`.

    The reference's ``dataset`` is ``"site:<site>"``, its subject key ``"<site>:<subject>"`` (so two labs'
    subject numbers never collide); an unlabelled row has ``label == ""``.

    Raises:
        DataFormatError: naming the manifest line and column: a missing label or subject where required, an
            unreadable file, a rate missing, or a span outside the file.
    """
    if require_label and row.label is None:
        raise DataFormatError(
            f"{row.where}: column 'label' is empty but training and evaluation need a label for every "
            f"recording; {_LABEL_HELP.replace(', or leave it empty', '')}, or leave this file to "
            "`streamemg calibrate`, which needs no labels"
        )
    if require_subject and row.subject is None:
        raise DataFormatError(
            f"{row.where}: column 'subject' is empty; training and evaluation need the subject of every "
            "recording (it keeps one person on one side of every split)"
        )
    if not row.path.exists():
        raise DataFormatError(f"{row.where}: column 'path': {row.path} does not exist")
    try:
        rec = read_recording(row.path, fs=row.fs)
    except DataFormatError as exc:
        hint = " (give the rate in the 'fs' column)" if "sampling rate" in str(exc) else ""
        raise DataFormatError(f"{row.where}: column 'path': {exc}{hint}") from exc
    n = rec.n_samples
    start = 0 if row.start_s is None else round(row.start_s * rec.fs)
    stop = n if row.stop_s is None else round(row.stop_s * rec.fs)
    if stop > n:
        raise DataFormatError(
            f"{row.where}: column 'stop_s': {row.stop_s:g} s is beyond the end of {row.path.name} "
            f"({n / rec.fs:.3f} s)"
        )
    if start >= stop:
        raise DataFormatError(
            f"{row.where}: column 'start_s': {row.start_s:g} s leaves nothing of {row.path.name} "
            f"({n / rec.fs:.3f} s)"
        )
    name = row.path.name.split(".")[0]
    span = f"{row.start_s}-{row.stop_s}"
    tag = hashlib.sha1(f"{row.path.resolve()}|{span}".encode()).hexdigest()[:8]
    return RecordingRef(
        path=row.path,
        dataset=_dataset_key(row.site),
        subject=f"{row.site}:{row.subject if row.subject is not None else name}",
        label=row.label or "",
        source_label=row.label or "",
        record=f"{name}-{tag}",
        site=row.site,
        fs=float(rec.fs),
        n_samples=int(rec.meta.get("trimmed_from", n)),
        usable=(start, stop),
        n_clipped=int(rec.meta.get("n_clipped", 0) or 0),
        meta={"manifest": str(row.manifest), "line": row.line, "subject_given": row.subject is not None},
    )


def manifest_refs(
    paths: Sequence[str | Path], require_label: bool = False, require_subject: bool = False
) -> list[RecordingRef]:
    """Every row of the manifests as :class:`RecordingRef` (see :func:`row_ref`); checks subjects' labels.

    Raises:
        DataFormatError: any bad row (see :func:`read_manifest`, :func:`row_ref`), or one subject listed with
            two different labels.
    """
    rows = read_manifests(paths)
    refs = [row_ref(r, require_label, require_subject) for r in rows]
    label_of: dict[str, tuple[str, ManifestRow]] = {}
    for row, ref in zip(rows, refs, strict=True):
        if not ref.label:
            continue
        prev = label_of.setdefault(ref.subject, (ref.label, row))
        if prev[0] != ref.label:
            raise DataFormatError(
                f"{row.where}: column 'label': subject {row.subject!r} is {ref.label} here but {prev[0]} at "
                f"{prev[1].where}; one subject has one class"
            )
    return refs


def is_labelled(ref: RecordingRef) -> bool:
    """True when the recording carries a class."""
    return ref.label in CLASS_NAMES
