"""Tables: reading CSV/.npy/.npz/.mat with clear errors, standardization saved with the model."""

from __future__ import annotations

import sys

import numpy as np
import pytest
import scipy.io
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import vaekit
from vaekit import DataError, checkpoint
from vaekit.data import csvtable, tabular


def write_csv(path, text):
    path.write_text(text)
    return path


def test_csv_with_label_column(tmp_path):
    p = write_csv(tmp_path / "t.csv", "a,b,label\n1,2,0\n3,4.5,1\n-1,0,0\n")
    t = tabular.read(p, "label")
    np.testing.assert_array_equal(t.x, np.array([[1, 2], [3, 4.5], [-1, 0]], np.float32))
    np.testing.assert_array_equal(t.y, [0, 1, 0])
    assert t.columns == ("a", "b")


@pytest.mark.parametrize(("text", "message"), [
    ("a,b\n1,x\n2,3\n", "line 2, column 'b': non-numeric value 'x'"),
    ("a,b\n1,\n2,3\n", "line 2, column 'b': an empty cell"),
    ("a,b\n1,2\n2,nan\n", "line 3, column 'b': nan is not a finite number"),
    ("a,b\n1,2\n2,3,4\n", "line 3: 3 fields, but the header has 2"),
    ("", "is empty"),
    ("a,b\n", "0 examples of 2 features"),
])
def test_csv_errors_name_line_and_column(tmp_path, text, message):
    with pytest.raises(DataError, match=message.replace("(", r"\(").replace(")", r"\)")):
        tabular.read(write_csv(tmp_path / "t.csv", text))


def test_missing_label_column_lists_the_columns(tmp_path):
    with pytest.raises(DataError, match=r"no column 'y'; its columns are \['a', 'b'\]"):
        tabular.read(write_csv(tmp_path / "t.csv", "a,b\n1,2\n3,4\n"), "y")


def test_numpy_and_mat_files(tmp_path):
    x = np.random.default_rng(0).normal(size=(10, 3))
    np.save(tmp_path / "x.npy", x)
    np.savez(tmp_path / "xy.npz", X=x, y=np.arange(10) % 2)
    scipy.io.savemat(tmp_path / "xy.mat", {"X": x, "y": (np.arange(10) % 2)[:, None].astype(float)})
    for name in ("x.npy", "xy.npz", "xy.mat"):
        t = tabular.read(tmp_path / name)
        np.testing.assert_allclose(t.x, x.astype(np.float32))
    assert tabular.read(tmp_path / "x.npy").y is None
    np.testing.assert_array_equal(tabular.read(tmp_path / "xy.mat").y, np.arange(10) % 2)


def test_array_errors(tmp_path):
    np.save(tmp_path / "cube.npy", np.zeros((2, 3, 4)))
    with pytest.raises(DataError, match=r"shape \(2, 3, 4\); expected a 2-d table"):
        tabular.read(tmp_path / "cube.npy")
    np.save(tmp_path / "obj.npy", np.array([{"a": 1}, None], dtype=object), allow_pickle=True)
    with pytest.raises(DataError, match="cannot read"):
        tabular.read(tmp_path / "obj.npy")  # never unpickled
    x = np.ones((3, 2))
    x[1, 1] = np.inf
    np.save(tmp_path / "inf.npy", x)
    with pytest.raises(DataError, match="example 1, feature 1 is inf"):
        tabular.read(tmp_path / "inf.npy")
    np.savez(tmp_path / "noX.npz", data=np.ones((3, 2)))
    with pytest.raises(DataError, match=r"holds arrays \['data'\]; expected X"):
        tabular.read(tmp_path / "noX.npz")
    (tmp_path / "junk.mat").write_bytes(b"not a mat file at all")
    with pytest.raises(DataError, match=r"junk\.mat"):
        tabular.read(tmp_path / "junk.mat")
    with pytest.raises(DataError, match="no such file"):
        tabular.read(tmp_path / "missing.csv")


def test_standardizer_uses_training_statistics_and_checks_width():
    x = torch.tensor([[1.0, 5.0], [3.0, 5.0]])
    s = tabular.Standardizer.fit(x)
    torch.testing.assert_close(s(x), torch.tensor([[-1.0, 0.0], [1.0, 0.0]]))  # constant column: std 1
    with pytest.raises(DataError, match=r"\(3,\) features per example; the model was trained on \(2,\)"):
        s(torch.zeros(1, 3))


