"""Big tables: seconds and peak memory to load a 1,000,000 x 30 table from CSV and from Parquet.

Writes --rows rows of --columns normal floats (each written as the shortest text that reads back to the same
double, as pandas and pyarrow write them) plus an integer ``label`` column, as CSV and as Parquet in a
temporary folder, then loads each file in a fresh process per reader: vaekit's reader (pyarrow's CSV parser
when pyarrow is installed; the numpy-only reader with pyarrow hidden), the exact cell-by-cell reader that was
vaekit's only CSV reader before (a tenth of the rows, it is slow), ``pandas.read_csv`` and
``pandas.read_parquet`` when pandas is installed. Seconds are the load call alone (imports excluded: pyarrow is
imported first where it is not hidden, as pandas imports it; a process's first read pays it, 0.15 s), the best
of --repeat fresh processes; peak MB is the process's peak resident memory (VmHWM of that child, which counts
native allocations of numpy and pyarrow, unlike tracemalloc; ru_maxrss where there is no /proc), the largest of
the runs, and "after imports" the peak before the load began. The files are read from the page cache (they were
just written).

    python benchmarks/tables.py --rows 1000000 --columns 30
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np
from scale import cpu  # this folder's scale.py: the CPU's model name

ROOT = Path(__file__).resolve().parents[1]

# Each child: imports, the peak memory so far, then the timed load; one JSON line on stdout.
CHILD = """
import json, resource, sys, time
from pathlib import Path


def peak_kb():
    # VmHWM: this process's own peak. ru_maxrss would also count the parent's resident memory at the fork,
    # which Linux carries over to the child (here the generated table, hundreds of MB).
    try:
        return int(Path("/proc/self/status").read_text().split("VmHWM:")[1].split()[0])
    except (OSError, IndexError, ValueError):
        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss


if {hide_pyarrow}:
    sys.modules["pyarrow"] = None  # as if pyarrow were not installed
else:  # before the clock starts, as pandas imports it
    import pyarrow.csv, pyarrow.parquet
{imports}
before = peak_kb()
t0 = time.perf_counter()
{load}
seconds = time.perf_counter() - t0
print(json.dumps({{"seconds": seconds, "imports_kb": before, "peak_kb": peak_kb(), "shape": list(shape)}}))
"""
VAEKIT = ("from vaekit.data import csvtable, tabular",
          "t = {fn}(path, 'label'); shape = (*t.x.shape, t.y.shape[0])")
PANDAS = ("import pandas as pd", "shape = pd.{fn}(path).shape")


def readers(csv: Path, small_csv: Path, parquet: Path | None) -> list[tuple[str, Path, str, bool]]:
    """(name, file, child program, pyarrow hidden) for each reader that can run here."""
    out = [("vaekit CSV", csv, VAEKIT, "tabular.read", False),
           ("vaekit CSV, numpy only", csv, VAEKIT, "tabular.read", True),
           (f"vaekit CSV, exact reader ({rows_of(small_csv):,} rows)", small_csv, VAEKIT, "csvtable._read_csv_exact",
            False)]
    pandas = importlib.util.find_spec("pandas") is not None
    if pandas:
        out.append(("pandas.read_csv", csv, PANDAS, "read_csv", False))
    if parquet is not None:
        out.append(("vaekit Parquet", parquet, VAEKIT, "tabular.read", False))
        if pandas:
            out.append(("pandas.read_parquet", parquet, PANDAS, "read_parquet", False))
    return [(name, path, CHILD.format(hide_pyarrow=hide, imports=code[0], load=f"path = Path({str(path)!r})\n"
                                      + code[1].format(fn=fn)), hide)
            for name, path, code, fn, hide in out]


def rows_of(path: Path) -> int:
    with path.open("rb") as f:
        return sum(block.count(b"\n") for block in iter(lambda: f.read(1 << 24), b"")) - 1


def measure(program: str) -> dict:
    """Run ``program`` in a fresh interpreter: its seconds, peak and after-imports resident memory in MB."""
    env = {**os.environ, "PYTHONPATH": f"{ROOT / 'src'}{os.pathsep}{os.environ.get('PYTHONPATH', '')}"}
    done = subprocess.run([sys.executable, "-c", program], env=env, capture_output=True, text=True)
    if done.returncode != 0:
        raise SystemExit(f"a reader failed (exit {done.returncode}):\n{program}\n{done.stderr}")
    result = json.loads(done.stdout.strip().splitlines()[-1])
    return {**result, "peak_mb": result["peak_kb"] / 1024, "imports_mb": result["imports_kb"] / 1024}


def write_tables(folder: Path, rows: int, columns: int) -> tuple[Path, Path, Path | None]:
    """The CSV, a tenth of it as CSV for the slow exact reader, and the Parquet file (None without pyarrow)."""
    rng = np.random.default_rng(0)
    x, y = rng.normal(size=(rows, columns)), rng.integers(0, 10, rows)
    names = [f"x{j}" for j in range(columns)] + ["label"]
    csv, small, parquet = folder / "table.csv", folder / "small.csv", folder / "table.parquet"
    if importlib.util.find_spec("pyarrow") is None:
        for path, n in ((csv, rows), (small, rows // 10)):
            np.savetxt(path, np.column_stack([x[:n], y[:n]]), fmt=["%r"] * columns + ["%d"], delimiter=",",
                       header=",".join(names), comments="")
        return csv, small, None
    import pyarrow as pa
    import pyarrow.csv as pacsv
    import pyarrow.parquet as pq

    table = pa.table(dict(zip(names, [*x.T, y], strict=True)))
    pacsv.write_csv(table, csv, pacsv.WriteOptions(quoting_style="none"))
    pacsv.write_csv(table.slice(0, rows // 10), small, pacsv.WriteOptions(quoting_style="none"))
    pq.write_table(table, parquet)
    return csv, small, parquet


def describe(rows: int, columns: int, csv: Path, parquet: Path | None) -> str:
    files = [("CSV", csv), ("Parquet", parquet)]
    sizes = ", ".join(f"{kind} {path.stat().st_size / 1e6:.0f} MB" for kind, path in files if path is not None)
    return (f"{rows:,} rows x {columns} float columns + a label column; {sizes}; {cpu()}, {os.cpu_count()} "
            f"CPUs; Python {sys.version.split()[0]}, {versions()}\n")


def versions() -> str:
    found = []
    for name in ("numpy", "pyarrow", "pandas"):
        if importlib.util.find_spec(name) is not None:
            found.append(f"{name} {__import__(name).__version__}")
    return ", ".join(found)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--rows", type=int, default=1_000_000)
    ap.add_argument("--columns", type=int, default=30)
    ap.add_argument("--repeat", type=int, default=3, help="fresh processes per reader: best seconds, largest peak")
    args = ap.parse_args()
    with tempfile.TemporaryDirectory(prefix="vaekit-tables-") as d:
        csv, small, parquet = write_tables(Path(d), args.rows, args.columns)
        print(describe(args.rows, args.columns, csv, parquet))
        print("| reader | seconds | peak MB | after imports MB |\n|---|---:|---:|---:|")
        for name, _, program, _ in readers(csv, small, parquet):
            runs = [measure(program) for _ in range(args.repeat)]
            assert all(r["shape"][0] in (args.rows, args.rows // 10) for r in runs), runs  # every row was read
            seconds, peak = min(r["seconds"] for r in runs), max(r["peak_mb"] for r in runs)
            print(f"| {name} | {seconds:.2f} | {peak:.0f} | {max(r['imports_mb'] for r in runs):.0f} |", flush=True)


if __name__ == "__main__":
    main()
