"""`embslim bench`: the grid from the registry, files a user can read and plot, restart after a kill."""
import csv
import json
from dataclasses import replace
from pathlib import Path

import pytest

from embslim.bench import runner
from embslim.bench.grid import BenchSpec, benchmark_methods, cells, registry_name
from embslim.bench.report import cell_text, summarise, winners
from embslim.cli import main
from embslim.embeddings import list_embeddings

TINY = BenchSpec(dataset="synthetic", synthetic_rows=3000, dim=4, methods=("full", "uniform", "mde"), budgets=(0.5, 0.25), seeds=(0, 1), epochs=1)


def test_every_budgeted_registered_method_joins_the_benchmark():
    assert set(benchmark_methods()) >= {"full", "uniform", "dnis", "mde", "nested", "nested-sliced"}
    assert {registry_name(m) for m in benchmark_methods()} - {"uniform"} <= set(list_embeddings())


def test_sliced_cells_of_one_seed_cut_one_full_size_run(tmp_path):
    spec = BenchSpec(dataset="synthetic", synthetic_rows=3000, dim=4, methods=("nested-sliced",), budgets=(0.5, 0.3), seeds=(0,), epochs=1)
    rows = runner.run_grid(spec, tmp_path, workers=1, progress=False)
    assert [r["status"] for r in rows] == ["ok"] * 2 and all(r["bytes"] <= r["budget_bytes"] for r in rows)
    assert (tmp_path / "runs" / "nested-source-s0" / "results.json").exists()


def test_grid_runs_the_full_reference_once_per_seed():
    grid = cells(TINY)
    assert sum(c.method == "full" for c in grid) == 2
    assert len(grid) == 2 * (1 + 2 * 2)


def test_smoke_preset_writes_table_plot_and_report_naming_winners(tmp_path, capsys):
    assert main(["bench", "--preset", "smoke", "--out", str(tmp_path), "--quiet"]) == 0
    rows = list(csv.DictReader(open(tmp_path / "results.csv")))
    assert {r["method"] for r in rows} == {"full", "uniform", "dnis", "mde"}
    assert all(float(r["bytes"]) <= float(r["budget_bytes"]) for r in rows if r["status"] == "ok" and r["method"] != "full")
    assert (tmp_path / "pareto.png").stat().st_size > 0 and (tmp_path / "pareto.svg").exists()
    report = (tmp_path / "report.md").read_text()
    summary = summarise(json.loads((tmp_path / "results.json").read_text()), "auc")
    for budget, method in winners(summary, "auc").items():
        assert f"budget {budget:g}: **{method}** ({summary[method][budget]['mean']:.4f})" in report


def test_killed_benchmark_restarts_without_repeating_finished_runs(tmp_path, monkeypatch):
    real = runner.run_cell
    calls = []

    def dies_after_three(spec, cell, out):
        if len(calls) == 3:
            raise KeyboardInterrupt
        calls.append(cell.name)
        return real(spec, cell, out)

    monkeypatch.setattr(runner, "run_cell", dies_after_three)
    with pytest.raises(KeyboardInterrupt):
        runner.run_grid(TINY, tmp_path, workers=1, progress=False)
    finished = {p.parent.name: p.stat().st_mtime_ns for p in (tmp_path / "runs").glob("*/row.json")}
    assert sorted(finished) == sorted(calls)
    monkeypatch.setattr(runner, "run_cell", real)
    rows = runner.run_grid(TINY, tmp_path, workers=1, progress=False)
    assert len(rows) == len(cells(TINY))
    assert {name: (tmp_path / "runs" / name / "row.json").stat().st_mtime_ns for name in finished} == finished


def test_budget_a_method_cannot_reach_is_reported_not_fatal(tmp_path):
    spec = BenchSpec(dataset="synthetic", synthetic_rows=2000, dim=4, methods=("uniform",), budgets=(0.1,), seeds=(0,), epochs=1)
    (row,) = runner.run_grid(spec, tmp_path, workers=1, progress=False)
    assert row["status"] == "infeasible" and "below one dimension" in row["reason"]