def test_training_on_a_table_saves_its_standardization(tmp_path):
    rng = np.random.default_rng(0)
    x = rng.normal(loc=50, scale=10, size=(200, 5))
    np.savez(tmp_path / "t.npz", X=x, y=(rng.random(200) < 0.1).astype(int))
    cfg = vaekit.Config().override({"data.dataset": str(tmp_path / "t.npz"), "model.likelihood": "gaussian",
                                    "model.hidden": [16], "model.latent_dim": 2, "train.epochs": 2,
                                    "train.device": "cpu", "model.obs_std": 1.0})
    splits = vaekit.load_data(cfg.data)
    assert len(splits.test) == 40 and splits.train.x.shape[1:] == (5,)
    assert abs(float(splits.train.x.mean())) < 0.2 and abs(float(splits.train.x.std()) - 1) < 0.1
    vaekit.train(cfg, tmp_path / "run", splits=splits)
    pre = checkpoint.load_preprocess(tmp_path / "run")
    torch.testing.assert_close(pre.mean, splits.preprocess.mean)
    torch.testing.assert_close(pre.std, splits.preprocess.std)


def test_standardizer_inverse_undoes_it():
    x = torch.randn(40, 6, dtype=torch.float64) * torch.arange(1, 7) + 100
    s = tabular.Standardizer.fit(x)
    torch.testing.assert_close(s.inverse(s(x)), x)
    shaped = s(x).reshape(40, 2, 3)  # (N, *shape) with D values per example
    torch.testing.assert_close(s.inverse(shaped), x.reshape(40, 2, 3))
    with pytest.raises(DataError, match="of 6 features on 5 values per example"):
        s.inverse(torch.zeros(3, 5, dtype=torch.float64))


def test_bernoulli_on_a_table_says_what_to_do(tmp_path):
    np.save(tmp_path / "t.npy", np.random.default_rng(0).normal(size=(50, 3)))
    cfg = vaekit.Config().override({"data.dataset": str(tmp_path / "t.npy"), "train.epochs": 1})
    with pytest.raises(DataError, match="choose --likelihood gaussian"):
        vaekit.train(cfg)


def test_a_separate_test_table_is_standardized_with_the_training_statistics(tmp_path):
    train = write_csv(tmp_path / "train.csv", "a,b,label\n1,10,0\n3,30,1\n5,50,0\n")
    test = write_csv(tmp_path / "test.csv", "a,b,label\n3,30,1\n7,70,0\n")
    cfg = vaekit.Config().override({"data.dataset": str(train), "data.test_dataset": str(test),
                                    "data.label_column": "label", "data.val_size": 0}).data
    s = vaekit.data.load(cfg)
    assert (len(s.train), len(s.test)) == (3, 2) and s.test.y.tolist() == [1, 0]
    torch.testing.assert_close(s.test.x[0], torch.zeros(2))  # the training mean, standardized
    assert s.test.x[1, 0] > 1
    wide = write_csv(tmp_path / "wide.csv", "a,b,c,label\n1,2,3,0\n4,5,6,1\n")
    with pytest.raises(DataError, match=r"test table .*wide.csv has 3 features and labels, the training table "
                                        r".*train.csv 2 and labels: they must match"):
        vaekit.data.load(cfg.__class__(**{**cfg.__dict__, "test_dataset": str(wide)}))


# --- big tables: the bulk CSV reader, Parquet -------------------------------------------------------------------


@pytest.fixture(params=["pyarrow", "numpy"])
def csv_engine(request, monkeypatch):
    """The bulk CSV reader with pyarrow's parser, then with numpy's (pyarrow hidden as when not installed), in
    small blocks so that a small file spans many."""
    if request.param == "pyarrow":
        pytest.importorskip("pyarrow")
    else:
        monkeypatch.setitem(sys.modules, "pyarrow", None)
    monkeypatch.setattr(csvtable, "_BLOCK_BYTES", 4096)
    assert csvtable._bulk_parser() is (csvtable._bulk_arrow if request.param == "pyarrow" else csvtable._bulk_numpy)
    return request.param


def mixed_numbers(rng, n):
    """Integers, floats at full precision, exponents, signs and padding: text that every reader must agree on."""
    forms = [lambda v: str(int(v * 1000)), lambda v: repr(v), lambda v: f"{v:.3e}", lambda v: f"{v * 1e-30!r}",
             lambda v: f"{v:E}", lambda v: f"+{abs(v):g}", lambda v: f" {v:.2f} ", lambda v: "-0.0"]
    kinds, values = rng.integers(0, len(forms), n), rng.normal(scale=100, size=n)
    return [forms[k](float(v)) for k, v in zip(kinds, values, strict=True)]


