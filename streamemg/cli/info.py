"""``streamemg info``: versions, inference device and the model card summary."""

from __future__ import annotations

import argparse
import importlib.metadata
import json
import platform
from typing import Any


def add_parser(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = sub.add_parser("info", help="versions, device and model summary")
    p.add_argument("--model", metavar="PATH", help="model bundle to describe (default: the shipped model)")
    p.add_argument("--device", default="auto", help="device to report (auto, cpu, cuda)")
    p.add_argument("--json", action="store_true", help="machine-readable output")
    p.set_defaults(func=run)


def _version(dist: str) -> str:
    try:
        return importlib.metadata.version(dist)
    except importlib.metadata.PackageNotFoundError:
        return "not installed"


def collect(model: str | None, device: str) -> dict[str, Any]:
    import torch

    from .. import __version__
    from ..engine import select_device
    from ..model import count_flops, default_model_path, load_bundle

    info: dict[str, Any] = {
        "streamemg": __version__,
        "python": platform.python_version(),
        "platform": platform.platform(),
        "packages": {d: _version(d) for d in ("numpy", "scipy", "torch", "pylsl", "aiomqtt", "rich", "amqtt")},
    }
    try:
        from ..lsl.executor import import_pylsl  # applies streamemg's LSL scope policy before liblsl loads

        pylsl = import_pylsl()
        info["liblsl"] = f"{pylsl.library_version()} (protocol {pylsl.protocol_version()})"
    except Exception as exc:  # report, never fail: info must work without liblsl
        info["liblsl"] = f"unavailable: {exc}"
    dev = select_device(device)
    info["device"] = str(dev)
    info["cuda_available"] = bool(torch.cuda.is_available())
    info["torch_threads"] = torch.get_num_threads()
    bundle = load_bundle(model)
    cfg = bundle.config
    info["model"] = {
        "name": bundle.name,
        "path": str(model or default_model_path() or "(built-in untrained)"),
        "trained": bundle.trained,
        "classes": list(cfg.classes),
        "fs": cfg.fs,
        "window_s": cfg.window_samples / cfg.fs,
        "hop_s": cfg.hop_samples / cfg.fs,
        "mflops_per_window": round(count_flops(bundle.build("cpu"), cfg.window_samples) / 1e6, 3),
        "metrics": bundle.metrics,
    }
    return info


def run(args: argparse.Namespace) -> int:
    info = collect(args.model, args.device)
    if args.json:
        print(json.dumps(info, indent=2, default=str))
        return 0
    from rich.console import Console
    from rich.table import Table

    console = Console()
    t = Table(title="streamemg", show_header=False)
    t.add_column(style="bold")
    t.add_column()
    t.add_row("version", info["streamemg"])
    t.add_row("python", f"{info['python']} ({info['platform']})")
    for name, v in info["packages"].items():
        t.add_row(name, v)
    t.add_row("liblsl", str(info["liblsl"]))
    t.add_row("device", f"{info['device']} (CUDA available: {info['cuda_available']}, "
              f"torch threads: {info['torch_threads']})")
    m = info["model"]
    status = "[green]trained[/]" if m["trained"] else "[bold red]UNTRAINED: outputs are not a diagnosis[/]"
    t.add_row("model", f"{m['name']} - {status}")
    t.add_row("model file", m["path"])
    t.add_row("model input", f"{m['fs']:g} Hz, window {m['window_s']:g} s, hop {m['hop_s']:g} s, "
              f"{m['mflops_per_window']} MFLOP/window")
    t.add_row("classes", ", ".join(m["classes"]))
    for key, value in (m["metrics"] or {}).items():
        if isinstance(value, (int, float, str)):
            t.add_row(f"metric: {key}", f"{value:.3f}" if isinstance(value, float) else str(value))
    console.print(t)
    console.print("Research use only; not a medical device.")
    return 0
