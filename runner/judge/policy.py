"""The policy a run is judged by: tolerances and test settings, from the scarlet repository.

A repository may keep ``.github/scarlet-regression.toml``. It is read at the **base**
revision, so a pull request cannot loosen its own gate (``run --config-from head`` judges
by the head's on purpose)::

    [comparison]
    alpha = 0.05          # false discovery rate across metrics (Benjamini-Hochberg)
    confidence = 0.90     # of the bootstrap intervals: 0.90 makes "the whole interval
                          # beyond tolerance" a one-sided test at 5 % (an equivalence test)
    resamples = 2000      # bootstrap resamples
    power = 0.8           # for the minimum detectable effect
    tail_quantile = 0.9   # the tail metrics' quantile

    [blends]              # blend by blend
    chi2_tolerance = 0.1          # a blend's χ² per pixel may grow by 10 %
    mag_tolerance = 0.1           # an injected source's |mag error| by 0.1 mag in any band
    centroid_tolerance = 0.5      # its centroid offset by 0.5 px
    max_worse_fraction = 0.02     # this fraction of the blends may get worse beyond those
    min_snr = 5.0                 # a band counts where the source's true S/N reaches this

    [metrics.mag_error]           # every band's magnitude error ...
    tolerance = 0.005
    [metrics.mag_error_y]         # ... unless a band has its own
    tolerance = 0.02

Every key is optional; unknown keys are errors naming the key. The metrics, their
directions and default tolerances are listed in ``runner.judge.metrics``.
"""

from __future__ import annotations

import dataclasses
import tomllib
from dataclasses import dataclass, field

from runner.deblend.revisions import RevisionError, git

CONFIG_PATH = ".github/scarlet-regression.toml"


class ConfigError(ValueError):
    """An invalid comparison config, naming the key at fault."""


@dataclass(frozen=True)
class BlendPolicy:
    """When one blend counts as clearly worse (or better), and how many may."""

    chi2_tolerance: float = 0.10
    mag_tolerance: float = 0.10
    centroid_tolerance: float = 0.5
    max_worse_fraction: float = 0.02
    min_snr: float = 5.0


@dataclass(frozen=True)
class CompareConfig:
    """Settings of the comparison; ``tolerances`` override the metrics' defaults."""

    alpha: float = 0.05
    confidence: float = 0.90
    resamples: int = 2000
    power: float = 0.8
    tail_quantile: float = 0.9
    blends: BlendPolicy = field(default_factory=BlendPolicy)
    tolerances: dict[str, float] = field(default_factory=dict)

    def tolerance(self, name: str, family: str, default: float) -> float:
        """The tolerance of ``name``: its own, its family's (e.g. mag_error), or the default."""
        return self.tolerances.get(name, self.tolerances.get(family, default))

    def as_dict(self) -> dict:
        """The settings as plain data, for the run result (read back by config_from_dict)."""
        data = dataclasses.asdict(self)
        data["tolerances"] = dict(sorted(self.tolerances.items()))
        return data


# Each section's numeric keys and the open interval their values must lie in.
COMPARISON_KEYS = {
    "alpha": (0, 1),
    "confidence": (0, 1),
    "power": (0, 1),
    "tail_quantile": (0.5, 1),
}
BLEND_KEYS = {
    "chi2_tolerance": (0, float("inf")),
    "mag_tolerance": (0, float("inf")),
    "centroid_tolerance": (0, float("inf")),
    "max_worse_fraction": (0, 1),
    "min_snr": (0, float("inf")),
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


def _section(data: dict, name: str, keys: dict) -> dict[str, float]:
    settings = data.get(name, {})
    if not isinstance(settings, dict):
        raise ConfigError(f"[{name}] must be a table")
    extra = set(settings) - set(keys) - ({"resamples"} if name == "comparison" else set())
    if extra:
        raise ConfigError(f"unknown key {name}.{sorted(extra)[0]}")
    return {k: _number(v, f"{name}.{k}", *keys[k]) for k, v in settings.items() if k in keys}


def config_from_dict(data: dict, known_metrics: set[str]) -> CompareConfig:
    """Validate settings given as data: a parsed config file, or ``CompareConfig.as_dict``."""
    if "tolerances" in data:
        data = {
            "comparison": {k: v for k, v in data.items() if k not in ("tolerances", "blends")},
            "blends": data.get("blends", {}),
            "metrics": {name: {"tolerance": v} for name, v in data["tolerances"].items()},
        }
    for key in data:
        if key not in ("comparison", "blends", "metrics"):
            raise ConfigError(f"unknown section [{key}] (known: comparison, blends, metrics)")
    comparison = _section(data, "comparison", COMPARISON_KEYS)
    blends = BlendPolicy(**_section(data, "blends", BLEND_KEYS))
    resamples = data.get("comparison", {}).get("resamples", 2000)
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
    return CompareConfig(**comparison, resamples=resamples, blends=blends, tolerances=tolerances)


def _flat(config: CompareConfig) -> dict[str, object]:
    data = config.as_dict()
    flat = {f"comparison.{k}": v for k, v in data.items() if k not in ("blends", "tolerances")}
    flat |= {f"blends.{k}": v for k, v in data["blends"].items()}
    flat |= {f"metrics.{k}.tolerance": v for k, v in data["tolerances"].items()}
    return flat


def differences(judged: CompareConfig, other: CompareConfig) -> list[str]:
    """What ``other`` would change of ``judged``, one "key: judged → other" line each."""
    old, new = _flat(judged), _flat(other)
    return [
        f"{key}: {old.get(key, 'default')} → {new.get(key, 'default')}"
        for key in sorted(old.keys() | new.keys())
        if old.get(key) != new.get(key)
    ]


def read_repository_config(repo, sha: str) -> str | None:
    """The text of the config file at ``sha``, or None where the revision has none."""
    try:
        return git(repo, "show", f"{sha}:{CONFIG_PATH}")
    except RevisionError:
        return None
