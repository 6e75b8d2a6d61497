"""Tables: reading CSV/.npy/.npz/.mat with clear errors, standardization saved with the model."""

from __future__ import annotations

import numpy as np
import pytest
import scipy.io
import torch

import vaekit
from vaekit import DataError, checkpoint
from vaekit.data import tabular


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
