"""Named datasets: where their files are found, how they are read, how they are fetched."""
from __future__ import annotations

import os
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Callable

from embslim.data.avazu import load_avazu
from embslim.data.cache import cache_key, default_cache_dir, input_files, load_prepared, save_prepared
from embslim.data.criteo import load_criteo
from embslim.data.encode import PrepareConfig, RawColumns, prepare
from embslim.data.fetch import Archive
from embslim.data.fields import PreparedData
from embslim.data.movielens import load_movielens
from embslim.data.sequences import load_sequences
from embslim.data.synthetic import GENERATOR_VERSION, STREAM_ONLY, SYNTHETIC_SHAPES, SyntheticConfig, generate
from embslim.data.tabular import TabularSchema, load_tabular
from embslim.errors import ConfigError, DataError

GROUPLENS = "https://files.grouplens.org/datasets/movielens"


@dataclass(frozen=True)
class DatasetSource:
    """A named dataset: loader, default task and vocabulary threshold, folders it is found in."""

    name: str
    loader: Callable[[Path, float], RawColumns] | None
    default_task: str
    min_count: int
    folders: tuple[str, ...] = ()
    archive: Archive | None = None
    manual: str = ""


DATASETS: dict[str, DatasetSource] = {
    s.name: s
    for s in [
        DatasetSource("synthetic", None, "ctr", 1),
        DatasetSource("synthetic-criteo", None, "ctr", 1),
        DatasetSource("synthetic-criteo-1e8", None, "ctr", 1),
        DatasetSource("movielens-100k", load_movielens, "ctr", 1, ("movielens-100k", "ml-100k"),
                      Archive(f"{GROUPLENS}/ml-100k.zip", "md5:0e33842e24a9c977be4e0107933c0723", "ml-100k")),
        DatasetSource("movielens-1m", load_movielens, "ctr", 1, ("movielens-1m", "ml-1m"),
                      Archive(f"{GROUPLENS}/ml-1m.zip", "md5:c4d9eecfca2ab87c1945afe126590906", "ml-1m")),
        DatasetSource("movielens-20m", load_movielens, "ctr", 1, ("movielens-20m", "ml-20m"),
                      Archive(f"{GROUPLENS}/ml-20m.zip", "md5:cd245b17a1ae2cc31bb14903e1204af3", "ml-20m")),
        DatasetSource("movielens-25m", load_movielens, "ctr", 1, ("movielens-25m", "ml-25m"),
                      Archive(f"{GROUPLENS}/ml-25m.zip", "md5:6b51fb2759a8657d3bfcbfc42b592ada", "ml-25m")),
        DatasetSource("movielens-latest-small", load_movielens, "ctr", 1, ("movielens-latest-small", "ml-latest-small"),
                      Archive(f"{GROUPLENS}/ml-latest-small.zip", None, "ml-latest-small")),
        DatasetSource("criteo", load_criteo, "ctr", 10, ("criteo", "criteo-dac", "criteo-dac-head10k"),
                      manual="download dac.tar.gz from Criteo's Kaggle Display Advertising Challenge page (terms must be accepted by hand)"),
        DatasetSource("amazon-video-games", load_sequences, "topk", 1, ("amazon-video-games-sasrec", "amazon-video-games"),
                      manual="get Video.txt from the SASRec authors' repository (kang205/SASRec, data/Video.txt)"),
        DatasetSource("avazu", load_avazu, "ctr", 2, ("avazu",),
                      manual="download train.gz from the Kaggle Avazu CTR competition page (terms must be accepted by hand)"),
    ]
}


def data_dirs() -> list[Path]:
    """Folders searched for dataset folders: $EMBSLIM_DATA_DIR, then embslim's own data folder."""
    dirs = [Path(os.environ["EMBSLIM_DATA_DIR"])] if os.environ.get("EMBSLIM_DATA_DIR") else []
    return dirs + [default_cache_dir() / "data"]


def resolve_path(source: DatasetSource, path: Path | None) -> Path:
    if path is not None:
        if not path.exists():
            raise DataError(f"{path}: no such file or folder (dataset {source.name})")
        return path
    for base in data_dirs():
        for folder in source.folders:
            if (base / folder).exists():
                return base / folder
    how = f"run `embslim data fetch {source.name}`" if source.archive else source.manual
    raise DataError(f"dataset {source.name}: not found in {[str(d) for d in data_dirs()]}; pass --data-path, set EMBSLIM_DATA_DIR, or {how}")


def get_source(name: str) -> DatasetSource:
    if name not in DATASETS and name != "tabular":
        raise ConfigError(f"unknown dataset {name!r}; known: {sorted(DATASETS)} or 'tabular' with --schema")
    return DATASETS.get(name) or DatasetSource("tabular", None, "ctr", 1)


def load_dataset(
    name: str,
    task: str | None = None,
    path: Path | None = None,
    config: PrepareConfig | None = None,
    max_bad_rows: float = 0,
    schema: Path | None = None,
    synthetic: SyntheticConfig | None = None,
    use_cache: bool = True,
) -> PreparedData:
    """Read, split and encode a named dataset (cached for inputs read from files)."""
    source = get_source(name)
    config = config or PrepareConfig(min_count=source.min_count)
    config = replace(config, task=task or config.task or source.default_task)
    if name in STREAM_ONLY:
        raise ConfigError(f"dataset {name!r} has a field of {max(SYNTHETIC_SHAPES[name].cardinalities):,} ids: it is generated "
                          f"chunk by chunk only, train it with --stream")
    if name in SYNTHETIC_SHAPES:
        generated = synthetic or SYNTHETIC_SHAPES[name]
        parts = {"generator": GENERATOR_VERSION, "synthetic": generated.__dict__, "config": _key_config(config)}
        # small generated sets are quicker to make than to load; 1M rows or more are cached like files
        return _cached(f"synthetic-{config.task}", parts, [], use_cache and generated.rows >= 1_000_000,
                       lambda: prepare(generate(generated), config))
    if name == "tabular":
        if schema is None or path is None:
            raise ConfigError("dataset 'tabular' needs --data-path FILE and --schema SCHEMA.json")
        spec = TabularSchema.from_json(schema)
        loader: Callable[[Path, float], RawColumns] = lambda p, bad: load_tabular(p, spec, bad)  # noqa: E731
        parts = {"schema": spec.__dict__}
    else:
        loader = source.loader
        parts = {}
    resolved = resolve_path(source, path)
    parts = {"dataset": name, "config": _key_config(config), "max_bad_rows": max_bad_rows, **parts}
    return _cached(f"{name}-{config.task}", parts, input_files(resolved), use_cache, lambda: prepare(loader(resolved, max_bad_rows), config))


def _key_config(config: PrepareConfig) -> dict:
    """The config as a cache key; options at their off value are left out, so entries made before they existed stay valid."""
    off = {"history": 0, "split": "random", "negatives": 0}
    return {k: v for k, v in config.__dict__.items() if not (k in off and v == off[k])}


def _cached(prefix: str, parts: dict, files: list[Path], use_cache: bool, build: Callable[[], PreparedData]) -> PreparedData:
    """`build()`, or its cached result keyed by `parts` and the checksums of `files`."""
    if not use_cache:
        return build()
    cache_dir = default_cache_dir()
    entry = cache_dir / "prepared" / f"{prefix}-{cache_key(parts, files, cache_dir)}.npz"
    if entry.exists():
        return load_prepared(entry)
    data = build()
    save_prepared(data, entry)
    return data
