"""DNIS on your own model: wrap its embedding layer, run the search loop, get the configuration.

Runs in a few seconds on generated data:  python examples/custom_model_dnis.py
"""
import json

import torch
from torch import nn

from embslim.data import SyntheticConfig, load_dataset
from embslim.embeddings.blockwise import BlockwiseEmbedding, layout_from_json, layout_to_json
from embslim.embeddings.dnis import DNISEmbedding
from embslim.embeddings.full import full_bytes
from embslim.models import Recommender
from embslim.search.dnis import AlphaStep, DNISConfig, layout_for_budget, pruning_scores
from embslim.train.trainer import TrainConfig, Trainer


class SumOfDots(Recommender):
    """Your model: any nn.Module that scores rows from per-field vectors. Subclassing
    Recommender gives it the `embedding` slot the trainer and byte reports use."""

    def __init__(self, embedding):
        super().__init__(embedding)
        self.mlp = nn.Sequential(nn.Linear(sum(embedding.dims), 32), nn.ReLU(), nn.Linear(32, 1))

    def score(self, vectors):
        stacked = torch.stack(vectors, dim=1)
        pairs = 0.5 * (stacked.sum(1).pow(2) - stacked.pow(2).sum(1)).sum(1)
        return pairs + self.mlp(torch.cat(vectors, dim=1)).squeeze(1)


def main() -> dict:
    data = load_dataset("synthetic", synthetic=SyntheticConfig(rows=20_000))
    fields = data.table.fields
    train = TrainConfig(epochs=3, batch_size=512, progress=False)

    # 1. Your model over the DNIS layer: full tables of width 16 scaled by alpha per frequency block.
    model = SumOfDots(DNISEmbedding(fields, dim=16, blocks=6))
    # 2. The search loop: every training step is followed by one validation step of alpha.
    search = DNISConfig()
    Trainer(model, data, train, callbacks=[AlphaStep(model, data, search, batch_size=512, seed=0)]).fit()
    # 3. Score every (block, dimension) by the validation loss its removal costs, prune to a
    #    quarter of the full table's bytes and read the configuration.
    budget = full_bytes(fields, [16] * len(fields)) // 4
    scores = pruning_scores(model, data, search)
    layout = layout_to_json(layout_for_budget(model.embedding, budget, search, scores), width=16)
    print("kept dims per block:", json.dumps({name: [len(b["dims"]) for b in f["blocks"]] for name, f in layout["fields"].items()}))
    # 4. Retrain your model on the slim tables; the same layout serves from embedding.export().
    slim = SumOfDots(BlockwiseEmbedding(fields, *layout_from_json(layout)))
    results = Trainer(slim, data, train).fit()
    print(f"slim model: {slim.embedding.memory_bytes():,} bytes (budget {budget:,}), test auc {results['test']['auc']:.4f}")
    return layout


if __name__ == "__main__":
    main()
