"""embslim.nn.DNISSearch: DNIS on a user's own model in a plain training loop, pruned in place to a budget."""
import importlib.util
import json
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

import embslim.nn as enn
from embslim.data import SyntheticConfig, load_dataset
from embslim.embeddings import EmbeddingConfig, load_artifact
from embslim.embeddings.blockwise import BlockwiseEmbedding, layout_bytes, layout_from_json
from embslim.embeddings.full import full_bytes
from embslim.errors import ConfigError
from embslim.models import ModelOptions
from embslim.search.dnis import DNISConfig
from embslim.search.pipeline import run_search
from embslim.search.report import dims_per_field, kept_dims_table
from embslim.train.run import RunConfig
from embslim.train.trainer import TrainConfig
from conftest import load_tiny

ROOT = Path(__file__).resolve().parents[1]


class UserDeepFM(nn.Module):
    """A user's model: plain torch around an embslim collection of DNIS tables, fed [rows, fields] ids."""

    def __init__(self, fields, dim: int, blocks: int, hidden: int = 8) -> None:
        super().__init__()
        self.names = [f.name for f in fields]
        self.tables = enn.EmbeddingBagCollection([enn.TableConfig(f.name, f.cardinality, dim, counts=f.counts) for f in fields],
                                                 method="dnis", blocks=blocks, init_std=0.01)
        self.linear = nn.Linear(len(fields) * dim, 1)
        self.deep = nn.Sequential(nn.Linear(len(fields) * dim, hidden), nn.ReLU(), nn.Dropout(0.1), nn.Linear(hidden, 1))

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        one = torch.ones(len(ids), dtype=torch.long)
        pooled = self.tables({n: {"values": ids[:, i], "lengths": one} for i, n in enumerate(self.names)})
        v = torch.stack([pooled[n] for n in self.names], dim=1)
        flat = v.flatten(1)
        return self.linear(flat).squeeze(1) + 0.5 * (v.sum(1).pow(2) - v.pow(2).sum(1)).sum(1) + self.deep(flat).squeeze(1)


def arrays(data, split: str) -> tuple[torch.Tensor, torch.Tensor]:
    table = data.split(split)
    return torch.from_numpy(table.ids).long(), torch.from_numpy(table.label).float()


def user_loop(data, dim: int, blocks: int, epochs: int, search_epochs: int, lr: float, seed: int,
              config: DNISConfig) -> tuple[UserDeepFM, enn.DNISSearch]:
    """Train (alpha = 1), then search: one alpha step on a validation batch after every training step."""
    torch.manual_seed(seed)
    rng = np.random.default_rng(seed)
    model = UserDeepFM(data.table.fields, dim, blocks)
    (x, y), (vx, vy) = arrays(data, "train"), arrays(data, "val")

    def loss_fn(batch):
        return F.binary_cross_entropy_with_logits(model(batch[0]), batch[1], reduction="none")

    search = enn.DNISSearch(model, loss_fn, config)
    opt = torch.optim.Adam(search.parameters(), lr=lr)
    val_order, cursor = rng.permutation(len(vy)), 0
    for epoch in range(epochs + search_epochs):
        order = rng.permutation(len(y))
        for start in range(0, len(y), 256):
            rows = order[start:start + 256]
            opt.zero_grad()
            loss_fn((x[rows], y[rows])).mean().backward()
            opt.step()
            if epoch >= epochs:
                if cursor >= len(val_order):
                    val_order, cursor = rng.permutation(len(vy)), 0
                val = val_order[cursor:cursor + 256]
                cursor += 256
                search.step((vx[val], vy[val]))
    return model, search


def val_batches(data) -> list:
    vx, vy = arrays(data, "val")
    return [(vx[s:s + 4096], vy[s:s + 4096]) for s in range(0, len(vy), 4096)]


def kept_per_field(layout: dict, fields) -> list[float]:
    layouts, _ = layout_from_json(layout)
    table = dims_per_field(kept_dims_table(layouts, {f.name: f.counts for f in fields}))
    return [table[f.name]["per_occurrence"] for f in fields]


