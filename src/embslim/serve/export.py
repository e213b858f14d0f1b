"""`embslim export`: a trained run as an inference artifact that runs without embslim.

The artifact folder holds
- `embedding.safetensors`: the run's embedding artifact, byte for byte (its tensors are exactly
  `memory_bytes("serve")`; the file adds safetensors' 8-byte length and JSON header);
- `model.ts`: TorchScript of the lookup and the backbone. The embedding tensors are *inputs* of
  the program, not stored in it, so the table bytes live in one place; what the program stores
  is the backbone (MLP, aligners, biases) and any small constants the lookup baked in (reported);
- `manifest.json`: input order, tensor order, what the output is, and the bytes of every part;
- `serve.py`: a copy of `embslim.serve.runtime` (torch + safetensors only) that loads the folder.

Why TorchScript tracing: `torch.export` fails on the lookups whose shapes depend on data
(blockwise/mde, collisionless, mpe use nonzero/unique-style gathers and Python ints read from
tensors), while tracing records the tensor operations every method runs. Tracing freezes Python
control flow, so every export is checked on batches of other sizes against the eager model and
refused (one-line error) when they differ. ONNX is not attempted (neither `onnx` nor `onnxscript`
is a dependency).
"""
from __future__ import annotations

import json
import shutil
import warnings
import zipfile
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

import numpy as np
import torch
from safetensors import safe_open
from safetensors.torch import load_file
from torch import nn

from embslim.embeddings.base import FeatureEmbedding, tensor_bytes
from embslim.embeddings.batch import SparseBatch
from embslim.embeddings.registry import load_artifact, method_info
from embslim.errors import ConfigError
from embslim.models import ModelOptions, Recommender, create_model
from embslim.serve import runtime

CHECK_SIZES = (1, 33)  # batch sizes the traced program is checked at, besides the one it was traced with
TRACE_SIZE = 8


@dataclass
class ExportSource:
    """What an export reads from a run folder."""

    path: Path
    results: dict
    embedding: Path
    checkpoint: Path


def _final_state(checkpoint: Path) -> dict:
    state = torch.load(checkpoint, weights_only=False)
    return state["best_state"] if state.get("best_state") is not None else state["model"]


def _backbone_checkpoint(path: Path, results: dict) -> Path | None:
    """The checkpoint holding the trained backbone: the run's own; for a converter without fine-tuning
    the full model's (conversion leaves the backbone as trained); for a slice without fine-tuning the source run's."""
    for candidate in (path / "checkpoint.pt", path / "full" / "checkpoint.pt"):
        if candidate.exists():
            return candidate
    source = results.get("slice", {}).get("source")
    if source:
        for candidate in (Path(source) / "checkpoint.pt", Path(source) / "full" / "checkpoint.pt", Path(source) / "search" / "checkpoint.pt"):
            if candidate.exists():
                return candidate
    return None


def read_source(path: Path) -> ExportSource:
    """The run in `path`, or a one-line ConfigError saying what is missing."""
    if not path.is_dir():
        raise ConfigError(f"run folder {path} does not exist")
    if (path / "report.json").exists() and not (path / "results.json").exists():
        raise ConfigError(f"{path} is an `embslim search` folder: export one of its trained runs, or `embslim slice` it first")
    if not (path / "results.json").exists():
        raise ConfigError(f"{path} is not a finished embslim run (no results.json)")
    results = json.loads((path / "results.json").read_text())
    if not (path / "embedding.safetensors").exists():
        raise ConfigError(f"{path} has no embedding.safetensors (the trained embedding to serve)")
    checkpoint = _backbone_checkpoint(path, results)
    if checkpoint is None:
        raise ConfigError(f"{path} has no checkpoint.pt (the trained backbone to serve)")
    return ExportSource(path, results, path / "embedding.safetensors", checkpoint)


def served_model(source: ExportSource) -> Recommender:
    """The trained model in eval mode, its embedding rebuilt from the artifact as it is served."""
    cfg = source.results["config"]
    embedding = load_artifact(source.embedding)
    history = source.results.get("data", {}).get("history")
    sequences = {"history": history["reads_table_of"]} if history else None
    state = _final_state(source.checkpoint)
    sides = {int(k.removeprefix("side_ids_")): v for k, v in state.items() if k.startswith("side_ids_")}  # behaviours' item-side ids
    try:
        model = create_model(cfg["model"], embedding, ModelOptions.from_dict(cfg.get("model_options", {})), cfg["task"],
                             sequences=sequences, item_rows=sides or None)
    except TypeError as err:
        raise ConfigError(f"model {cfg['model']!r} cannot be rebuilt without its training data, so it cannot be exported yet") from err
    backbone = {k: v for k, v in state.items() if not k.startswith("embedding.")}
    missing, unexpected = model.load_state_dict(backbone, strict=False)
    missing = [k for k in missing if not k.startswith("embedding.")]
    if missing or unexpected:
        raise ConfigError(f"{source.checkpoint} does not hold this model's backbone (missing {missing[:3]}, unexpected {unexpected[:3]})")
    return model.eval()


