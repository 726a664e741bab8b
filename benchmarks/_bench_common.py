"""Helpers shared by the accuracy benchmarks (``bench_mocap.py``, ``bench_brusselator.py``,
``bench_lynx_hare.py``) and ``run_all.py``.

Scripts are not a package; they do::

    sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
    import _bench_common as common

Public helpers:

* ``load_config(path, schema) -> dict``: read a JSON config and check it against a schema
  (every key present, no unknown key, each value of the declared type), raising bayesdyn's
  ``BayesdynTypeError`` / ``BayesdynValueError`` with the file, the key, what was expected and
  what was received.
* ``t_interval(x, level=0.95) -> (mean, half_width)``: Student-t confidence interval of a mean.
* ``write_results(name, payload, out_dir) -> path``: results JSON (with command, seed, config,
  git commit, machine) under ``benchmarks/results/``.
* ``print_table(rows)``: a fixed-width results table on stdout.
* ``SHARED_DATA``: the read-only data folder ``../shared/data`` (benchmarks may read it; the
  package and its tests never do).
"""

from __future__ import annotations

import json
import math
import os
import platform
import shlex
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

BENCH_DIR = Path(__file__).resolve().parent
REPO_ROOT = BENCH_DIR.parent
sys.path.insert(0, str(REPO_ROOT))

from bayesdyn._validation import BayesdynTypeError, BayesdynValueError  # noqa: E402

#: Read-only benchmark data (see ../shared/data/README.md).
SHARED_DATA = Path(os.environ.get("BAYESDYN_SHARED_DATA", REPO_ROOT.parent / "shared" / "data"))
CONFIG_DIR = BENCH_DIR / "configs"
RESULTS_DIR = BENCH_DIR / "results"

_TYPE_NAMES = {int: "an integer", float: "a number", bool: "true/false", str: "a string"}
_TYPE_NAMES.update({dict: "an object", list: "a list"})


def _describe(value: Any) -> str:
    return f"{type(value).__name__} {value!r}"


def check_value(where: str, key: str, value: Any, spec: Any) -> Any:
    """Check one config value against ``spec`` and return it (ints promoted to float).

    ``spec`` is a type (``int``, ``float``, ``bool``, ``str``, ``dict``, ``list``), a tuple of
    allowed strings (an enumeration), or a tuple ``("optional", type)`` that also allows null.

    Raises:
        BayesdynTypeError: wrong type; BayesdynValueError: a string outside the enumeration.
    """
    if isinstance(spec, tuple) and spec and spec[0] == "optional":
        return None if value is None else check_value(where, key, value, spec[1])
    if isinstance(spec, tuple):
        if not isinstance(value, str) or value not in spec:
            raise BayesdynValueError(
                f"{where}: {key!r} must be one of {list(spec)}; got {_describe(value)}"
            )
        return value
    ok = (
        isinstance(value, (int, float)) and not isinstance(value, bool)
        if spec is float
        else isinstance(value, int) and not isinstance(value, bool)
        if spec is int
        else isinstance(value, spec)
    )
    if not ok:
        raise BayesdynTypeError(
            f"{where}: {key!r} must be {_TYPE_NAMES.get(spec, spec.__name__)}; "
            f"got {_describe(value)}"
        )
    if spec is float:
        value = float(value)
        if not math.isfinite(value):
            raise BayesdynValueError(f"{where}: {key!r} must be finite; got {value}")
    return value


def check_config(cfg: Any, schema: dict[str, Any], where: str) -> dict:
    """Check a parsed config dict against ``schema`` (key -> spec, see :func:`check_value`).

    Every schema key must be present and no other key may appear, so a typo never silently
    falls back to a default.
    """
    if not isinstance(cfg, dict):
        raise BayesdynTypeError(f"{where}: the config must be a JSON object; got {_describe(cfg)}")
    missing = sorted(set(schema) - set(cfg))
    unknown = sorted(set(cfg) - set(schema) - {"_comment"})
    if missing:
        raise BayesdynValueError(f"{where}: missing key(s) {missing}")
    if unknown:
        raise BayesdynValueError(
            f"{where}: unknown key(s) {unknown}; known keys are {sorted(schema)}"
        )
    out = {k: check_value(where, k, cfg[k], spec) for k, spec in schema.items()}
    if "_comment" in cfg:
        out["_comment"] = cfg["_comment"]
    return out


