"""Streaming CTR input: rows arrive in chunks, so a file larger than memory trains with bounded memory.

Two passes over the source. The first counts every field's values on the training rows
(exactly: a count per id for generated data, a count per distinct value for text, pruned
to the most frequent `max_distinct` when a field has more) and builds vocabularies ranked
as `fit_vocab` ranks them (descending count, ties by value; below `min_count` -> OOV id 0).
The second encodes chunk by chunk for training. Validation and test are the stream's tail:
the last `eval_rows` rows are test, the `eval_rows` before them validation (each at most a
tenth of the stream), so they are later in time than every training row and bounded in size.

Online mode (`raw_ids`) skips the counting pass: every value becomes a 62-bit id by a seeded hash
(`embslim.embeddings.hashing.mix`), so ids arrive that no pass has seen, as in a production log.

Sources: `synthetic_chunks` (the `synthetic-criteo` generator drawn chunk by chunk, any
length, with optional drift of which ids are popular) and `text_chunks` (Criteo/Avazu text
through the pyarrow block reader, with its row accounting).

Huge id spaces: a generated field of more than `max_dense_ids` ids (`synthetic-criteo-1e8` has one
of 10^8) is not counted. A count per id would cost 8 bytes per possible id (and its ranking as much
again), so its ids map one to one to rows (row id + 1; row 0, the OOV row, stays unused) and its
counts are unknown (read as zeros, in a zero-byte array): hashed and factored tables (hash, qr, robe,
tt) never read counts; frequency-driven methods (mde, dnis blocks) get no frequencies for it. The
generator draws such a field's ids and planted vectors without a table per id either (see `synthetic_chunks`).
"""
from __future__ import annotations

from collections import deque
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterator

import numpy as np
import pyarrow as pa

from embslim.data.arrow_reader import read_blocks
from embslim.data.fields import FieldSpec
from embslim.data.reader import ReadReport
from embslim.data.synthetic import SyntheticConfig
from embslim.errors import ConfigError, DataError


@dataclass(frozen=True)
class StreamConfig:
    chunk_rows: int = 262_144  # rows per generated chunk (text: pyarrow's blocks of `block_bytes`)
    block_bytes: int = 32 << 20
    eval_rows: int = 100_000  # rows of validation and of test each (the stream's tail), at most a tenth of the stream each
    min_count: int = 1
    max_distinct: int = 1_000_000  # per text field: distinct values counted exactly up to twice this, then pruned to it
    max_dense_ids: int = 1 << 24  # generated fields of more ids are not counted: ids map one to one to rows
    drift: float = 0.0  # generated data: share of each field's ids by which popularity shifts over the whole stream


@dataclass(eq=False)
class Chunk:
    """Rows of a stream: labels, and per field (distinct values or None, codes).

    With values None the codes are the ids themselves (generated data, ids in [0, cardinality)).
    """

    label: np.ndarray
    fields: dict[str, tuple[pa.Array | None, np.ndarray]]

    def __len__(self) -> int:
        return len(self.label)

    def rows(self, start: int, stop: int) -> "Chunk":
        return Chunk(self.label[start:stop], {k: (v, c[start:stop]) for k, (v, c) in self.fields.items()})


@dataclass(eq=False)
class StreamSource:
    """A re-readable stream: `chunks()` starts it again; `report` accounts for text rows."""

    name: str
    field_names: list[str]
    chunks: Callable[[], Iterator[Chunk]]
    cardinalities: dict[str, int] | None = None  # generated data: ids are < cardinality
    report: ReadReport | None = None
    max_bad_rows: float = 0
    info: dict = field(default_factory=dict)