@contextmanager
def _reading(embedding: FeatureEmbedding, tensors: dict[str, torch.Tensor]) -> Iterator[None]:
    """Make `embedding`'s parameters and buffers named in `tensors` be those tensors for the duration of the block."""
    saved = []
    try:
        for key, value in tensors.items():
            owner_name, _, name = key.rpartition(".")
            owner = embedding.get_submodule(owner_name)
            store = owner._parameters if name in owner._parameters else owner._buffers
            saved.append((store, name, store[name]))
            store[name] = value
        yield
    finally:
        for store, name, value in reversed(saved):
            store[name] = value


class _Program(nn.Module):
    """What is traced: ids (+ bags, sequences) and the embedding's artifact tensors in, the model's output out.

    The embedding is held outside the module tree, so none of its tensors is stored in the program: a
    method whose served module holds the artifact tensors as its parameters and buffers reads them from
    the inputs; any other (masked tables) is rebuilt from the input tensors by its own `load_artifact_tensors`.
    """

    def __init__(self, model: Recommender, artifact: Path, keys: list[str], bag_fields: list[str], sequences: list[str]) -> None:
        super().__init__()
        object.__setattr__(self, "served", model.embedding)  # not a submodule: its tensors are inputs, never stored
        del model._modules["embedding"]
        self.model = model
        self.artifact, self.keys, self.bag_fields, self.sequence_names = artifact, keys, bag_fields, sequences
        self.by_state = set(keys) - {runtime.JOINED} <= set(self.served.state_dict())

    def _embedding(self, tensors: dict[str, torch.Tensor]) -> FeatureEmbedding:
        if self.by_state:
            return self.served
        with safe_open(str(self.artifact), framework="pt") as fh:
            meta = json.loads(fh.metadata()["embslim"])
        info = method_info(meta["method"])
        module = info.cls.from_artifact_meta(self.served.fields, info.parse(meta["settings"]), meta)
        module.load_artifact_tensors(tensors)
        return module.eval()

    def forward(self, ids: torch.Tensor, bags: tuple, sequences: tuple, tensors: tuple) -> torch.Tensor:
        named = dict(zip(self.keys, tensors))
        joined = named.pop(runtime.JOINED, None)
        embedding = self._embedding(named)
        batch = SparseBatch(ids, {n: (bags[2 * i], bags[2 * i + 1]) for i, n in enumerate(self.bag_fields)}, ids.new_zeros(0),
                            dict(zip(self.sequence_names, sequences)))
        object.__setattr__(self.model, "embedding", embedding)
        embedding.use_joined_inputs(joined)
        try:
            with _reading(embedding, named if self.by_state else {}):
                return self.model(batch)
        finally:
            embedding.use_joined_inputs(None)
            object.__delattr__(self.model, "embedding")


def example_inputs(embedding: FeatureEmbedding, sequences: dict[str, int], size: int, seed: int, length: int = 5) -> tuple:
    """A batch of `size` rows in the program's input order: random ids of every field (bags of 0..3 values,
    sequences of 0..length ids padded with -1), including each field's first and last id."""
    rng = np.random.default_rng(seed)
    single = [f for f in embedding.fields if not f.multivalued]
    ids = np.stack([rng.integers(0, f.cardinality, size) for f in single], axis=1) if single else np.zeros((size, 0), dtype=np.int64)
    if size > 1:
        ids[0], ids[-1] = 0, [f.cardinality - 1 for f in single]
    bags: list[torch.Tensor] = []
    for f in embedding.fields:
        if f.multivalued:
            lengths = np.arange(size) % 4
            bags += [torch.from_numpy(rng.integers(0, f.cardinality, lengths.sum())), torch.from_numpy(np.r_[0, np.cumsum(lengths)])]
    seqs = []
    for field in sequences.values():
        card = embedding.fields[field].cardinality
        padded = rng.integers(0, card, (size, length))
        padded[np.arange(length)[None, :] >= (np.arange(size) % (length + 1))[:, None]] = -1
        seqs.append(torch.from_numpy(padded))
    return torch.from_numpy(ids).long(), tuple(bags), tuple(seqs)


