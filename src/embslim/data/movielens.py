"""MovieLens in its published formats: 100K, 1M (`::`, latin-1) and the CSV releases.

Fields: user_id, item_id, and where the release has them gender, age, occupation,
zip (user side) and genre (item side, multi-valued). Tasks: rating (the stars),
ctr (rating >= 4 is a click) and topk (leave-last-out by timestamp).
"""
from __future__ import annotations

from pathlib import Path

import numpy as np

from embslim.data.encode import RawColumns
from embslim.data.reader import ReadReport, parse_cell, read_rows
from embslim.data.vocab import flatten_bags
from embslim.errors import DataError

TASKS = ("ctr", "rating", "topk")
USER_FIELDS = ("gender", "age", "occupation", "zip")


def load_movielens(path: Path, max_bad_rows: float = 0) -> RawColumns:
    """Detect the release in `path` (a folder) by its files and read it."""
    if not path.is_dir():
        raise DataError(f"{path}: not a folder (expected an extracted MovieLens release)")
    if (path / "u.data").exists():
        return _load_100k(path, max_bad_rows)
    if (path / "ratings.dat").exists():
        return _load_1m(path, max_bad_rows)
    if (path / "ratings.csv").exists():
        return _load_csv_release(path, max_bad_rows)
    present = sorted(p.name for p in path.iterdir())[:10]
    raise DataError(f"{path}: no MovieLens ratings file (u.data, ratings.dat or ratings.csv); found {present}")


def _ratings(path: Path, columns: list[str], sep: str, max_bad_rows: float, **kw) -> tuple[list, ReadReport]:
    report = ReadReport(str(path))
    rows = []
    for lineno, cells in read_rows(path, columns, sep, report, **kw):
        ok_r, rating = parse_cell(report, lineno, columns[2], cells[2], float)
        if not ok_r:
            continue
        ok_t, ts = parse_cell(report, lineno, columns[3], cells[3], int)
        if ok_t:
            rows.append((cells[0], cells[1], rating, ts))
    report.check(max_bad_rows)
    return rows, report


def _side_table(path: Path, columns: list[str], sep: str, max_bad_rows: float, **kw) -> tuple[dict[str, list[str]], ReadReport]:
    report = ReadReport(str(path))
    table = {cells[0]: cells for _, cells in read_rows(path, columns, sep, report, **kw)}
    report.check(max_bad_rows)
    return table, report


def _assemble(name: str, ratings: list, users: dict | None, user_cols: list[int], items: dict[str, list[str]] | None, reports: list[ReadReport]) -> RawColumns:
    if not ratings:
        raise DataError(f"{reports[0].path}: no usable rating rows")
    user, item, rating, ts = (np.array(c) for c in zip(*ratings))
    columns: dict[str, np.ndarray] = {"user_id": user.astype(str), "item_id": item.astype(str)}
    sides = {"user_id": "user", "item_id": "item"}
    missing_users = 0
    if users is not None:
        blank = [""] * (max(user_cols) + 1)
        rows = [users.get(u) for u in columns["user_id"].tolist()]
        missing_users = sum(r is None for r in rows)
        for field_name, col in zip(USER_FIELDS, user_cols):
            columns[field_name] = np.array([(r or blank)[col] for r in rows])
            sides[field_name] = "user"
    bags = {}
    missing_items = 0
    if items is not None:
        genres = [items.get(i) for i in columns["item_id"].tolist()]
        missing_items = sum(g is None for g in genres)
        bags["genre"] = flatten_bags([g or [] for g in genres])
        sides["genre"] = "item"
    info = {"reads": [r.as_dict() for r in reports], "ratings_without_user_row": missing_users, "ratings_without_item_row": missing_items}
    return RawColumns(name, columns, rating.astype(np.float32), bags, sides, ts.astype(np.int64), "user_id", "item_id", TASKS, info)


def _load_100k(path: Path, max_bad_rows: float) -> RawColumns:
    ratings, r1 = _ratings(path / "u.data", ["user_id", "item_id", "rating", "timestamp"], "\t", max_bad_rows)
    users, r2 = _side_table(path / "u.user", ["user_id", "age", "gender", "occupation", "zip"], "|", max_bad_rows)
    genre_cols = [f"genre{i}" for i in range(19)]
    item_cols = ["item_id", "title", "release_date", "video_release_date", "url", *genre_cols]
    raw_items, r3 = _side_table(path / "u.item", item_cols, "|", max_bad_rows, encoding="latin-1")
    items = {k: [str(g) for g, flag in enumerate(v[5:]) if flag == "1"] for k, v in raw_items.items()}
    return _assemble("movielens-100k", ratings, users, [2, 1, 3, 4], items, [r1, r2, r3])


def _load_1m(path: Path, max_bad_rows: float) -> RawColumns:
    ratings, r1 = _ratings(path / "ratings.dat", ["user_id", "item_id", "rating", "timestamp"], "::", max_bad_rows, encoding="latin-1")
    users, r2 = _side_table(path / "users.dat", ["user_id", "gender", "age", "occupation", "zip"], "::", max_bad_rows, encoding="latin-1")
    raw_items, r3 = _side_table(path / "movies.dat", ["item_id", "title", "genres"], "::", max_bad_rows, encoding="latin-1")
    items = {k: v[2].split("|") for k, v in raw_items.items()}
    return _assemble("movielens-1m", ratings, users, [1, 2, 3, 4], items, [r1, r2, r3])


def _load_csv_release(path: Path, max_bad_rows: float) -> RawColumns:
    cols = ["userId", "movieId", "rating", "timestamp"]
    ratings, r1 = _ratings(path / "ratings.csv", cols, ",", max_bad_rows, header=True, quoted=True)
    reports = [r1]
    items = None
    if (path / "movies.csv").exists():
        raw_items, r2 = _side_table(path / "movies.csv", ["movieId", "title", "genres"], ",", max_bad_rows, header=True, quoted=True)
        items = {k: [g for g in v[2].split("|") if g != "(no genres listed)"] for k, v in raw_items.items()}
        reports.append(r2)
    return _assemble(f"movielens-{path.name}", ratings, None, [], items, reports)