def test_bulk_csv_reader_gives_the_exact_readers_values(tmp_path, monkeypatch, csv_engine):
    rng = np.random.default_rng(0)
    rows, cells = 3000, mixed_numbers(rng, 3000 * 3)
    lines = ['"a","b","label","c"'] + [f"{cells[3 * i]},{cells[3 * i + 1]},{i % 5},{cells[3 * i + 2]}"
                                        for i in range(rows)]
    p = write_csv(tmp_path / "t.csv", "\n".join(lines) + "\n")
    with monkeypatch.context() as m:  # every block bulk-parsed: none read again cell by cell
        m.setattr(csvtable, "_parse_rows", lambda *a: pytest.fail("a block went to the exact reader"))
        bulk = csvtable._read_csv_bulk(p, "label")
    exact = csvtable._read_csv_exact(p, "label")
    assert bulk.x.shape == (rows, 3) and bulk.x.dtype == np.float32 and bulk.x.flags.c_contiguous
    assert bulk.x.tobytes() == exact.x.tobytes()  # bit for bit, signed zeros included
    np.testing.assert_array_equal(bulk.y, exact.y)
    assert bulk.y.dtype == np.int64 and bulk.columns == exact.columns == ("a", "b", "c")
    assert tabular.read(p, "label").x.tobytes() == exact.x.tobytes()


@pytest.mark.parametrize(("cell", "message"), [
    ("x", "line 15001, column 'c': non-numeric value 'x'"),
    ("", "line 15001, column 'c': an empty cell"),
    ("nan", "line 15001, column 'c': nan is not a finite number"),
    ("-inf", "line 15001, column 'c': -inf is not a finite number"),
    ("1e400", "line 15001, column 'c': 1e400 is not a finite number"),
    ("1,2", "line 15001: 4 fields, but the header has 3"),
])
def test_a_bad_cell_deep_in_a_large_file_is_named_by_line_and_column(tmp_path, csv_engine, cell, message):
    body = [f"{i},{i * 0.5},{-i}" for i in range(20000)]
    body[14999] = f"{14999},1.5,{cell}"
    p = write_csv(tmp_path / "t.csv", "a,b,c\n" + "\n".join(body) + "\n")
    with pytest.raises(DataError, match=message):
        tabular.read(p)


@pytest.mark.parametrize(("text", "result"), [
    ("a,b\n1,2\n3,4", [[1, 2], [3, 4]]),  # no final line end
    ("a,b\r\n1,2\r\n3,4\r\n", [[1, 2], [3, 4]]),
    ('a,b\n"1",2\n3,"4"\n', [[1, 2], [3, 4]]),  # quoted numbers: the exact reader reads the file
    ("a,b\n1_0,2\n3,4\n", [[10, 2], [3, 4]]),  # what float() takes and the C parsers refuse
    ("a,b\n1,2\n\n3,4\n", "line 3: 0 fields, but the header has 2"),
    ("a,b\n1,2\n3,4\n\n", "line 4: 0 fields, but the header has 2"),
    ("a,b\n1,x\n2,3\n\n", "line 2, column 'b': non-numeric value 'x'"),
    ("\n1,2\n3,4\n", "is empty"),
])
def test_line_ends_quotes_and_blank_lines_as_the_exact_reader_has_them(tmp_path, csv_engine, text, result):
    p = tmp_path / "t.csv"
    p.write_bytes(text.encode())
    if isinstance(result, str):
        with pytest.raises(DataError, match=result):
            tabular.read(p)
    else:
        np.testing.assert_array_equal(tabular.read(p).x, np.array(result, np.float32))


def test_an_error_late_in_the_file_that_the_exact_reader_meets_first_still_comes_first(tmp_path, csv_engine):
    # the exact reader decodes the whole file before looking at a cell: undecodable bytes at the end win
    p = tmp_path / "t.csv"
    p.write_bytes(b"a,b\n1,x\n" + b"1,2\n" * 3000 + b"3,\xff\n")
    with pytest.raises(DataError, match=r"cannot read .* as CSV: 'utf-8' codec can't decode"):
        tabular.read(p)


def parquet(tmp_path, columns, name="t.parquet", metadata=None):
    pa = pytest.importorskip("pyarrow")
    pq = pytest.importorskip("pyarrow.parquet")
    table = pa.table(columns)
    pq.write_table(table.replace_schema_metadata(metadata) if metadata else table, tmp_path / name)
    return tmp_path / name