def stored_tensor_bytes(path: Path) -> dict[str, int]:
    """Bytes of the tensors a saved TorchScript file stores: module parameters and buffers ("data") and
    constants the trace baked into the code ("constants": small index tensors a lookup computed)."""
    out = {"data": 0, "constants": 0}
    with zipfile.ZipFile(path) as archive:
        for info in archive.infolist():
            kind = info.filename.split("/")[-2] if info.filename.count("/") >= 2 else ""
            if kind in out:
                out[kind] += info.file_size
    return out


def safetensors_header_bytes(path: Path) -> int:
    """Bytes of a safetensors file besides its tensors: the 8-byte length and the JSON header."""
    with open(path, "rb") as fh:
        return 8 + int.from_bytes(fh.read(8), "little")


def export_run(run: Path, out: Path) -> dict:
    """Write the inference artifact of the run in `run` to `out`; returns the manifest (also out/manifest.json)."""
    source = read_source(run)
    model = served_model(source)
    embedding = model.embedding
    tensors = load_file(str(source.embedding))
    file_keys, joined = sorted(tensors), embedding.joined_inputs()
    tensors = runtime.join(tensors, joined)  # as the runtime lays them out
    keys = file_keys + ([runtime.JOINED] if joined else [])
    bag_fields = [f.name for f in embedding.fields if f.multivalued]
    sequences = dict(model.sequences)
    with torch.no_grad():
        references = [(inputs, model(SparseBatch(inputs[0], {n: (inputs[1][2 * i], inputs[1][2 * i + 1]) for i, n in enumerate(bag_fields)},
                                                 inputs[0].new_zeros(0), dict(zip(sequences, inputs[2])))))
                      for inputs in (example_inputs(embedding, sequences, n, seed=1 + n) for n in CHECK_SIZES)]
        program = _Program(model, source.embedding, keys, bag_fields, list(sequences))
        values = tuple(tensors[k] for k in keys)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            traced = torch.jit.trace(program, (*example_inputs(embedding, sequences, TRACE_SIZE, seed=0), values), check_trace=False,
                                    _store_inputs=False)
        for inputs, expected in references:
            got = traced(*inputs, values)
            if got.shape != expected.shape or not torch.allclose(got, expected, rtol=1e-5, atol=1e-6):
                raise ConfigError(f"embedding {embedding.method_name!r} with model {source.results['config']['model']!r} does not trace "
                                  f"faithfully (batch of {len(inputs[0])} rows differs from the trained model); it cannot be exported")
    out.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(source.embedding, out / runtime.EMBEDDING)
    with warnings.catch_warnings():  # deprecated in torch 2.13 in favour of torch.export, which fails on four methods (module doc)
        warnings.simplefilter("ignore", DeprecationWarning)
        torch.jit.save(traced, str(out / runtime.PROGRAM))
    shutil.copyfile(runtime.__file__, out / "serve.py")
    cfg = source.results["config"]
    stored = stored_tensor_bytes(out / runtime.PROGRAM)
    manifest = {
        "format": "embslim-export/1",
        "run": str(run),
        "method": embedding.method_name,
        "model": cfg["model"],
        "task": cfg["task"],
        "output": {"ctr": "logit", "rating": "rating"}.get(cfg["task"], "score"),
        "single_fields": [f.name for f in embedding.fields if not f.multivalued],
        "bag_fields": bag_fields,
        "sequences": list(sequences),
        "tensors": keys,
        "joined": joined,
        "bytes": {
            "embedding_tensors": sum(tensor_bytes(tensors[k]) for k in file_keys),
            "memory_bytes_serve": embedding.memory_bytes("serve"),
            "safetensors_header": safetensors_header_bytes(out / runtime.EMBEDDING),
            "embedding_file": (out / runtime.EMBEDDING).stat().st_size,
            "program_file": (out / runtime.PROGRAM).stat().st_size,
            "program_backbone_tensors": stored["data"],
            "program_constants": stored["constants"],
            "backbone_parameters": sum(tensor_bytes(t) for t in model.state_dict().values()),
        },
        "torch": torch.__version__,
    }
    (out / runtime.MANIFEST).write_text(json.dumps(manifest, indent=1))
    return manifest