def test_loop_search_keeps_the_dimensions_embslim_search_keeps_on_the_same_data_and_seed(tmp_path):
    """The issue's check. Planted ranks (6, 3, 1, 0), width 8, 35% of the bytes, evidence only (no fill):
    `embslim search` (its pipeline, principal-axis alignment included) and the loop both keep the floor of 1
    dimension for the noise field and 2.5+ for the rank-6 and rank-3 fields. Measured per-occurrence kept dims,
    seeds 0/1/2: pipeline [3.34 3.36 2.03 1], [3.71 3.02 2.01 1], [3.02 4.04 1.69 1] (run-to-run spread up to 1.02);
    loop [3.68 4.04 2.03 1], [4.33 3.36 2.03 1], [4.33 3.0 2.37 1]: loop minus pipeline at most 1.31, 0.68 at seed 0."""
    data = load_dataset("synthetic", "ctr", synthetic=SyntheticConfig(rows=50_000, cardinalities=(100,) * 4, ranks=(6, 3, 1, 0), seed=1))
    fields, dim, blocks, seed = data.table.fields, 8, 3, 0
    budget = int(0.35 * full_bytes(fields, [dim] * 4))
    dnis = DNISConfig(blocks=blocks, search_epochs=2, fill=False)
    run = RunConfig("deepfm", EmbeddingConfig("full", dim), ModelOptions(hidden=(8,)),
                    TrainConfig(epochs=5, batch_size=256, lr=5e-3, patience=6, progress=False, seed=seed))
    run_search(data, run, budget, dnis, tmp_path, baselines=())
    pipeline = kept_per_field(json.loads((tmp_path / "layout.json").read_text()), fields)

    _, search = user_loop(data, dim, blocks, epochs=5, search_epochs=2, lr=5e-3, seed=seed, config=dnis)
    loop = kept_per_field(search.prune(budget, val_batches(data)), fields)

    for kept in (pipeline, loop):
        assert kept[3] == pytest.approx(1.0)
        assert min(kept[0], kept[1]) >= 2.5
    assert np.max(np.abs(np.array(loop) - np.array(pipeline))) <= 1.5


def test_only_the_search_step_moves_alpha_and_keeps_it_in_the_unit_interval():
    data = load_tiny()
    model, search = user_loop(data, dim=4, blocks=3, epochs=1, search_epochs=0, lr=1e-2, seed=0, config=DNISConfig(alpha_lr=0.5))
    alpha = search.search.alpha
    assert torch.equal(alpha, torch.ones_like(alpha))  # a training epoch with the user's optimiser left alpha alone
    vx, vy = arrays(data, "val")
    for _ in range(5):
        search.step(lambda: F.binary_cross_entropy_with_logits(model(vx), vy))
    assert alpha.min() >= 0 and alpha.max() <= 1 and (alpha < 1).any()


