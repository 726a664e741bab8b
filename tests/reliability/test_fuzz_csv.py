"""Property-based fuzzing of the CSV loader with malformed rows (hypothesis, fixed profile).

Files are built from a header and rows of tokens: numbers, NaN spellings, empty fields,
words, quotes, stray delimiters, unicode, missing and extra fields, blank lines, and rows
that are valid. Each load must end in a valid object with an exact round trip or a named
bayesdyn error; a valid load must also hold exactly the numbers written in the file.
"""

from __future__ import annotations

import os
import tempfile

import numpy as np
import pandas as pd
import pytest
from hypothesis import given
from hypothesis import strategies as st

from bayesdyn.data import IrregularTimeSeries
from bayesdyn.data._series import CSV_CHUNK_ROWS
from tests.reliability._fuzz import FUZZ, outcome

NUMBER = st.one_of(
    st.integers(-1000, 1000).map(str),
    st.floats(allow_nan=False, allow_infinity=False, width=64).map(repr),
    st.sampled_from(["1e308", "-1e308", "1e999", "5e-324", "0.1", "-0", "+3", ".5", "1_0"]),
)
TOKEN = st.one_of(
    NUMBER,
    NUMBER,
    NUMBER,
    st.sampled_from(["", "nan", "NaN", "NA", "null", "inf", "-inf", "True", "abc", '"1,5"']),
    st.sampled_from(['"', "'", ",", ";", "\t", " 3 ", "é", "\u2212" + "1", "0x10", "1.2.3"]),
    st.text(alphabet=st.characters(codec="utf-8", exclude_characters="\r\n\x00"), max_size=4),
)
HEADERS = [
    ["id", "time", "x"],
    ["id", "time", "x", "y"],
    ["time", "id", "x"],
    ["id", "time"],
    ["id", "x"],
    ["id", "time", "time"],
    ["id", "time", "x", ""],
]


@st.composite
def csv_text(draw):
    header = draw(st.sampled_from(HEADERS))
    lines = [",".join(header)]
    n = draw(st.integers(0, 12))
    for k in range(n):
        shape = draw(st.sampled_from(["valid", "valid", "tokens", "short", "long", "blank"]))
        if shape == "valid":
            row = [str(draw(st.integers(0, 2))), repr(float(k) * 0.5)]
            row += [draw(NUMBER) for _ in header[2:]]
        elif shape == "tokens":
            row = [draw(TOKEN) for _ in header]
        elif shape == "short":
            row = [draw(TOKEN) for _ in header[:-1]]
        elif shape == "long":
            row = [draw(TOKEN) for _ in range(len(header) + 1)]
        else:
            row = []
        lines.append(",".join(row))
    text = "\n".join(lines)
    if draw(st.booleans()):
        text += "\n"
    return text


def _load(text: str):
    fd, path = tempfile.mkstemp(suffix=".csv")
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as fh:
            fh.write(text)
        return outcome(lambda: IrregularTimeSeries.from_csv(path)), path
    finally:
        os.unlink(path)


@FUZZ
@given(csv_text())
def test_csv_loader_fuzz(text):
    s, _ = _load(text)
    if s is None:
        return
    # A valid load holds exactly what pandas reads from the same text.
    import io

    df = pd.read_csv(io.StringIO(text))
    for i, sid in enumerate(s.ids):
        rows = df[df["id"].astype(str) == str(sid)].sort_values("time")
        assert np.array_equal(rows["time"].to_numpy(dtype=float), s.times[i])
        for d, c in enumerate(s.channels):
            col = rows[c].to_numpy(dtype=float)
            assert np.array_equal(~np.isnan(col), s.mask[i][:, d])
            assert np.array_equal(col[~np.isnan(col)], s.values[i][s.mask[i][:, d], d])


def test_ids_agree_across_chunks(tmp_path):
    # Chunked reading must not split a series whose id reads as a number in one chunk and
    # would read as text in another (a later chunk holding a non-numeric id).
    n = CSV_CHUNK_ROWS + 10
    ids = ["7"] * n + ["a"]
    df = pd.DataFrame({"id": ids, "time": np.arange(n + 1, dtype=float), "x": 1.0})
    df.to_csv(tmp_path / "d.csv", index=False)
    s = IrregularTimeSeries.from_csv(tmp_path / "d.csv")
    assert s.ids == ["7", "a"] and s.lengths == [n, 1]
    assert s.ids == IrregularTimeSeries.from_dataframe(pd.read_csv(tmp_path / "d.csv")).ids


# ------------------------------------------------------------------ point-process files

EVENT_TOKEN = st.one_of(
    st.floats(0, 100).map(repr),
    st.sampled_from(["nan", "inf", "-1", "1e999", "150", ";", "abc", "1,5", "", "0x3"]),
)


@st.composite
def event_file(draw):
    lines = []
    for _ in range(draw(st.integers(0, 5))):
        toks = draw(st.lists(EVENT_TOKEN, max_size=5))
        if draw(st.booleans()):  # mostly sorted, as in real files
            nums = [t for t in toks if t.replace(".", "", 1).isdigit()]
            toks = sorted(nums, key=float) if len(nums) == len(toks) else toks
        lines.append(" ".join(toks) + (";" if draw(st.booleans()) else ""))
    return "\n".join(lines)


@FUZZ
@given(
    event_file(),
    st.one_of(
        st.just((0.0, 100.0)),
        st.tuples(st.floats(allow_nan=True), st.floats(allow_nan=True)),
        st.sampled_from([(0, 1, 2), ("a", 1), (5.0,), None, "0,100", "01", (100.0, 0.0)]),
    ),
)
def test_point_process_loader_fuzz(text, window):
    from bayesdyn.data import load_point_process

    fd, path = tempfile.mkstemp(suffix=".txt")
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as fh:
            fh.write(text)
        s = outcome(lambda: load_point_process(path, window=window))
    finally:
        os.unlink(path)
    if s is not None:
        lines = text.splitlines()
        assert len(s) == len(lines)
        for i, line in enumerate(lines):
            body = line.rstrip()
            body = body[:-1] if body.endswith(";") else body
            assert np.array_equal(s.events[i], np.array([float(t) for t in body.split()]))


def test_point_process_window_must_be_a_pair(tmp_path):
    from bayesdyn._validation import BayesdynTypeError
    from bayesdyn.data import load_point_process

    (tmp_path / "e.txt").write_text("1.0 2.0;\n")
    for window in [None, (0, 1, 2), ("a", 1), "01"]:
        with pytest.raises(BayesdynTypeError, match=r"window must be a pair of numbers"):
            load_point_process(tmp_path / "e.txt", window=window)
