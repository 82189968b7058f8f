"""The TOML configuration file of ``streamemg run`` (``--config FILE``; command-line flags override it).

Example (see ``examples/run.toml``)::

    [run]
    sources = ["sim:als", "sim:normal?channels=2"]
    outputs = ["jsonl:estimates.jsonl"]
    model = "models/default.pt"   # optional; default: the shipped model
    device = "auto"               # auto | cpu | cuda | cuda:N
    duration = 60                 # seconds; omit to run until Ctrl-C
    dashboard = true

    [engine]      # streamemg.engine.EngineSettings
    max_batch = 64
    max_wait_ms = 0.0             # event-driven; > 0 makes a lone window wait for company
    inline_budget = 0.05          # lone windows on the loop thread, up to this share of it

    [pipeline]    # streamemg.pipeline.PipelineSettings
    hop_s = 0.25
    stale_after_s = 1.0

    [estimates]   # streamemg.estimates.EstimateSettings
    tau_s = 3.0

    [quality]     # streamemg.estimates.QualitySettings

    [qemg]        # streamemg.qemg.analyser.QemgSettings
    enabled = true

Every section and key is checked: a misspelt key is an error that names it and lists the valid ones.
"""

from __future__ import annotations

import dataclasses
import tomllib
from pathlib import Path
from typing import Any, cast

from .errors import ConfigError

RUN_KEYS: dict[str, type | tuple[type, ...]] = {
    "sources": list,
    "outputs": list,
    "model": str,
    "device": str,
    "duration": (int, float),
    "dashboard": bool,
    "shard": str,
}


def load_config(path: str | Path) -> dict[str, dict[str, Any]]:
    """Read and check a config file; returns ``{section: {key: value}}``."""
    p = Path(path)
    try:
        raw = tomllib.loads(p.read_text(encoding="utf-8"))
    except OSError as exc:
        raise ConfigError(f"config file {p}: cannot be read ({exc})") from exc
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"config file {p}: not valid TOML ({exc})") from exc
    sections = {"run", "engine", "pipeline", "estimates", "quality", "qemg"}
    for name, value in raw.items():
        if name not in sections:
            valid = ", ".join(sorted(sections))
            raise ConfigError(f"config file {p}: unknown section [{name}]; valid sections: {valid}")
        if not isinstance(value, dict):
            raise ConfigError(f"config file {p}: [{name}] must be a table of settings")
    run = raw.get("run", {})
    for key, value in run.items():
        if key not in RUN_KEYS:
            raise ConfigError(f"config file {p}: unknown key run.{key}; valid keys: {', '.join(sorted(RUN_KEYS))}")
        expected = RUN_KEYS[key]
        if not isinstance(value, expected) or (expected is not bool and isinstance(value, bool)):
            raise ConfigError(f"config file {p}: run.{key} = {value!r} has the wrong type")
        if key in ("sources", "outputs") and not all(isinstance(v, str) for v in cast(list[Any], value)):
            raise ConfigError(f"config file {p}: run.{key} must be a list of strings (URIs)")
    return {k: dict(v) for k, v in raw.items()}


def build_settings(cls: type, section: str, values: dict[str, Any], base: Any = None) -> Any:
    """Construct the frozen settings dataclass ``cls`` from a config section, naming any bad field."""
    fields = {f.name: f for f in dataclasses.fields(cls)}
    for key in values:
        if key not in fields:
            raise ConfigError(
                f"config: unknown key {section}.{key}; valid keys: {', '.join(sorted(fields))}"
            )
    try:
        if base is not None:
            return dataclasses.replace(base, **values)
        return cls(**values)
    except ConfigError:
        raise
    except (TypeError, ValueError) as exc:
        raise ConfigError(f"config: [{section}] {exc}") from exc