def test_validation_steps_are_not_counted_as_training_steps():
    data = load_tiny()
    model, search = user_loop(data, dim=4, blocks=3, epochs=0, search_epochs=1, lr=1e-2, seed=0, config=DNISConfig())
    steps_per_epoch = -(-len(data.split("train")) // 256)
    model(arrays(data, "val")[0][:8])  # the next lookup closes the last training step
    assert model.tables.set.steps == steps_per_epoch


def test_prune_converts_the_tables_in_place_within_the_budget_and_exports_what_it_counts(tmp_path):
    data = load_tiny()
    model, search = user_loop(data, dim=4, blocks=3, epochs=1, search_epochs=1, lr=1e-2, seed=0, config=DNISConfig())
    layout = search.prune(0.3, val_batches(data))
    assert isinstance(model.tables.embedding, BlockwiseEmbedding)
    assert search.memory_bytes() == layout_bytes(*layout_from_json(layout)) <= search.budget_bytes == int(0.3 * search.full_bytes())
    search.export(tmp_path / "tables.safetensors")
    assert load_artifact(tmp_path / "tables.safetensors").memory_bytes() == search.memory_bytes()


def test_pruned_tables_start_from_the_searched_vectors_on_the_kept_dimensions():
    data = load_tiny()
    model, search = user_loop(data, dim=4, blocks=3, epochs=1, search_epochs=1, lr=1e-2, seed=0, config=DNISConfig())
    ids = arrays(data, "val")[0][:64]
    model.eval()
    with torch.no_grad():
        before = model.tables.embedding.lookup(0, ids[:, 0])
        search.prune(0.5, val_batches(data))
        after = model.tables.embedding.lookup(0, ids[:, 0])
    kept = after != 0
    assert kept.any() and torch.allclose(after[kept], before[kept])


def test_optimiser_parameters_exclude_alpha_and_are_the_pruned_values_after_prune():
    data = load_tiny()
    model, search = user_loop(data, dim=4, blocks=3, epochs=0, search_epochs=1, lr=1e-2, seed=0, config=DNISConfig())
    assert all(p is not search.search.alpha for p in search.parameters())
    search.prune(0.5, val_batches(data))
    ids = {id(p) for p in search.parameters()}
    pruned = list(model.tables.embedding.tables)
    assert pruned and all(id(t) in ids for t in pruned) and id(search.search.tables[0]) not in ids
    opt = torch.optim.Adam(search.parameters(), lr=1e-2)
    before = [t.detach().clone() for t in pruned]
    x, y = arrays(data, "train")
    F.binary_cross_entropy_with_logits(model(x[:256]), y[:256]).backward()
    opt.step()
    assert any(not torch.equal(t.detach(), b) for t, b in zip(pruned, before))


@pytest.mark.parametrize("build,match", [
    (lambda: nn.Sequential(enn.EmbeddingBag(10, 4, method="full")), "found 0"),
    (lambda: nn.ModuleList([enn.EmbeddingBag(10, 4, method="dnis"), enn.EmbeddingBag(10, 4, method="dnis")]), "one embslim.nn.EmbeddingBagCollection"),
])
def test_a_model_without_exactly_one_dnis_table_set_is_a_config_error(build, match):
    with pytest.raises(ConfigError, match=match):
        enn.DNISSearch(build())


def test_search_settings_that_belong_to_embslim_search_are_config_errors():
    with pytest.raises(ConfigError, match="prune_during_search"):
        enn.DNISSearch(enn.EmbeddingBag(10, 4, method="dnis"), config=DNISConfig(prune_during_search=True))
    with pytest.raises(ConfigError, match="fine_tune_from"):
        enn.DNISSearch(enn.EmbeddingBag(10, 4, method="dnis"), config=DNISConfig(fine_tune_from="full"))


def test_a_dnis_table_takes_no_budget_the_search_prunes_to_one():
    with pytest.raises(ConfigError, match="budget"):
        enn.EmbeddingBag(10, 4, method="dnis", budget_bytes=0.5)


def test_steps_after_prune_are_config_errors():
    bag = enn.EmbeddingBag(20, 4, mode="sum", method="dnis", blocks=2)
    ids = torch.arange(20).reshape(10, 2)
    search = enn.DNISSearch(bag, lambda x: bag(x).pow(2).sum(1))
    search.step(ids)
    search.prune(0.5, [ids])
    with pytest.raises(ConfigError, match="prune"):
        search.step(ids)


def test_user_loop_example_searches_prunes_and_retrains_within_its_budget():
    """Runs examples/dnis_user_loop.py on small data and few steps (CI keeps it running)."""
    spec = importlib.util.spec_from_file_location("dnis_user_loop", ROOT / "examples" / "dnis_user_loop.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    result = module.main(rows=6000, epochs=1, search_epochs=1, retrain_epochs=1, dim=8)
    assert result["bytes"] <= result["budget_bytes"] < result["full_bytes"]
    assert 0.0 <= result["auc"] <= 1.0 and len(result["layout"]["fields"]) == 6
