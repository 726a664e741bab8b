"""Run every accuracy benchmark and rewrite the results table in README.md.

Usage::

    .venv/bin/python benchmarks/run_all.py [--seed 0] [--only mocap,lynx_hare]
    .venv/bin/python benchmarks/run_all.py --from-results      # rebuild the table only

Each benchmark runs as its own process with its default config (``benchmarks/configs``) and
writes ``benchmarks/results/<name>.json``. The table is then rebuilt from those files (the
latest result of each benchmark, also for benchmarks not rerun) and written between the
marker comments ``<!-- bench-results:begin -->`` and ``<!-- bench-results:end -->`` in
README.md; nothing outside the markers changes. Every bayesdyn number stands next to the
published (or reference) number and the command that produced it.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import _bench_common as common  # noqa: E402

from bayesdyn._validation import BayesdynValueError  # noqa: E402

#: name -> (script, title); the order of the README table.
BENCHMARKS = {
    "mocap": ("bench_mocap.py", "Motion capture, setup 1 (CMU subject 35)"),
    "brusselator": ("bench_brusselator.py", "Stochastic Brusselator (GRU-ODE-Bayes data)"),
    "lynx_hare": ("bench_lynx_hare.py", "Lynx-hare, 5-year hold-out"),
    "point_processes": ("bench_point_processes.py", "Point processes (Neural Jump SDE data)"),
}
BEGIN = "<!-- bench-results:begin -->"
END = "<!-- bench-results:end -->"


def run_benchmark(name: str, seed: int) -> int:
    """Run one benchmark script with its default config; return its exit status."""
    script = common.BENCH_DIR / BENCHMARKS[name][0]
    cmd = [sys.executable, str(script), "--seed", str(seed)]
    print(f"== {name}: {' '.join(cmd)}", flush=True)
    t0 = time.perf_counter()
    proc = subprocess.run(cmd, cwd=common.REPO_ROOT, check=False)
    print(f"== {name}: exit {proc.returncode} after {time.perf_counter() - t0:.0f} s", flush=True)
    return proc.returncode


def load_results(results_dir: Path) -> dict[str, dict]:
    """The latest results JSON of each benchmark that has one."""
    out = {}
    for name in BENCHMARKS:
        path = results_dir / f"{name}.json"
        if path.is_file():
            try:
                out[name] = json.loads(path.read_text())
            except json.JSONDecodeError as e:
                raise BayesdynValueError(
                    f"results file {str(path)!r} is not valid JSON: {e}"
                ) from e
    return out


def _cell(x: str) -> str:
    return str(x).replace("|", "\\|").replace("\n", " ")


def render_table(results: dict[str, dict]) -> str:
    """Markdown table: benchmark, metric, bayesdyn, published/reference, command."""
    lines = [
        "| benchmark | metric | bayesdyn | published / reference | command (seed) |",
        "|---|---|---|---|---|",
    ]
    notes = []
    for name, (_, title) in BENCHMARKS.items():
        res = results.get(name)
        if res is None:
            lines.append(f"| {title} | - | not run yet | - | `benchmarks/{BENCHMARKS[name][0]}` |")
            continue
        cmd = f"`{_cell(res.get('command', '?'))}`"
        for i, row in enumerate(res.get("table", [])):
            lines.append(
                "| "
                + " | ".join(
                    [
                        title if i == 0 else "",
                        _cell(row["metric"]),
                        f"**{_cell(row['bayesdyn'])}**",
                        _cell(row["published"]),
                        cmd if i == 0 else "",
                    ]
                )
                + " |"
            )
        train = res.get("train_wall_seconds")
        notes.append(
            f"{name}: {res.get('date', '?')}, commit {res.get('git_commit', '?')}, "
            f"{res.get('machine', '?')}"
            + (f", training {train / 60:.1f} min wall" if isinstance(train, (int, float)) else "")
        )
    lines.append("")
    lines.append("Runs: " + "; ".join(notes) + "." if notes else "No benchmark has run yet.")
    return "\n".join(lines)


def rewrite_block(text: str, block: str) -> str:
    """Replace what lies between the BEGIN and END markers of ``text`` with ``block``.

    Raises:
        BayesdynValueError: if the markers are missing, repeated or out of order.
    """
    nb, ne = text.count(BEGIN), text.count(END)
    if nb != 1 or ne != 1:
        raise BayesdynValueError(
            f"README must contain exactly one {BEGIN!r} and one {END!r}; found {nb} and {ne}"
        )
    i, j = text.index(BEGIN), text.index(END)
    if j < i:
        raise BayesdynValueError(f"{END!r} comes before {BEGIN!r} in README")
    return text[: i + len(BEGIN)] + "\n" + block.strip("\n") + "\n" + text[j:]


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--only", default=None, help="comma-separated subset of " + ",".join(BENCHMARKS))
    p.add_argument("--from-results", action="store_true", help="do not run; rebuild the table")
    p.add_argument("--results", default=str(common.RESULTS_DIR), help="results directory")
    p.add_argument("--readme", default=str(common.REPO_ROOT / "README.md"))
    args = p.parse_args(argv)
    names = list(BENCHMARKS) if args.only is None else [s.strip() for s in args.only.split(",")]
    unknown = [n for n in names if n not in BENCHMARKS]
    if unknown:
        raise BayesdynValueError(
            f"--only: unknown benchmark(s) {unknown}; known: {list(BENCHMARKS)}"
        )
    failed = []
    if not args.from_results:
        for name in names:
            if run_benchmark(name, args.seed) != 0:
                failed.append(name)
    results = load_results(Path(args.results))
    table = render_table(results)
    readme = Path(args.readme)
    readme.write_text(rewrite_block(readme.read_text(), table))
    print(table)
    print(f"\nrewrote the results block of {readme}")
    if failed:
        print(f"FAILED: {failed} (their rows show the previous results, if any)", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