class FieldCounter:
    """Training occurrences of one field's values; exact below `max_distinct` distinct values.

    A generated field of more than `max_dense_ids` ids is not counted (`identity`): see the module's notes.
    """

    def __init__(self, cardinality: int | None, max_distinct: int, max_dense_ids: int = 1 << 24) -> None:
        self.identity = cardinality if cardinality is not None and cardinality > max_dense_ids else None
        self.dense = np.zeros(cardinality, dtype=np.int64) if cardinality is not None and self.identity is None else None
        self.sparse: dict[str, int] = {}
        self.max_distinct = max_distinct
        self.pruned_at = 0  # values counted at most this many times may have been dropped

    def add(self, values: pa.Array | None, codes: np.ndarray) -> None:
        if self.identity is not None:
            return
        if self.dense is not None:
            self.dense += np.bincount(codes, minlength=len(self.dense))
            return
        counts = np.bincount(codes, minlength=len(values))
        for value, count in zip(values.to_pylist(), counts.tolist()):
            if count:
                self.sparse[value] = self.sparse.get(value, 0) + count
        if len(self.sparse) > 2 * self.max_distinct:
            self._prune()

    def _prune(self) -> None:
        counts = np.fromiter(self.sparse.values(), dtype=np.int64, count=len(self.sparse))
        threshold = int(np.partition(counts, len(counts) - self.max_distinct)[len(counts) - self.max_distinct])
        self.pruned_at = max(self.pruned_at, threshold - 1)
        self.sparse = {v: c for v, c in self.sparse.items() if c >= threshold}

    def vocabulary(self, name: str, min_count: int) -> "StreamVocab":
        """Ids by descending count, ties by value (as `fit_vocab`); counts below min_count -> OOV."""
        if self.identity is not None:
            unknown = np.broadcast_to(np.zeros(1, dtype=np.int64), (self.identity + 1,))  # counts not kept: zero bytes
            return StreamVocab(FieldSpec(name, self.identity + 1, unknown), None, None, None)
        if self.dense is not None:
            cnt = self.dense
            kept = np.flatnonzero(cnt >= max(min_count, 1))
            ranked = kept[np.argsort(-cnt[kept], kind="stable")]
            lookup = np.zeros(len(cnt), dtype=np.int64)
            lookup[ranked] = np.arange(1, len(ranked) + 1)
            counts, seen, oov = cnt[ranked], int((cnt > 0).sum()), int(cnt.sum() - cnt[ranked].sum())
            return StreamVocab(FieldSpec(name, len(ranked) + 1, np.concatenate([[oov], counts]).astype(np.int64)), lookup, None, seen)
        items = sorted(self.sparse.items(), key=lambda kv: (-kv[1], kv[0]))
        kept = [(v, c) for v, c in items if c >= max(min_count, 1)]
        oov = sum(c for _, c in items) - sum(c for _, c in kept)
        counts = np.array([oov] + [c for _, c in kept], dtype=np.int64)
        ids = {v: i + 1 for i, (v, _) in enumerate(kept)}
        return StreamVocab(FieldSpec(name, len(kept) + 1, counts), None, ids, len(items))


@dataclass(eq=False)
class StreamVocab:
    spec: FieldSpec
    lookup: np.ndarray | None  # dense: id per generated id
    ids: dict[str, int] | None  # text: id per value
    seen_values: int | None  # None: not counted (a generated field of more than max_dense_ids ids)

    def encode(self, values: pa.Array | None, codes: np.ndarray) -> np.ndarray:
        if self.lookup is None and self.ids is None:  # uncounted: generated id + 1
            return codes.astype(np.int64) + 1
        if self.lookup is not None:
            return self.lookup[codes]
        mapped = np.fromiter((self.ids.get(v, 0) for v in values.to_pylist()), dtype=np.int64, count=len(values))
        return mapped[codes]


@dataclass(eq=False)
class StreamPlan:
    """What the counting pass found: rows, the tail split, vocabularies."""

    rows: int
    train_rows: int
    eval_rows: int
    vocabs: dict[str, StreamVocab]
    pruned_at: dict[str, int]
    count_seconds: float

    @property
    def fields(self) -> list[FieldSpec]:
        return [v.spec for v in self.vocabs.values()]