def test_dnis_cells_of_one_seed_share_one_search(tmp_path):
    spec = BenchSpec(dataset="synthetic", synthetic_rows=3000, dim=4, methods=("full", "dnis"), budgets=(0.5, 0.3), seeds=(0,), epochs=1,
                     search_epochs=1)
    rows = runner.run_grid(spec, tmp_path, workers=1, progress=False)
    assert [r["status"] for r in rows] == ["ok"] * 3
    assert (tmp_path / "runs" / "dnis-search-s0" / "search" / "checkpoint.pt").exists()
    assert not list((tmp_path / "runs").glob("dnis-b*/search")) and not list((tmp_path / "runs").glob("dnis-b*/full"))
    first, second = (r for r in rows if r["method"] == "dnis")
    assert first["search_seconds"] == second["search_seconds"] > 0


def test_a_dnis_cell_trains_its_own_full_model_when_the_finished_full_cell_kept_no_weights(tmp_path):
    spec = BenchSpec(dataset="synthetic", synthetic_rows=3000, dim=4, methods=("full", "dnis"), budgets=(0.3,), seeds=(0,), epochs=1,
                     search_epochs=1)
    runner.run_grid(replace(spec, methods=("full",)), tmp_path, workers=1, progress=False)
    (tmp_path / "runs" / "full-b1-s0" / "model.pt").unlink()  # a user cleaning up checkpoints
    rows = runner.run_grid(spec, tmp_path, workers=1, progress=False)
    assert [r["status"] for r in rows] == ["ok", "ok"]
    assert (tmp_path / "runs" / "dnis-search-s0" / "full" / "model.pt").exists()


def test_a_dnis_cell_stored_as_int8_prunes_the_same_search_at_one_byte_per_value(tmp_path):
    spec = BenchSpec(dataset="synthetic", synthetic_rows=3000, dim=4, methods=("full", "dnis", "dnis-int8"), budgets=(0.3,), seeds=(0,),
                     epochs=1, search_epochs=1)
    rows = {r["method"]: r for r in runner.run_grid(spec, tmp_path, workers=1, progress=False)}
    assert [p.name for p in (tmp_path / "runs").glob("*-search-s0")] == ["dnis-search-s0"]
    layout = json.loads((tmp_path / "runs" / "dnis-int8-b0.3-s0" / "layout.json").read_text())
    assert layout["precision"] == "int8" and "precision" not in json.loads((tmp_path / "runs" / "dnis-b0.3-s0" / "layout.json").read_text())
    assert rows["dnis-int8"]["bytes"] <= rows["dnis-int8"]["budget_bytes"] and rows["dnis-int8"]["search_seconds"] == rows["dnis"]["search_seconds"]


def test_the_same_grid_runs_as_ray_tasks_on_a_local_cluster(tmp_path, monkeypatch):
    ray = pytest.importorskip("ray")
    monkeypatch.setenv("HOME", str(tmp_path))
    monkeypatch.setenv("RAY_USAGE_STATS_ENABLED", "0")
    spec = BenchSpec(dataset="synthetic", synthetic_rows=2000, dim=4, methods=("full", "uniform"), budgets=(0.5,), seeds=(0,), epochs=1)
    try:
        rows = runner.run_grid(spec, tmp_path / "out", ray_address="local", progress=False)
    finally:
        ray.shutdown()
    assert [(r["method"], r["status"]) for r in rows] == [("full", "ok"), ("uniform", "ok")]
    assert all((tmp_path / "out" / "runs" / c.name / "row.json").exists() for c in cells(spec))


def test_peak_memory_is_measured_per_cell_not_per_worker_lifetime():
    import numpy as np

    from embslim.bench.grid import peak_rss_mb, reset_peak_rss

    if not Path("/proc/self/clear_refs").exists():
        pytest.skip("needs Linux /proc")
    big = np.ones(40_000_000)
    before = peak_rss_mb()
    del big
    reset_peak_rss()
    assert peak_rss_mb() < before - 200


