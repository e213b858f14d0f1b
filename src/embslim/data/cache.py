"""Cache of prepared datasets keyed by the preparation config and input checksums.

A second run with the same inputs and options loads NumPy arrays instead of
re-parsing text. Checksums are memoised by (path, size, mtime) so large inputs
are hashed once. Writes are atomic: a killed run never leaves a half-written entry.
"""
from __future__ import annotations

import hashlib
import json
import os
import tempfile
from pathlib import Path

import numpy as np

from embslim.data.fields import FeatureTable, FieldSpec, PreparedData

FORMAT_VERSION = 3  # 2: top-k entries store each row's time rank (`order`); 3: and its timestamp (`times`) where real


def default_cache_dir() -> Path:
    return Path(os.environ.get("EMBSLIM_CACHE_DIR", Path.home() / ".cache" / "embslim"))


def file_checksum(path: Path, memo_dir: Path) -> str:
    """sha256 of a file, memoised on (resolved path, size, mtime)."""
    st = path.stat()
    memo_file = memo_dir / "checksums.json"
    memo = json.loads(memo_file.read_text()) if memo_file.exists() else {}
    key = f"{path.resolve()}|{st.st_size}|{st.st_mtime_ns}"
    if key not in memo:
        h = hashlib.sha256()
        with open(path, "rb") as fh:
            for chunk in iter(lambda: fh.read(1 << 20), b""):
                h.update(chunk)
        memo[key] = h.hexdigest()
        atomic_write_bytes(memo_file, json.dumps(memo, indent=0).encode())
    return memo[key]


def input_files(path: Path) -> list[Path]:
    """The files a loader may read: the file itself, or the regular files of a folder."""
    if path.is_file():
        return [path]
    return sorted(p for p in path.iterdir() if p.is_file() and not p.name.startswith("."))


def cache_key(parts: dict, files: list[Path], cache_dir: Path) -> str:
    digest = {"format": FORMAT_VERSION, **parts, "inputs": {p.name: file_checksum(p, cache_dir) for p in files}}
    return hashlib.sha256(json.dumps(digest, sort_keys=True, default=str).encode()).hexdigest()[:24]


def atomic_write_bytes(path: Path, data: bytes) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
    with os.fdopen(fd, "wb") as fh:
        fh.write(data)
    os.replace(tmp, path)


def save_prepared(data: PreparedData, path: Path) -> None:
    """Write `data` as one .npz (arrays) with its metadata inside, atomically."""
    arrays = {"ids": data.table.ids, "label": data.table.label}
    arrays.update({f"bag:{k}": v for k, v in data.table.bags.items()})
    arrays.update({f"seq:{k}": v for k, v in data.table.sequences.items()})
    arrays.update({f"split:{k}": v for k, v in data.splits.items()})
    arrays.update({f"counts:{f.name}": f.counts for f in data.table.fields})
    if data.order is not None:
        arrays["order"] = data.order
    if data.times is not None:
        arrays["times"] = data.times
    meta = {
        "name": data.name, "task": data.task, "user_field": data.user_field, "item_field": data.item_field,
        "info": data.info, "sequence_fields": data.table.sequence_fields,
        "fields": [{"name": f.name, "cardinality": f.cardinality, "multivalued": f.multivalued, "pooling": f.pooling, "side": f.side} for f in data.table.fields],
    }
    arrays["meta"] = np.frombuffer(json.dumps(meta).encode(), dtype=np.uint8)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".npz")
    os.close(fd)
    np.savez(tmp, **arrays)
    os.replace(tmp, path)


def load_prepared(path: Path) -> PreparedData:
    from embslim.data.encode import item_table

    with np.load(path) as z:
        meta = json.loads(z["meta"].tobytes().decode())
        fields = [FieldSpec(counts=z[f"counts:{m['name']}"], **m) for m in meta["fields"]]
        bags = {k[4:]: z[k] for k in z.files if k.startswith("bag:")}
        splits = {k[6:]: z[k] for k in z.files if k.startswith("split:")}
        sequences = {k[4:]: z[k] for k in z.files if k.startswith("seq:")}
        table = FeatureTable(fields, z["ids"], bags, z["label"], sequences, meta.get("sequence_fields", {}))
        order = z["order"] if "order" in z.files else None
        times = z["times"] if "times" in z.files else None
    data = PreparedData(meta["name"], meta["task"], table, splits, meta["user_field"], meta["item_field"], info=meta["info"], order=order,
                        times=times)
    if data.task == "topk":
        data.items = item_table(table, data.item_field)
    return data
