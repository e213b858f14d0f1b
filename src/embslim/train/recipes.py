"""Default training settings per (model, task), tuned on MovieLens-100K; flags override them.

A plain table rather than logic, so a reader sees every default in one place. A (model, task, pair loss)
row applies over the (model, task) row when a pointwise model is trained pairwise (`--pair-loss`), and a row of
DATASET_RECIPES over both for a family of datasets (the SASRec paper's MovieLens settings). A row may also
set backbone options (keys of `ModelOptions`, e.g. dropout, heads, maxlen): `model_options`
picks them out, `train_options` the `TrainConfig` keys.
"""
from __future__ import annotations

from dataclasses import fields

from embslim.models.base import ModelOptions

RECIPES: dict[tuple[str, ...], dict] = {
    # CTR: patience 4 since 2026-11-27 (2 before). Validation AUC moves by about 0.001 from epoch to epoch on these
    # data, so two epochs without a new best stopped runs that were still improving: DCNv2 at half the bytes,
    # DNIS's retrain stopped after 6-11 epochs at validation 0.7974 (test 0.7852 +- 0.0007) and ran to 0.7988 (test
    # 0.7867 +- 0.0006) with 4, where MDE's runs reach the 20-epoch cap either way.
    ("*", "ctr"): {"epochs": 20, "lr": 1e-3, "batch_size": 512, "patience": 4, "embedding_l2": 1e-4},
    ("*", "rating"): {"epochs": 40, "lr": 1e-3, "batch_size": 512, "patience": 3},
    ("*", "topk"): {"epochs": 20, "lr": 1e-3, "batch_size": 1024, "patience": 2, "negatives": 4},
    ("mf", "rating"): {"epochs": 40, "lr": 3e-3, "batch_size": 256, "patience": 3, "embedding_l2": 0.1, "init_std": 0.1},
    # FM rating: MF's regularisation plus a learning rate cut by 0.3 on each epoch without validation
    # improvement; test RMSE 0.9068 +- 0.0009 over seeds 0-2 against 0.9144 +- 0.0022 with the task row
    # (the same decay made MF worse: 0.9261 against 0.9185).
    ("fm", "rating"): {"epochs": 40, "lr": 3e-3, "batch_size": 256, "patience": 4, "embedding_l2": 0.1, "init_std": 0.1,
                       "lr_decay": 0.3},
    ("neumf", "rating"): {"epochs": 40, "lr": 1e-3, "batch_size": 256, "patience": 3, "embedding_l2": 0.05, "init_std": 0.1},
    # DIN (ctr): the task row plus dropout 0.1, kept after tuning on validation AUC (under patience 2; seed 0, ML-100K, dim 16, behaviours = item + genre):
    # --history 20 gave val 0.7865 (dropout 0.3: 0.7874, 0.5: 0.7881; embedding L2 1e-3: 0.7865), --history 50 0.7894,
    # --history 100 0.7920 (dropout 0.5: 0.7921; weights divided by the history length: 0.7898; plus DeepFM's linear and FM
    # terms over every input: 0.7893). With --history 100, seeds 0-2: val 0.7914 +- 0.0005, test 0.7796 +- 0.0001, behind DeepFM under
    # the task row: test 0.7814 +- 0.0025 without a history and 0.7852 +- 0.0016 with the same --history 100 (its mean-pooled
    # behaviours; why DeepFM gains more is open: DIN with FM terms added did not). Use --history 100 for DIN.
    ("din", "ctr"): {"epochs": 20, "lr": 1e-3, "batch_size": 512, "patience": 4, "embedding_l2": 1e-4, "dropout": 0.1},
    # Sequence models: SASRec's settings (Kang & McAuley 2018; pmixer/SASRec.pytorch): d 50, lr 1e-3, batch 128 users,
    # 2 blocks, 1 head; dropout 0.5 and maxlen 50 for the sparse Amazon data (Video Games histories have a median of 4
    # training items and a 99th percentile of 48), 0.2 and 200 for MovieLens (the family row below). One epoch is one
    # pass over the users, hence more epochs than the pointwise rows. Patience 10: validation NDCG@10 over a few
    # thousand users is noisy while it is still rising (HSTU on MovieLens-100K with --maxlen 200 --dropout 0.2 stopped
    # at epoch 16 with patience 5 on seed 2, at test HR@10 0.074, while seeds 0 and 1 ran 71 and 75 epochs to 0.138;
    # SASRec on the video games stopped at 17 epochs with the sampled metric rising). Length-grouped batches
    # (objective_sequence.length_grouped): on the video games an epoch reads 4.8x fewer padded columns and takes
    # 10.2 s against 48.9 s at d 50, with the same validation curve as random batches (sampled HR@10 0.571 / 0.603 /
    # 0.743 at epochs 5 / 7 / 32 against 0.569 / 0.600 / 0.742 with random batches, seed 0).
    ("sasrec", "topk"): {"epochs": 200, "lr": 1e-3, "batch_size": 128, "patience": 10, "heads": 1, "blocks": 2, "dropout": 0.5,
                         "maxlen": 50, "dim": 50, "length_batches": True},
    ("hstu", "topk"): {"epochs": 200, "lr": 1e-3, "batch_size": 128, "patience": 10, "heads": 1, "blocks": 2, "dropout": 0.5,
                       "maxlen": 50, "dim": 50, "length_batches": True},
    # LightGCN's reference (gusye1234/LightGCN-PyTorch): batch 2048, one BPR negative, N(0, 0.1) init, decay 1e-4
    # on half the squared norm of the batch's layer-0 rows (5e-5 on the whole norm here), lr 1e-3 over ~1000 epochs.
    # Checked against it: graph weights, mean of layers 0..3, decay rows and scale, init and propagated retrieval
    # match; it draws a uniform user then one of its items (--pair-sampling users), which scored lower here on
    # validation for both LightGCN and MF-BPR. The former row (40 epochs, patience 8) stopped in the early plateau.
    # Tuned on seed 0's validation NDCG@10 (ML-100K leave-last-out, full ranking, dim 16, 300 epochs, patience 20;
    # an epoch ~1.6 s at 1 negative, ~2.1 s at 4, one thread on a shared machine), the two best each run on seeds
    # 0-2 and MF-BPR given the same search (its own row below): lr {5e-3, 1e-2} x l2 {5e-5, 5e-4}, then l2 1e-5,
    # user sampling, 4 negatives, batch 1024, 2 layers. `embslim train --dataset movielens-100k --task topk --dim 16
    # --model lightgcn` (or `--model mf --pair-loss bpr`, init N(0, 0.01)) --seed 0/1/2; test HR@10 / NDCG@10 (val NDCG@10):
    #   lightgcn (this row)                      0.1308 +- 0.0089 / 0.0676 +- 0.0049 (0.0729 +- 0.0031)
    #   lightgcn, 1 negative, batch 1024         0.1322 +- 0.0022 / 0.0690 +- 0.0015 (0.0728 +- 0.0031; runner-up)
    #   mf --pair-loss bpr (its row)             0.1248 +- 0.0027 / 0.0626 +- 0.0018 (0.0727 +- 0.0048)
    #   mf --pair-loss bpr, 4 negatives         0.1333 +- 0.0058 / 0.0695 +- 0.0027 (0.0701 +- 0.0008; not chosen)
    #   mf pointwise (task row)                  0.0820 +- 0.0022 / 0.0422 +- 0.0016 (0.0363 +- 0.0012)
    # Both pairwise models beat pointwise MF clearly. LightGCN's row leads MF-BPR's row on every seed's test
    # NDCG@10 and on HR@10 (ties seed 2), but the two are level on validation and MF-BPR with 4 negatives (lower
    # on validation) scores as high on test: LightGCN is not separable from MF-BPR here (issue #12's check unmet).
    ("lightgcn", "topk"): {"epochs": 300, "lr": 1e-2, "batch_size": 2048, "patience": 20, "negatives": 4, "embedding_l2": 5e-5,
                           "init_std": 0.1},
    # MF trained with --pair-loss bpr: the best of the same search as LightGCN's row (lr 1e-2 overfits by epoch ~36,
    # l2 5e-4 or 5e-3 no better, 4 negatives lower on validation); stops around epoch 80.
    ("mf", "topk", "bpr"): {"epochs": 300, "lr": 5e-3, "batch_size": 2048, "patience": 20, "negatives": 1, "embedding_l2": 5e-5},
}


