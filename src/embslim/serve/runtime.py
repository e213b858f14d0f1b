"""Load and run an `embslim export` folder with torch and safetensors only.

This file imports nothing from embslim: `embslim export` copies it into every artifact
folder as `serve.py`, so a serving process needs neither embslim nor its training code.

    from serve import ServedModel
    model = ServedModel("model/")
    scores = model(ids)                      # ids: [B, F] int64, one column per single-valued field
    scores = model(ids, bags={"genres": (values, offsets)})   # multi-valued fields, offsets [B+1]

The folder holds `embedding.safetensors` (the embedding's tensors, exactly as counted by
`memory_bytes("serve")`), `model.ts` (TorchScript: lookup and backbone, reading those
tensors as inputs) and `manifest.json` (field order, tensor order, bytes, and the tensors
the program also reads as one joined buffer).
"""
from __future__ import annotations

import json
import warnings
from pathlib import Path

import torch
from safetensors.torch import load_file

MANIFEST = "manifest.json"
EMBEDDING = "embedding.safetensors"
PROGRAM = "model.ts"
JOINED = "@joined"  # the program input holding the manifest's "joined" tensors back to back


def join(tensors: dict[str, torch.Tensor], names: list[str]) -> dict[str, torch.Tensor]:
    """Lay the named tensors out back to back in one buffer, each replaced by its view of it (no second copy), and
    add the buffer as `JOINED`: a program reads a row of any of them with one gather."""
    if not names:
        return tensors
    flat = torch.cat([tensors[n].reshape(-1) for n in names])
    at = 0
    for n in names:
        size = tensors[n].numel()
        tensors[n] = flat[at:at + size].view(tensors[n].shape)
        at += size
    return {**tensors, JOINED: flat}


class ServedModel:
    """An exported model: call it with a batch of ids, get one score per row (logit, rating or score, see `output`)."""

    def __init__(self, folder: str | Path) -> None:
        folder = Path(folder)
        self.manifest = json.loads((folder / MANIFEST).read_text())
        tensors = join(load_file(str(folder / EMBEDDING)), self.manifest.get("joined", []))
        self.tensors = tuple(tensors[k] for k in self.manifest["tensors"])
        with warnings.catch_warnings():  # torch 2.13 marks TorchScript deprecated; it still is the format every method traces to
            warnings.simplefilter("ignore", DeprecationWarning)
            self.program = torch.jit.load(str(folder / PROGRAM), map_location="cpu")
        self.program.eval()
        self.output = self.manifest["output"]

    @property
    def fields(self) -> list[str]:
        """Single-valued fields, in the column order of `ids`."""
        return list(self.manifest["single_fields"])

    @torch.no_grad()
    def __call__(self, ids: torch.Tensor, bags: dict | None = None, sequences: dict | None = None) -> torch.Tensor:
        """[B] scores of [B, F] int64 ids; `bags` maps each multi-valued field to (values, offsets[B+1]),
        `sequences` each behaviour sequence to [B, L] ids padded with -1."""
        bags, sequences = bags or {}, sequences or {}
        missing = [n for n in self.manifest["bag_fields"] if n not in bags] + [n for n in self.manifest["sequences"] if n not in sequences]
        if missing:
            raise ValueError(f"this model also needs inputs {missing}")
        bag_inputs = tuple(t for n in self.manifest["bag_fields"] for t in bags[n])
        seq_inputs = tuple(sequences[n] for n in self.manifest["sequences"])
        return self.program(ids, bag_inputs, seq_inputs, self.tensors)