def count_pass(source: StreamSource, config: StreamConfig) -> StreamPlan:
    """Read the stream once: count rows, and values on every row before the held-out tail."""
    import time

    start = time.perf_counter()
    cards = source.cardinalities or {}
    counters = {n: FieldCounter(cards.get(n), config.max_distinct, config.max_dense_ids) for n in source.field_names}
    pending: deque[Chunk] = deque()  # chunks that may still fall in the tail
    pending_rows, rows = 0, 0
    for chunk in source.chunks():
        pending.append(chunk)
        pending_rows += len(chunk)
        rows += len(chunk)
        while pending_rows - len(pending[0]) >= 2 * config.eval_rows:
            oldest = pending.popleft()
            pending_rows -= len(oldest)
            _count(counters, oldest)
    if source.report is not None:
        source.report.check(source.max_bad_rows)
    eval_rows = min(config.eval_rows, rows // 10)
    if eval_rows == 0:
        raise DataError(f"stream {source.name!r} has {rows} rows: too few to hold out validation and test rows")
    train_rows = rows - 2 * eval_rows
    first = rows - pending_rows
    for chunk in pending:
        if first < train_rows:
            _count(counters, chunk.rows(0, train_rows - first))
        first += len(chunk)
    vocabs = {n: c.vocabulary(n, config.min_count) for n, c in counters.items()}
    return StreamPlan(rows, train_rows, eval_rows, vocabs, {n: c.pruned_at for n, c in counters.items()}, time.perf_counter() - start)


def _count(counters: dict[str, FieldCounter], chunk: Chunk) -> None:
    for name, (values, codes) in chunk.fields.items():
        counters[name].add(values, codes)


def encode_chunk(plan: StreamPlan, chunk: Chunk) -> np.ndarray:
    """[rows, fields] ids of a chunk under the plan's vocabularies."""
    from embslim.data.encode import stack_columns

    return stack_columns([plan.vocabs[n].encode(*chunk.fields[n]) for n in plan.vocabs], len(chunk))


def split_pass(source: StreamSource, plan: StreamPlan) -> Iterator[tuple[str, Chunk]]:
    """The stream again, as ("train" | "val" | "test", chunk) pieces in order."""
    bounds = [("train", plan.train_rows), ("val", plan.train_rows + plan.eval_rows), ("test", plan.rows)]
    first = 0
    for chunk in source.chunks():
        start = 0
        for name, stop in bounds:
            a, b = max(start, 0), min(len(chunk), stop - first)
            if b > a:
                yield name, chunk.rows(a, b)
                start = b
        first += len(chunk)


# -- raw ids (online mode) ---------------------------------------------------------------------------------------

RAW_ID_BITS = 62  # below int64's sign bit and its max (collisionless's free-slot key), so any id is a valid key


def hash_values(values: pa.Array | None, codes: np.ndarray, seed: int = 0) -> np.ndarray:
    """62-bit ids of a field's cells: generated integer ids (values None) or text values (the distinct values of
    a block, `codes` indexing them), hashed with the seeded `mix` of embslim.embeddings.hashing.

    Integer ids are mixed once (mix is a bijection on 64 bits, so distinct ids collide only by the 62-bit mask);
    a text value's UTF-8 bytes are folded 8 at a time, starting from its length. Equal values hash equally in
    every chunk and every field; the tables keep fields apart."""
    import torch

    from embslim.embeddings.hashing import mix

    salt = torch.tensor(2 * seed + 1, dtype=torch.int64)  # odd: id 0 and the empty string do not hash to 0
    if values is None:
        h = mix(torch.from_numpy(np.ascontiguousarray(codes, dtype=np.int64)), salt)
    else:
        data = [v.encode() for v in values.cast(pa.string()).fill_null("").to_pylist()]
        width = -(-max((len(b) for b in data), default=0) // 8) * 8
        packed = np.frombuffer(b"".join(b.ljust(width, b"\0") for b in data), dtype="<i8").reshape(len(data), width // 8)
        h = mix(torch.tensor([len(b) for b in data], dtype=torch.int64), salt)
        for word in torch.from_numpy(packed.copy()).unbind(1):
            h = mix(h ^ word, salt)
        h = h[torch.from_numpy(np.ascontiguousarray(codes, dtype=np.int64))]
    return (h & ((1 << RAW_ID_BITS) - 1)).numpy()


def raw_ids(chunk: Chunk, names: list[str], seed: int = 0) -> np.ndarray:
    """[rows, fields] 62-bit hashed ids of a chunk, no vocabulary: see `hash_values`."""
    out = np.empty((len(chunk), len(names)), dtype=np.int64)
    for j, name in enumerate(names):
        out[:, j] = hash_values(*chunk.fields[name], seed=seed)
    return out


def rechunk(source: StreamSource, rows: int) -> StreamSource:
    """The source, its chunks now at most `rows` rows (larger ones cut in order, none merged); returned for chaining."""
    inner = source.chunks

    def chunks() -> Iterator[Chunk]:
        for chunk in inner():
            for start in range(0, len(chunk), rows):
                yield chunk.rows(start, start + rows)

    source.chunks = chunks
    return source


# -- sources -----------------------------------------------------------------------------------------------------

def synthetic_chunks(config: SyntheticConfig, chunk_rows: int, drift: float = 0.0) -> StreamSource:
    """The planted-model generator drawn chunk by chunk: the same model for every chunk, rows
    drawn with a per-chunk seed, so the stream is reproducible at any length in bounded memory.

    `drift` > 0 rotates each field's popularity over the stream: at position t (0..1) the
    k-th most popular value is id (k + drift * t * n) mod n, so hot ids of the end were rare
    at the start (and their latent vectors, fixed per id, are new to the model).
    """
    if len(config.cardinalities) != len(config.ranks):
        raise ConfigError("cardinalities and ranks need one entry per field")
    if not 0 <= drift <= 1:
        raise ConfigError(f"--drift must be in [0, 1], got {drift}")
    names = [f"field{i}" for i in range(len(config.ranks))]
    rng = np.random.default_rng(config.seed)
    vectors, weights, cdfs = [], [], []
    for f, (n, r) in enumerate(zip(config.cardinalities, config.ranks)):
        if n > HASHED_IDS:  # drawn and given vectors per id on the fly (`hashed_field`), no table of n entries
            for table in (vectors, weights, cdfs):
                table.append(None)
            continue
        scale = np.arange(1, n + 1, dtype=np.float64) ** -config.tail_decay
        vectors.append((rng.standard_normal((n, max(r, 1))) * scale[:, None] * (r > 0)).astype(np.float32))
        weights.append((rng.standard_normal(n) * 0.5 * (r > 0) * scale).astype(np.float32))
        p = np.arange(1, n + 1, dtype=np.float64) ** -config.zipf
        cdfs.append(np.cumsum(p / p.sum()))

    def draw(index: int, rows: int, position: float) -> tuple[np.ndarray, dict[str, np.ndarray]]:
        crng = np.random.default_rng([config.seed, 1, index])
        z = np.zeros(rows)
        total = np.zeros((rows, max(max(config.ranks), 1)), dtype=np.float32)
        ids = {}
        for f, name in enumerate(names):
            n = config.cardinalities[f]
            if cdfs[f] is None:
                rank = zipf_rank(crng.random(rows), n, config.zipf)
                ids[name] = (rank + int(drift * position * n)) % n
                u, w = hashed_field(config, f, ids[name])
                z += w
                total[:, : u.shape[1]] += u
                z -= 0.5 * np.einsum("ij,ij->i", u, u)
                continue
            rank = np.minimum(np.searchsorted(cdfs[f], crng.random(rows)), n - 1)
            ids[name] = (rank + int(drift * position * n)) % n
            u = vectors[f][ids[name]]
            z += weights[f][ids[name]]
            total[:, : u.shape[1]] += u
            z -= 0.5 * np.einsum("ij,ij->i", u, u)
        z += 0.5 * np.einsum("ij,ij->i", total, total)
        return z, ids

    calib, _ = draw(1 << 40, min(100_000, config.rows), 0.0)  # a calibration draw no chunk uses
    mean, std = float(calib.mean()), float(calib.std()) or 1.0
    bias = np.log(config.base_rate / (1 - config.base_rate))

    def chunks() -> Iterator[Chunk]:
        for index, start in enumerate(range(0, config.rows, chunk_rows)):
            rows = min(chunk_rows, config.rows - start)
            z, ids = draw(index, rows, start / config.rows)
            prob = 1 / (1 + np.exp(-(bias + config.logit_std * (z - mean) / std)))
            label = (np.random.default_rng([config.seed, 2, index]).random(rows) < prob).astype(np.float32)
            yield Chunk(label, {name: (None, ids[name]) for name in names})

    return StreamSource("synthetic", names, chunks, dict(zip(names, config.cardinalities)),
                        info={"generator": "embslim.data.stream.synthetic_chunks", "drift": drift, "rows": config.rows})


HASHED_IDS = 1 << 24  # generated fields of more ids get their ids and planted vectors without tables


def zipf_rank(u: np.ndarray, n: int, exponent: float) -> np.ndarray:
    """Popularity ranks in [0, n) with P(k) roughly proportional to (k+1)^-exponent: the inverse CDF of the
    continuous power law on [1, n+1] at uniforms `u` (O(1) memory, unlike a table of n probabilities)."""
    if abs(exponent - 1.0) < 1e-9:
        x = np.exp(u * np.log(n + 1.0))
    else:
        a = 1.0 - exponent
        x = ((float(n + 1) ** a - 1.0) * u + 1.0) ** (1.0 / a)
    return np.minimum(x.astype(np.int64) - 1, n - 1).clip(min=0)


def _mix(x: np.ndarray) -> np.ndarray:
    """splitmix64's finaliser: 64 well-mixed bits per uint64."""
    x = (x ^ (x >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
    x = (x ^ (x >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
    return x ^ (x >> np.uint64(31))


def hashed_normal(key: int, ids: np.ndarray, width: int) -> np.ndarray:
    """[len(ids), width] standard normals that depend only on (key, id, column): a counter-based draw."""
    base = _mix(ids.astype(np.uint64)[:, None] * np.uint64(2 * width + 1) + np.arange(width, dtype=np.uint64) * np.uint64(2)
                + np.uint64(key * 0x9E3779B97F4A7C15 % 2**64))
    u1 = ((_mix(base) >> np.uint64(11)).astype(np.float64) + 0.5) / 2.0**53
    u2 = ((_mix(base ^ np.uint64(0xD1B54A32D192ED03)) >> np.uint64(11)).astype(np.float64) + 0.5) / 2.0**53
    return (np.sqrt(-2.0 * np.log(u1)) * np.cos(2 * np.pi * u2)).astype(np.float32)


def hashed_field(config: SyntheticConfig, f: int, ids: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The planted vectors and weights of a huge field's `ids`, as the table path draws them (normal, scaled by
    (id+1)^-tail_decay, zero for rank 0) but computed per id from a hash, so nothing of size n is stored."""
    r = config.ranks[f]
    scale = ((ids + 1.0) ** -config.tail_decay).astype(np.float32) * (r > 0)
    key = (config.seed * 1_000_003 + f) * 2
    vec = hashed_normal(key, ids, max(r, 1)) * scale[:, None]
    weight = hashed_normal(key + 1, ids, 1)[:, 0] * 0.5 * scale
    return vec, weight


def text_chunks(dataset: str, path: Path, max_bad_rows: float = 0, block_bytes: int | None = None) -> StreamSource:
    """Criteo or Avazu text as a stream of pyarrow blocks; each pass accounts for every row afresh."""
    from embslim.data.avazu import COLUMNS as AVAZU_COLUMNS
    from embslim.data.avazu import OUTPUT_FIELDS, avazu_block
    from embslim.data.criteo import CAT_FIELDS, COLUMNS, INT_FIELDS, criteo_block, find_criteo_file

    if dataset == "criteo":
        file, names, columns, sep, header, keep, parse = find_criteo_file(path), INT_FIELDS + CAT_FIELDS, COLUMNS, "\t", False, None, criteo_block
    elif dataset == "avazu":
        file = next((path / n for n in ("train.csv", "train") if (path / n).exists()), path / "train.csv") if path.is_dir() else path
        names, columns, sep, header, keep, parse = OUTPUT_FIELDS, AVAZU_COLUMNS, ",", True, AVAZU_COLUMNS[1:], avazu_block
    else:
        raise ConfigError(f"--stream reads criteo, avazu or synthetic-criteo/synthetic, not {dataset!r}")
    source = StreamSource(dataset, names, lambda: iter(()), report=ReadReport(str(file)), max_bad_rows=max_bad_rows)

    def chunks() -> Iterator[Chunk]:
        source.report = ReadReport(str(file))
        for block in read_blocks(file, columns, sep, source.report, header=header, keep=keep, block_bytes=block_bytes):
            label, fields = parse(block, source.report)
            yield Chunk(label, fields)

    source.chunks = chunks
    return source
