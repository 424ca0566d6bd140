"""Comparison settings: tolerances per metric, read from the scarlet repository.

A repository may keep ``.github/scarlet-regression.toml`` (read at the head SHA)::

    [comparison]
    alpha = 0.05        # false discovery rate across metrics (Benjamini-Hochberg)
    confidence = 0.95   # of the bootstrap confidence intervals
    resamples = 2000    # bootstrap resamples

    [metrics.mag_error]           # every band's magnitude error ...
    tolerance = 0.005
    [metrics.mag_error_y]         # ... unless a band has its own
    tolerance = 0.02

Every key is optional; unknown keys are errors naming the key. The metrics, their
directions and default tolerances are listed in ``METRICS`` (``runner.compare``).
"""

from __future__ import annotations

import tomllib
from dataclasses import dataclass, field

from runner.revisions import RevisionError, git

CONFIG_PATH = ".github/scarlet-regression.toml"


class ConfigError(ValueError):
    """An invalid comparison config, naming the key at fault."""


@dataclass(frozen=True)
class CompareConfig:
    """Settings of the comparison; ``tolerances`` override the metrics' defaults."""

    alpha: float = 0.05
    confidence: float = 0.95
    resamples: int = 2000
    tolerances: dict[str, float] = field(default_factory=dict)

    def tolerance(self, name: str, family: str, default: float) -> float:
        """The tolerance of ``name``: its own, its family's (e.g. mag_error), or the default."""
        return self.tolerances.get(name, self.tolerances.get(family, default))

    def as_dict(self) -> dict:
        """The settings as plain data, for the run result."""
        return {
            "alpha": self.alpha,
            "confidence": self.confidence,
            "resamples": self.resamples,
            "tolerances": dict(sorted(self.tolerances.items())),
        }


def _number(value: object, key: str, low: float, high: float) -> float:
    """``value`` as a float in the open interval (low, high), or a ConfigError naming ``key``."""
    if isinstance(value, bool) or not isinstance(value, int | float) or not low < value < high:
        raise ConfigError(f"{key} must be a number between {low} and {high}, got {value!r}")
    return float(value)


def _tolerance(value: object, key: str) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float) or not value >= 0:
        raise ConfigError(f"{key} must be a number >= 0, got {value!r}")
    return float(value)


def parse_config(text: str, known_metrics: set[str]) -> CompareConfig:
    """Parse and validate a config file's text."""
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as error:
        raise ConfigError(f"{CONFIG_PATH} is not valid TOML: {error}") from None
    return config_from_dict(data, known_metrics)


def config_from_dict(data: dict, known_metrics: set[str]) -> CompareConfig:
    """Validate settings given as data: a parsed config file, or ``CompareConfig.as_dict``."""
    if "tolerances" in data:
        tolerances = data.get("tolerances", {})
        data = {
            "comparison": {k: v for k, v in data.items() if k != "tolerances"},
            "metrics": {name: {"tolerance": value} for name, value in tolerances.items()},
        }
    for key in data:
        if key not in ("comparison", "metrics"):
            raise ConfigError(f"unknown section [{key}] (known: comparison, metrics)")
    settings = data.get("comparison", {})
    for key in settings:
        if key not in ("alpha", "confidence", "resamples"):
            raise ConfigError(f"unknown key comparison.{key}")
    alpha = _number(settings.get("alpha", 0.05), "comparison.alpha", 0, 1)
    confidence = _number(settings.get("confidence", 0.95), "comparison.confidence", 0, 1)
    resamples = settings.get("resamples", 2000)
    if isinstance(resamples, bool) or not isinstance(resamples, int) or resamples < 100:
        raise ConfigError(f"comparison.resamples must be an integer >= 100, got {resamples!r}")
    tolerances = {}
    for name, entry in data.get("metrics", {}).items():
        if name not in known_metrics:
            known = ", ".join(sorted(known_metrics))
            raise ConfigError(f"unknown metric metrics.{name} (known: {known})")
        if not isinstance(entry, dict) or set(entry) - {"tolerance"}:
            raise ConfigError(f"metrics.{name} takes only a tolerance")
        if "tolerance" in entry:
            tolerances[name] = _tolerance(entry["tolerance"], f"metrics.{name}.tolerance")
    return CompareConfig(alpha, confidence, resamples, tolerances)


def read_repository_config(repo, sha: str) -> str | None:
    """The text of the config file at ``sha``, or None where the revision has none."""
    try:
        return git(repo, "show", f"{sha}:{CONFIG_PATH}")
    except RevisionError:
        return None