@pytest.mark.parametrize("model", ["sasrec", "lightgcn"])
def test_top_k_grid_ranks_by_ndcg_and_times_full_ranking(tmp_path, model):
    from test_ranking import write_ratings
    from test_sequential import write_sequences

    data = (["--dataset", "amazon-video-games", "--data-path", str(write_sequences(tmp_path))] if model == "sasrec"
            else ["--dataset", "movielens-latest-small", "--data-path", str(write_ratings(tmp_path))])
    out = tmp_path / "bench"
    assert main(["bench", *data, "--task", "topk", "--model", model, "--dim", "8", "--methods", "full,hash", "--budgets", "0.3",
                 "--seeds", "1", "--epochs", "1", "--workers", "1", "--quiet", "--out", str(out)]) == 0
    rows = list(csv.DictReader(open(out / "results.csv")))
    assert {r["method"] for r in rows} == {"full", "hash"}
    assert all(float(r["test_ndcg@10"]) >= 0 and float(r["inference_seconds"]) > 0 for r in rows)


def test_a_cell_with_fewer_seeds_than_the_grid_says_so_instead_of_a_spread():
    full = {"mean": 0.8, "std": 0.001, "bytes": 100.0, "seeds": 3}
    assert cell_text(full, 3) == "0.8000 ± 0.0010 (100 B)"
    assert cell_text({**full, "seeds": 1, "std": 0.0}, 3) == "0.8000 (1 seed; 100 B)"
    assert cell_text({**full, "seeds": 2}, 3) == "0.8000 ± 0.0010 (2 seeds; 100 B)"


def test_bench_seeds_as_a_list_runs_exactly_those_seeds(tmp_path):
    out = tmp_path / "bench"
    assert main(["bench", "--synthetic-rows", "300", "--methods", "full", "--seeds", "2,5", "--epochs", "1", "--workers", "1",
                 "--quiet", "--out", str(out)]) == 0
    assert sorted(int(r["seed"]) for r in csv.DictReader(open(out / "results.csv"))) == [2, 5]


def test_bench_patience_replaces_the_recipes_in_every_cell(tmp_path):
    out = tmp_path / "bench"
    assert main(["bench", "--synthetic-rows", "300", "--methods", "full,uniform", "--budgets", "0.5", "--seeds", "1", "--epochs", "1",
                 "--patience", "7", "--workers", "1", "--quiet", "--out", str(out)]) == 0
    configs = [json.loads(p.read_text())["config"]["train"] for p in (out / "runs").glob("*/results.json")]
    assert len(configs) == 2 and all(c["patience"] == 7 for c in configs)


def test_bench_seeds_as_a_count_runs_seeds_from_zero():
    from embslim.cli_types import seed_set

    assert seed_set("3") == (0, 1, 2) and seed_set("4,") == (4,)


def test_merging_grids_keeps_each_cell_from_the_first_source_that_has_it(tmp_path):
    import importlib.util

    spec = importlib.util.spec_from_file_location("merge_grids", Path(__file__).resolve().parents[1] / "bench" / "merge_grids.py")
    merge_grids = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(merge_grids)
    first, running = tmp_path / "first", tmp_path / "running"
    first.mkdir()
    (first / "results.json").write_text(json.dumps([{"method": "full", "budget": 1.0, "seed": 0, "test_auc": 0.8}]))
    for seed, auc in ((0, 0.7), (1, 0.75)):
        cell = running / "runs" / f"full-b1-s{seed}"
        cell.mkdir(parents=True)
        (cell / "row.json").write_text(json.dumps({"method": "full", "budget": 1.0, "seed": seed, "test_auc": auc}))
    rows = merge_grids.merge([first, running])
    assert [(r["seed"], r["test_auc"]) for r in rows] == [(0, 0.8), (1, 0.75)]


def test_a_cell_a_merged_grid_has_not_run_yet_says_so_instead_of_infeasible(tmp_path):
    from embslim.bench.report import write_markdown

    summary = {"full": {1.0: {"mean": 0.8, "std": 0.0, "bytes": 100.0, "seeds": 1}},
               "pep": {0.5: {"mean": 0.79, "std": 0.0, "bytes": 50.0, "seeds": 1}}}
    write_markdown(summary, "auc", tmp_path, ["# t"], (0.5, 0.2, 0.1), not_run={("pep", 0.2)})
    pep = next(line for line in (tmp_path / "report.md").read_text().splitlines() if line.startswith("| pep"))
    assert pep.split(" | ")[2:] == ["not run", "n/a |"]
