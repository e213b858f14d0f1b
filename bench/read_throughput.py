"""Reading and encoding Criteo text: embslim's readers against pyarrow's raw CSV read of the same file, same run.

The 10,000 real Criteo rows (criteo-dac-head10k) are repeated `--repeat` times into a temporary file
(50: 500k rows, 121 MB). Each measurement runs in a fresh process, so its peak RSS is its own (that process imports
pyarrow and embslim's data modules before timing; their memory is in every kind's peak):

- `pyarrow-raw`: `pyarrow.csv.read_csv`, every column as a string, single-threaded (embslim reads
  single-threaded too: pyarrow only numbers invalid rows then), nothing else;
- `embslim-arrow`: `load_criteo` (pyarrow blocks, every row accounted for) + `prepare` (split, fit
  vocabularies with min_count 10 on the training split, encode all rows to ids): read + encode;
- `embslim-python`: the same with the line reader it replaced (`--no-python` skips it: ~30 s).

Reported per kind: best wall seconds of `--repeats` (kinds alternate), its CPU seconds (user + system
of the measured step), rows/s of wall time and per CPU second, peak RSS, and the ratio to pyarrow-raw.
The machine is shared: only ratios within one run mean much.

    python bench/read_throughput.py [--repeat 50] [--repeats 3] [--no-python] [--out FILE.json]
"""
from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HEAD = "criteo-dac-head10k/train_head10k.txt"


def worker(kind: str, path: str) -> dict:
    """Run one measurement in this process (imports done before the clock starts) and return its timings and peak RSS."""
    import pyarrow as pa
    import pyarrow.csv as pcsv

    from embslim.data.criteo import COLUMNS, load_criteo
    from embslim.data.encode import PrepareConfig, prepare

    start, cpu = time.perf_counter(), resource.getrusage(resource.RUSAGE_SELF)
    if kind == "pyarrow-raw":
        table = pcsv.read_csv(path, read_options=pcsv.ReadOptions(column_names=COLUMNS, use_threads=False, block_size=16 << 20),
                              parse_options=pcsv.ParseOptions(delimiter="\t", quote_char=False),
                              convert_options=pcsv.ConvertOptions(column_types={c: pa.string() for c in COLUMNS}))
        rows = table.num_rows
    else:
        data = prepare(load_criteo(Path(path), engine=kind.split("-")[1]), PrepareConfig(min_count=10))
        rows = len(data.table)
    wall = time.perf_counter() - start
    end = resource.getrusage(resource.RUSAGE_SELF)
    cpu_s = (end.ru_utime - cpu.ru_utime) + (end.ru_stime - cpu.ru_stime)
    return {"rows": rows, "wall_s": wall, "cpu_s": cpu_s, "peak_rss_mb": end.ru_maxrss / 1024}


def measure(kind: str, path: Path) -> dict:
    out = subprocess.run([sys.executable, __file__, "--worker", kind, str(path)], check=True, capture_output=True, text=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--repeat", type=int, default=50, help="copies of the 10,000 real rows in the file")
    p.add_argument("--repeats", type=int, default=3, help="runs of each kind; the fastest is kept")
    p.add_argument("--no-python", action="store_true", help="skip the line reader")
    p.add_argument("--out", type=Path)
    p.add_argument("--worker", nargs=2, help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.worker:
        print(json.dumps(worker(*args.worker)))
        return
    data_dir = Path(os.environ.get("EMBSLIM_DATA_DIR", "data"))
    head = (data_dir / HEAD).read_bytes()
    kinds = ["pyarrow-raw", "embslim-arrow"] + ([] if args.no_python else ["embslim-python"])
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "train.txt"
        path.write_bytes(head * args.repeat)
        size_mb = path.stat().st_size / 1e6
        best: dict[str, dict] = {}
        for _ in range(args.repeats):
            for kind in kinds:
                if kind == "embslim-python" and kind in best:
                    continue  # one run of the slow reader is enough
                run = measure(kind, path)
                if kind not in best or run["wall_s"] < best[kind]["wall_s"]:
                    best[kind] = run
    raw = best["pyarrow-raw"]
    for run in best.values():
        run["rows_per_s"] = run["rows"] / run["wall_s"]
        run["rows_per_cpu_s"] = run["rows"] / run["cpu_s"]
        run["wall_vs_pyarrow_raw"] = run["wall_s"] / raw["wall_s"]
    from embslim.bench.report import cpu_name

    report = {"file_rows": 10_000 * args.repeat, "file_mb": round(size_mb, 1), "repeats": args.repeats,
              "machine": f"{cpu_name()}, {os.cpu_count()} CPUs", "date": time.strftime("%Y-%m-%d"), "results": best}
    print(f"{report['file_rows']} rows, {size_mb:.0f} MB; {report['machine']}")
    print(f"{'kind':16} {'wall s':>7} {'cpu s':>7} {'rows/s':>10} {'rows/cpu-s':>11} {'peak RSS MB':>12} {'x pyarrow':>10}")
    for kind, r in best.items():
        print(f"{kind:16} {r['wall_s']:7.2f} {r['cpu_s']:7.2f} {r['rows_per_s']:10,.0f} {r['rows_per_cpu_s']:11,.0f} "
              f"{r['peak_rss_mb']:12,.0f} {r['wall_vs_pyarrow_raw']:10.2f}")
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(report, indent=1) + "\n")


if __name__ == "__main__":
    main()
