"""The command line: help that reads well, and one-line errors instead of tracebacks."""
import json
import sys

import pytest

from embslim.cli import main


def error_of(capsys, argv):
    code = main(argv)
    err = capsys.readouterr().err.strip()
    assert code == 2
    assert "Traceback" not in err and len(err.splitlines()) == 1
    return err


def test_help_lists_the_commands(capsys):
    with pytest.raises(SystemExit):
        main(["--help"])
    out = capsys.readouterr().out
    assert "train" in out and "data" in out


def test_wrong_path_is_one_line_naming_it(capsys, tmp_path):
    err = error_of(capsys, ["train", "--dataset", "criteo", "--data-path", str(tmp_path / "missing.txt"), "--quiet"])
    assert "missing.txt" in err and "no such file" in err


def test_broken_rows_name_file_line_and_field(capsys, tmp_path):
    (tmp_path / "train.txt").write_text("\t".join(["1"] + ["5"] * 13 + ["a"] * 26) + "\n" + "\t".join(["0", "oops"] + ["5"] * 12 + ["a"] * 26) + "\n")
    err = error_of(capsys, ["data", "info", "criteo", "--data-path", str(tmp_path / "train.txt")])
    assert "train.txt line 2, field 'I1'" in err


def test_empty_file_is_reported(capsys, tmp_path):
    (tmp_path / "train.txt").write_text("")
    assert "no data rows" in error_of(capsys, ["data", "info", "criteo", "--data-path", str(tmp_path / "train.txt")])


def test_missing_column_is_reported(capsys, tmp_path):
    (tmp_path / "s.json").write_text(json.dumps({"label": "click", "categorical": ["ad"]}))
    (tmp_path / "d.csv").write_text("click,user\n1,a\n")
    err = error_of(capsys, ["data", "info", "tabular", "--data-path", str(tmp_path / "d.csv"), "--schema", str(tmp_path / "s.json")])
    assert "missing column(s) ['ad']" in err


def test_data_info_accounts_for_every_criteo_row(capsys):
    from conftest import shared_dataset

    path = shared_dataset("criteo-dac-head10k")
    assert main(["data", "info", "criteo", "--data-path", str(path), "--json"]) == 0
    info = json.loads(capsys.readouterr().out)
    read = info["reads"][0]
    assert read["rows_read"] == read["rows_used"] + read["rows_rejected"] == 10_000
    assert info["fields"]["C3"]["distinct_in_train"] > info["fields"]["C3"]["cardinality"]


def test_unknown_model_option_is_rejected(capsys):
    with pytest.raises(SystemExit):
        main(["train", "--model", "nope"])


def test_bench_dnis_options_are_parsed_and_unknown_keys_named():
    from argparse import ArgumentTypeError

    from embslim.cli_types import dnis_options

    assert dnis_options("fine_tune=false,search_epochs=1,l1=1e-4") == {"fine_tune": False, "search_epochs": 1, "l1": 1e-4}
    with pytest.raises(ArgumentTypeError, match="fine_tuning"):
        dnis_options("fine_tuning=false")
    assert dnis_options("fine_tune_from=full") == {"fine_tune_from": "full"}
    with pytest.raises(ArgumentTypeError, match="search, full"):
        dnis_options("fine_tune_from=scratch")


def usage_error(capsys, argv) -> str:
    """The last stderr line of an argparse rejection (exit 2, usage plus one error line, no traceback)."""
    with pytest.raises(SystemExit) as exc:
        main(argv)
    err = capsys.readouterr().err.strip()
    assert exc.value.code == 2 and "Traceback" not in err
    return err.splitlines()[-1]


def test_zero_batch_size_is_a_one_line_error(capsys):
    assert "argument --batch-size: must be an integer at least 1, got '0'" in usage_error(capsys, ["train", "--batch-size", "0"])


def test_nan_learning_rate_is_a_one_line_error(capsys):
    assert "argument --lr: expected a finite number" in usage_error(capsys, ["train", "--lr", "nan"])


def test_zero_epochs_is_rejected(capsys):
    assert "argument --epochs" in usage_error(capsys, ["search", "--epochs", "0"])


def test_bench_budget_above_one_is_rejected(capsys):
    assert "argument --budgets" in usage_error(capsys, ["bench", "--budgets", "0.5,2"])


def test_search_blocks_must_be_a_count_or_increasing_fractions(capsys):
    assert "argument --blocks" in usage_error(capsys, ["search", "--blocks", "0.5,0.1,1"])


def test_every_dnis_setting_has_a_check():
    from dataclasses import fields

    from embslim.cli_types import DNIS_VALUES
    from embslim.search.dnis import DNISConfig

    assert set(DNIS_VALUES) == {f.name for f in fields(DNISConfig)}


def test_search_flag_defaults_are_the_dnis_defaults():
    from embslim.cli import build_parser
    from embslim.search.dnis import DNISConfig

    args = build_parser().parse_args(["search"])
    assert args.search_holdout == DNISConfig.search_holdout and args.l1 == DNISConfig.l1
    assert args.fill_temperature == DNISConfig.fill_temperature and args.min_dims == DNISConfig.min_dims
    assert args.fine_tune_from == DNISConfig.fine_tune_from
    assert args.retrain == DNISConfig.retrain and args.search_trains_weights == DNISConfig.search_trains_weights


def test_ray_address_without_ray_fails_before_any_cell_runs(capsys, monkeypatch, tmp_path):
    monkeypatch.setitem(sys.modules, "ray", None)
    err = error_of(capsys, ["bench", "--ray-address", "local", "--synthetic-rows", "300", "--out", str(tmp_path / "b")])
    assert 'pip install "embslim[distributed]"' in err and not (tmp_path / "b").exists()


def test_seed_beyond_32_bits_is_rejected(capsys):
    assert "argument --seed" in usage_error(capsys, ["train", "--seed", str(2**32)])


def test_too_few_rows_to_split_is_a_one_line_error(capsys, tmp_path):
    err = error_of(capsys, ["train", "--synthetic-rows", "3", "--epochs", "1", "--quiet", "--out", str(tmp_path)])
    assert "too small to train on" in err


def test_diverging_training_is_a_one_line_error(capsys, tmp_path):
    argv = ["train", "--synthetic-rows", "300", "--epochs", "1", "--lr", "1e6", "--weight-decay", "3e38", "--quiet", "--out", str(tmp_path)]
    assert "training diverged" in error_of(capsys, argv)


def test_budget_above_the_full_table_is_rejected(capsys, tmp_path):
    err = error_of(capsys, ["train", "--synthetic-rows", "300", "--budget", "9GB", "--quiet", "--out", str(tmp_path)])
    assert "more than the full table at --dim 16" in err


def test_every_training_setting_of_the_recipe_reaches_the_run(tmp_path):
    from embslim.cli import build_parser, configs_from_args
    from embslim.data import load_dataset
    from embslim.train.recipes import recipe

    rows = "".join(f"{u},{i},{1 + (u + i) % 5},{u * 100 + i}\n" for u in range(1, 30) for i in range(1, 12))
    (tmp_path / "ratings.csv").write_text("userId,movieId,rating,timestamp\n" + rows)
    data = load_dataset("movielens-latest-small", "rating", tmp_path)
    args = build_parser().parse_args(["train", "--model", "fm", "--task", "rating", "--quiet"])
    train = configs_from_args(args, data).train
    assert train.lr_decay == recipe("fm", "rating")["lr_decay"] != 1.0
