"""``streamemg calibrate``: a site profile from a site's unlabelled recordings (no labels needed)."""

from __future__ import annotations

import argparse
from pathlib import Path

from ..errors import ConfigError


def add_parser(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = sub.add_parser(
        "calibrate",
        help="make a site profile from a site's unlabelled recordings",
        description="Read recordings of one recording setup (labels are not needed and not used) and write a "
        "site profile: the per-frequency statistics of the model's features on that site next to the model's "
        "training reference. Pass it to classify / run / evaluate with --site (or ?site= on a source URI).",
    )
    p.add_argument("files", nargs="*", metavar="FILE", help="recordings of the site (any readable format)")
    p.add_argument("--manifest", action="append", default=[], metavar="CSV", help="CSV manifest(s) of the site")
    p.add_argument("--out", required=True, metavar="SITE.json", help="profile to write")
    p.add_argument("--model", default=None, metavar="PATH", help="model bundle (default: the shipped model)")
    p.add_argument("--site", default=None, metavar="NAME", help="site name (default: from the manifest or --out)")
    p.add_argument("--fs", type=float, default=None, help="sampling rate for FILEs that carry none (.npy)")
    p.add_argument(
        "--mode", default="affine", choices=("affine", "shift"),
        help="affine: match means and spreads per frequency (default); shift: means only",
    )
    p.add_argument("--no-progress", action="store_true", help="no progress bars")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from rich.console import Console

    from ..clinical.manifest import ManifestRow, manifest_refs, row_ref
    from ..clinical.site import make_profile, recording_windows
    from ..clinical.train import prepare_all
    from ..model import load_bundle

    console = Console(stderr=True)
    if not args.files and not args.manifest:
        raise ConfigError("nothing to calibrate on: give recording FILE(s) and/or --manifest FILE.csv")
    bundle = load_bundle(args.model)
    refs = manifest_refs(args.manifest) if args.manifest else []
    site = args.site or (refs[0].site if refs else Path(args.out).stem)
    for i, f in enumerate(args.files):
        row = ManifestRow(Path("<command line>"), i + 1, Path(f), None, None, site, args.fs, None, None)
        refs.append(row_ref(row))
    sites = sorted({r.site for r in refs if r.meta.get("manifest")})
    if len(sites) > 1 and args.site is None:
        raise ConfigError(
            f"the manifests name several sites ({', '.join(sites)}); a profile describes one setup: calibrate "
            "each site separately, or pass --site NAME to treat them as one"
        )
    prepared = prepare_all(refs, bundle.config, progress=not args.no_progress)
    if not prepared:
        raise ConfigError(f"no recording at or above the model rate {bundle.config.fs:g} Hz to calibrate on")
    profile = make_profile(bundle, recording_windows(prepared, int(bundle.config.window_samples)), site, args.mode)
    out = profile.save(args.out)
    s = profile.summary
    console.print(
        f"wrote {out}: site {site!r}, {s['recordings']} recordings, {s['windows']} windows; level "
        f"{s['level_db_re_reference']:+.1f} dB and tilt {s['tilt_db_per_octave_re_reference']:+.1f} dB/octave "
        f"re the model's training data"
    )
    return 0