def load_config(path: str | os.PathLike, schema: dict[str, Any]) -> dict:
    """Read a JSON config file and check it with :func:`check_config`.

    Raises:
        BayesdynValueError: missing file, invalid JSON, missing/unknown keys, bad values.
        BayesdynTypeError: values of the wrong type.
    """
    path = Path(path)
    if not path.is_file():
        raise BayesdynValueError(f"config file {str(path)!r} does not exist")
    try:
        cfg = json.loads(path.read_text())
    except json.JSONDecodeError as e:
        raise BayesdynValueError(f"config file {str(path)!r} is not valid JSON: {e}") from e
    return check_config(cfg, schema, f"config {path.name}")


def check_positive_keys(cfg: dict, keys: list[str], where: str) -> None:
    """Raise if any of ``keys`` is not > 0."""
    for k in keys:
        if not cfg[k] > 0:
            raise BayesdynValueError(f"{where}: {k!r} must be > 0; got {cfg[k]!r}")


def t_interval(x, level: float = 0.95) -> tuple[float, float]:
    """Mean and half-width of the Student-t confidence interval of the mean of ``x``.

    ``half = t_{(1+level)/2, n-1} * sd(x, ddof=1) / sqrt(n)``; NaN half-width for ``n < 2``.
    """
    import numpy as np
    from scipy import stats

    x = np.asarray(x, dtype=float).reshape(-1)
    n = x.size
    if n < 2:
        return float(x.mean()), float("nan")
    half = stats.t.ppf(0.5 + level / 2, n - 1) * x.std(ddof=1) / math.sqrt(n)
    return float(x.mean()), float(half)


def git_commit() -> str:
    """Short commit of the working tree (``+dirty`` if bayesdyn/ has uncommitted changes)."""
    try:
        sha = subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"],
            cwd=REPO_ROOT,
            capture_output=True,
            text=True,
            check=True,
        ).stdout.strip()
        dirty = subprocess.run(
            ["git", "status", "--porcelain", "--", "bayesdyn"],
            cwd=REPO_ROOT,
            capture_output=True,
            text=True,
            check=True,
        ).stdout.strip()
        return sha + ("+dirty" if dirty else "")
    except (OSError, subprocess.CalledProcessError):
        # A snapshot of the tree (``git archive``) used for long runs records its commit here.
        snap = REPO_ROOT / ".snapshot_commit"
        return f"{snap.read_text().strip()} (snapshot)" if snap.is_file() else "unknown"


def command_line(script: str, args: list[str]) -> str:
    """The command that reproduces this run, relative to the repository root."""
    return " ".join([".venv/bin/python", f"benchmarks/{script}", *(shlex.quote(a) for a in args)])


def write_results(name: str, payload: dict, out_dir: str | os.PathLike | None = None) -> Path:
    """Write ``<out_dir>/<name>.json`` (default ``benchmarks/results``) atomically.

    Adds ``name``, ``git_commit``, ``date`` (UTC) and ``machine`` to ``payload``.
    """
    out = Path(out_dir) if out_dir is not None else RESULTS_DIR
    out.mkdir(parents=True, exist_ok=True)
    full = {
        "name": name,
        "git_commit": git_commit(),
        "date": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "machine": f"{platform.machine()}, {os.cpu_count()} CPUs, {platform.python_version()}",
        **payload,
    }
    path = out / f"{name}.json"
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(full, indent=2, sort_keys=False) + "\n")
    os.replace(tmp, path)
    return path


def fmt(x: float | None, digits: int = 3) -> str:
    """Format a number for tables (``-`` for None/NaN)."""
    if x is None or (isinstance(x, float) and not math.isfinite(x)):
        return "-"
    return f"{x:.{digits}g}" if abs(x) >= 1e-3 or x == 0 else f"{x:.2e}"


def print_table(rows: list[dict], columns: list[str]) -> None:
    """Print ``rows`` (dicts) as a fixed-width table with the given columns."""
    cells = [[str(r.get(c, "")) for c in columns] for r in rows]
    widths = [max(len(c), *(len(row[i]) for row in cells)) for i, c in enumerate(columns)]
    print("  ".join(c.ljust(w) for c, w in zip(columns, widths, strict=True)))
    print("  ".join("-" * w for w in widths))
    for row in cells:
        print("  ".join(v.ljust(w) for v, w in zip(row, widths, strict=True)))


def setup_torch(threads: int | None = None) -> None:
    """float32 and a fixed number of torch threads (default: ``OMP_NUM_THREADS`` or 1)."""
    import torch

    n = threads or int(os.environ.get("OMP_NUM_THREADS", "1") or 1)
    torch.set_num_threads(max(n, 1))
    torch.set_default_dtype(torch.float32)
