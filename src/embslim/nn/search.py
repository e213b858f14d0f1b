"""DNIS in your own training loop: search the tables' dimensions, prune them in place, retrain.

    tables = embslim.nn.EmbeddingBagCollection(configs, method="dnis", blocks=6)   # inside your model
    search = embslim.nn.DNISSearch(model, loss_fn)          # loss_fn(batch) -> loss (per row or mean)
    opt = torch.optim.Adam(search.parameters())             # everything but the selection layer
    for batch, val_batch in ...:                            # your loop, your data
        opt.zero_grad(); loss_fn(batch).mean().backward(); opt.step()
        search.step(val_batch)                              # one alpha step on validation loss
    layout = search.prune(budget_bytes, val_batches)        # the kept dimensions; tables now pruned
    opt = torch.optim.Adam(search.parameters())             # rebuild: the tables' parameters changed
    ...                                                     # retrain as before

The search is `embslim search`'s: alpha per (frequency block, dimension) scales the tables,
trained on validation loss after every training step (`embslim.search.dnis.AlphaUpdate`, the
same code the trainer callback runs); pruning ranks pairs by the validation loss their removal
costs (`embslim.search.importance`), spends what the evidence leaves by block frequency, and
keeps the pairs that fit the budget exactly (`embslim.search.prune`). As in `embslim search`,
train the model with alpha left alone first (alpha = 1 is the full model), then search.
Unlike it, the tables are not rotated to principal axes first: that needs to know how your
network uses the vectors.
"""
from __future__ import annotations

from typing import Any, Callable, Iterable, Iterator

import numpy as np
import torch
from torch import nn

from embslim.embeddings import EmbeddingConfig, FeatureEmbedding
from embslim.embeddings.base import Stage, storage_bytes
from embslim.embeddings.blockwise import BlockwiseEmbedding, BlockwiseSettings, layout_to_json
from embslim.embeddings.dnis import DNISEmbedding
from embslim.errors import ConfigError
from embslim.nn.tables import TableSet, budget_in_bytes
from embslim.search.dnis import AlphaUpdate, DNISConfig, layout_for_budget, pruned_values, rank_pairs
from embslim.search.importance import drop_increase

LossFn = Callable[[Any], torch.Tensor]