def test_parquet_round_trip_gives_what_the_csv_gives(tmp_path):
    pa = pytest.importorskip("pyarrow")
    rng = np.random.default_rng(0)
    a, b, c = rng.normal(size=50), rng.integers(-1000, 1000, 50), rng.normal(size=50).astype(np.float32)
    label = rng.integers(0, 3, 50)
    p = parquet(tmp_path, {"a": a, "b": b, "label": pa.array(label, pa.int32()), "c": c})
    t = tabular.read(p, "label")
    assert t.columns == ("a", "b", "c") and t.x.dtype == np.float32 and t.y.dtype == np.int64
    np.testing.assert_array_equal(t.x, np.column_stack([a, b, c]).astype(np.float32))
    np.testing.assert_array_equal(t.y, label)
    csv_text = "a,b,label,c\n" + "".join(f"{float(a[i])!r},{b[i]},{label[i]},{float(c[i])!r}\n" for i in range(50))
    assert tabular.read(write_csv(tmp_path / "t.csv", csv_text), "label").x.tobytes() == t.x.tobytes()
    assert tabular.read(p).columns == ("a", "b", "label", "c")
    # a pandas index stored as a column is not a feature
    indexed = parquet(tmp_path, {"a": a, "__index_level_0__": np.arange(50)}, "i.parquet",
                      {b"pandas": b'{"index_columns": ["__index_level_0__"]}'})
    assert tabular.read(indexed).columns == ("a",)


def test_parquet_errors_name_the_file_and_column(tmp_path):
    pa = pytest.importorskip("pyarrow")
    cases = [({"a": [1.0, 2.0, 3.0], "b": pa.array([1.0, None, 3.0])}, None, r"column 'b', row 1: a missing value"),
             ({"a": [1.0, 2.0], "s": ["x", "y"]}, None, r"column 's' holds string values; vaekit needs numeric"),
             ({"a": [1.0, 2.0, np.inf]}, None, r"column 'a', row 2: inf is not a finite number"),
             ({"a": [1.0, 2.0], "b": [3.0, 4.0]}, "y", r"has no column 'y'; its columns are \['a', 'b'\]"),
             ({"a": [1.0, 2.0], "y": [0.5, 1.0]}, "y", r"column 'y': labels must be integers")]
    for i, (columns, label, message) in enumerate(cases):
        p = parquet(tmp_path, columns, f"{i}.parquet")
        with pytest.raises(DataError, match=rf"{i}\.parquet.*{message}"):
            tabular.read(p, label)
    (tmp_path / "junk.parquet").write_bytes(b"not a parquet file")
    with pytest.raises(DataError, match=r"cannot read .*junk\.parquet as Parquet"):
        tabular.read(tmp_path / "junk.parquet")


def test_parquet_without_pyarrow_says_what_to_install(tmp_path, monkeypatch):
    (tmp_path / "t.parquet").write_bytes(b"PAR1")
    monkeypatch.setitem(sys.modules, "pyarrow", None)
    with pytest.raises(DataError, match=r"t\.parquet needs pyarrow.*pip install 'vaekit\[parquet\]'"):
        tabular.read(tmp_path / "t.parquet")
    assert tabular.is_table_path("data/T.PARQUET")


CELL_TEXT = st.sampled_from(["1", "-2.5", "-0", "1e5", "1E-3", "+4", ".5", "7.", " 3 ", "nan", "inf", "1e400", "1e300",
                             "", " ", "x", "1_0", '"4"', "0x10", "\x00", "١", "\r", "\r\n"]) | st.text(max_size=3)


@st.composite
def csv_texts(draw: st.DrawFn) -> tuple[bytes, str | None]:
    width = draw(st.integers(1, 3))
    header = draw(st.lists(st.sampled_from(["a", "b", "label", '"q"']), min_size=width, max_size=width))
    cells = st.integers(-10**6, 10**6).map(str) | st.floats(allow_nan=False, allow_infinity=False).map(repr)
    if draw(st.booleans()):
        cells |= CELL_TEXT
    rows = draw(st.lists(st.lists(cells, min_size=width - draw(st.integers(0, 1)), max_size=width), max_size=8))
    ends = st.sampled_from(["\n"] * 8 + ["\r\n", "\r", "\n\n"])
    text = "".join(",".join(r) + draw(ends) for r in [header, *rows])
    return text.encode(), draw(st.none() | st.sampled_from(["label", "a", "missing"]))


@settings(max_examples=150, derandomize=True, deadline=None, database=None,
          suppress_health_check=list(HealthCheck))
@given(file=csv_texts())
def test_bulk_and_exact_csv_readers_agree_on_any_text(tmp_path_factory, csv_engine, file):
    def outcome(read):
        try:
            t = read(p, label)
        except DataError as e:
            return str(e)
        return t.x.tobytes(), t.x.shape, None if t.y is None else t.y.tolist(), t.columns

    blob, label = file
    p = tmp_path_factory.mktemp("csv") / "t.csv"
    p.write_bytes(blob)
    try:
        bulk = outcome(csvtable._read_csv_bulk)
    except csvtable._Undecided:
        return  # read() hands such a file to the exact reader
    assert bulk == outcome(csvtable._read_csv_exact)
