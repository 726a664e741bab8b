"""Every ``examples/*.py`` runs end to end with ``--smoke`` (as pyro's and numpyro's tests do)."""

import os
import subprocess
import sys
from pathlib import Path

import pytest

EXAMPLES_DIR = Path(__file__).resolve().parents[1] / "examples"
EXAMPLES = sorted(p.name for p in EXAMPLES_DIR.glob("*.py"))

#: Files each example must write under ``--out`` (scripts listed here accept ``--out``).
OUTPUTS = {
    "hawkes_events.py": ["hawkes_events.png"],
    "ou_forecast.py": ["ou_forecast.png"],
    "streaming_filter.py": ["streaming_filter.png"],
}
#: Text each example must print.
PRINTS = {
    "hawkes_events.py": ["log-likelihood per event: model", "90% count interval coverage"],
    "ou_forecast.py": ["90% interval coverage"],
    "pyro_model_script.py": ["true    theta", "learned theta"],
    "streaming_filter.py": ["90% predictive band width", "before any data"],
}


def test_examples_found():
    assert {"ou_forecast.py", "pyro_model_script.py", "streaming_filter.py"} <= set(EXAMPLES)


@pytest.mark.integration
@pytest.mark.parametrize("name", EXAMPLES)
def test_example_smoke(name, tmp_path):
    out = tmp_path / "out"
    cmd = [sys.executable, str(EXAMPLES_DIR / name), "--smoke", "--seed", "0"]
    if name in OUTPUTS:
        cmd += ["--out", str(out)]
    env = {**os.environ, "MPLBACKEND": "Agg"}
    proc = subprocess.run(
        cmd, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=120, check=False
    )
    assert proc.returncode == 0, f"{name} failed:\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}"
    for fname in OUTPUTS.get(name, []):
        f = out / fname
        assert f.is_file() and f.stat().st_size > 0, f"{name} did not write {f}"
    for text in PRINTS.get(name, []):
        assert text in proc.stdout, f"{name} did not print {text!r}:\n{proc.stdout[-3000:]}"