# Rows for a family of datasets, over the model's row: (model, task, prefix of the dataset's name).
DATASET_RECIPES: dict[tuple[str, str, str], dict] = {
    # The SASRec paper's MovieLens settings (longer, denser histories than the Amazon files).
    ("sasrec", "topk", "movielens"): {"maxlen": 200, "dropout": 0.2},
    ("hstu", "topk", "movielens"): {"maxlen": 200, "dropout": 0.2},
}

DEFAULT_DIM = 16  # the embedding width of a field when neither --dim nor the recipe names one
EMBEDDING_KEYS = ("dim", "init_std")  # recipe keys that configure the embedding, not the trainer or the backbone


def embedding_dim(row: dict, flag: int | None = None) -> int:
    """The embedding width: the flag's if given, else the recipe row's, else `DEFAULT_DIM`."""
    return flag if flag is not None else row.get("dim", DEFAULT_DIM)


def recipe(model: str, task: str, dataset: str | None = None, pair_loss: str = "") -> dict:
    """Defaults for this model, task and dataset: the task's row, the model's row over it, the row of the model
    trained with `pair_loss` (a pointwise model trained pairwise) over that, then the row of the dataset's family
    (a (model, task, prefix) key of DATASET_RECIPES whose prefix starts the dataset's name)."""
    row = {**RECIPES.get(("*", task), {}), **RECIPES.get((model, task), {})}
    if pair_loss:
        row.update(RECIPES.get((model, task, pair_loss), {}))
    for key, family in DATASET_RECIPES.items():
        if key[:2] == (model, task) and dataset is not None and dataset.startswith(key[2]):
            row.update(family)
    return row


MODEL_OPTION_KEYS = {f.name for f in fields(ModelOptions)}


def model_options(row: dict) -> dict:
    """The backbone options a recipe row sets."""
    return {k: v for k, v in row.items() if k in MODEL_OPTION_KEYS}


def train_options(row: dict) -> dict:
    """The training settings a recipe row sets (neither backbone options nor the embedding's dim and init_std)."""
    return {k: v for k, v in row.items() if k not in MODEL_OPTION_KEYS and k not in EMBEDDING_KEYS}