class DNISSearch:
    """DNIS over the embslim tables (method="dnis") inside `model`, driven from a plain training loop.

    `model`: any module holding exactly one embslim table set built with method="dnis" (an
    `embslim.nn.EmbeddingBagCollection`, `EmbeddingBag` or `Embedding`, or the model around it);
    it is put in eval mode while pruning measures losses. `loss_fn(batch)`: the model's loss on a
    batch of yours, per row (reduction="none") or its mean; `step` and `prune` also take a
    zero-argument callable in place of a batch. `config`: the search settings of `embslim search`
    (blocks are the tables' own, set where they are built; `align`, `prune_during_search` and
    `fine_tune_from` do not apply here).
    """

    def __init__(self, model: nn.Module, loss_fn: LossFn | None = None, config: DNISConfig = DNISConfig()) -> None:
        if config.prune_during_search or config.threshold is not None:
            raise ConfigError("DNISSearch prunes once, to a budget: prune_during_search and threshold are `embslim search` options")
        if config.fine_tune_from == "full":
            raise ConfigError("DNISSearch retrains from the searched tables: fine_tune_from='full' is an `embslim search` option")
        sets = [m for m in model.modules() if isinstance(m, TableSet) and isinstance(m.embedding, DNISEmbedding)]
        if len(sets) != 1:
            raise ConfigError(f"DNISSearch needs exactly one embslim table set built with method='dnis' in the model, found {len(sets)}"
                              + ("; put the tables in one embslim.nn.EmbeddingBagCollection so one budget covers them" if sets else ""))
        self.model, self.loss_fn, self.config = model, loss_fn, config
        self.tables: TableSet = sets[0]
        self.search: DNISEmbedding = self.tables.embedding
        self.update = AlphaUpdate(self.search, config)
        self.layout: dict | None = None
        self.budget_bytes: int | None = None  # the budget prune() met, in bytes

    @property
    def pruned(self) -> bool:
        return self.layout is not None

    def _loss(self, val: Any) -> torch.Tensor:
        if callable(val):
            return val()
        if self.loss_fn is None:
            raise ConfigError("pass loss_fn to DNISSearch, or a zero-argument callable returning the validation loss")
        return self.loss_fn(val)

    def step(self, val: Any) -> float:
        """One alpha step on the validation loss of `val` (a batch for `loss_fn`, or a callable giving the
        loss); call it once per training step, after the optimiser's step. Returns the validation loss."""
        if self.pruned:
            raise ConfigError("the search is over: prune() has already converted the tables")
        self.tables.finish_step()  # the training step before this one is complete
        alpha = self.search.alpha
        alpha.requires_grad_(True)
        try:
            loss = self._loss(val).mean()
            self.update.step(loss)
        finally:
            alpha.requires_grad_(False)
            self.tables.forget_backward()
        return float(loss.detach())

    def prune(self, budget_bytes: int | float, val: Iterable[Any] | Callable[[], torch.Tensor] | None = None) -> dict:
        """Prune to `budget_bytes` (bytes, or a fraction <= 1 of the fp32 tables) and convert the tables in
        place to the pruned mixed-dimension (blockwise) tables, started from the searched e * alpha
        (`DNISConfig.fine_tune=False`: fresh ones). Rebuild the optimiser afterwards (`parameters()`).

        `val`: the validation batches the loss of each (block, dimension) is measured on (each through
        `loss_fn`; per-row losses give the tightest confidence bounds), or a callable returning the
        per-row losses of one fixed validation set; not needed with `DNISConfig(score="magnitude")`.
        Returns the layout in `layout.json`'s shape.
        """
        if self.pruned:
            raise ConfigError("prune() was already called: the tables are pruned")
        emb, width = self.search, self.search.width
        budget = budget_in_bytes(budget_bytes, self.full_bytes())
        if self.config.score == "loss" and val is None:
            raise ConfigError("prune() ranks dimensions by validation loss: pass the validation batches (or a per-row loss callable)")
        lower = self._measure(val) if self.config.score == "loss" else None
        layouts = layout_for_budget(emb, budget, self.config, rank_pairs(emb, self.config, lower))
        slim = BlockwiseEmbedding(emb.fields, layouts, width, self.tables.config.init_std, self.config.precision).to(emb.alpha.device)
        if self.config.fine_tune:
            slim.load_block_values(pruned_values(emb, layouts))
        self.layout, self.budget_bytes = layout_to_json(layouts, width, self.config.precision), budget
        slim.settings = BlockwiseSettings(self.layout)
        self.tables.convert(slim, EmbeddingConfig("blockwise", width, None, None, self.tables.config.init_std, {"layout": self.layout}))
        return self.layout

    def _measure(self, val: Iterable[Any] | Callable[[], torch.Tensor]) -> dict[str, np.ndarray]:
        """Lower bounds of the validation loss increase of dropping each pair, with the model in eval mode."""
        if callable(val):
            measure = val
        else:
            batches = list(val)
            if not batches:
                raise ConfigError("prune() needs at least one validation batch")

            def measure() -> torch.Tensor:
                return torch.cat([self._loss(b).reshape(-1) for b in batches])

        def losses() -> np.ndarray:
            return measure().detach().double().cpu().numpy()

        modes = {m: m.training for m in self.model.modules()}
        self.model.eval()
        try:
            with torch.no_grad():
                return drop_increase(self.search, losses, {f.name: None for f in self.search.fields}, self.config.noise_z)
        finally:
            for m, training in modes.items():
                m.training = training

    def full_bytes(self) -> int:
        """Bytes of the searched tables at full width in fp32: what a fractional budget is a fraction of."""
        return storage_bytes(sum(f.cardinality for f in self.search.fields) * self.search.width, "fp32")

    def parameters(self) -> Iterator[nn.Parameter]:
        """What the optimiser trains: every parameter of the model but the selection layer (alpha);
        after `prune`, the pruned tables' values in place of the searched tables. Call again after prune."""
        search = {id(p) for p in self.search.search_parameters()}
        return (p for p in self.model.parameters() if id(p) not in search)

    @property
    def embedding(self) -> FeatureEmbedding:
        """The tables as they are now: the DNIS layer while searching, the blockwise tables after prune."""
        return self.tables.embedding

    def memory_bytes(self, stage: Stage = "serve") -> int:
        """Exact bytes of the tables as they are now (after prune: what the budget was for)."""
        return self.tables.memory_bytes(stage)

    def export(self, path) -> None:
        """Write the tables' servable artifact (`embslim.embeddings.load_artifact` reads it back)."""
        self.tables.served().export(path)
