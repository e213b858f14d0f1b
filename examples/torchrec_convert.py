"""A DLRM-style model written against TorchRec, its tables converted to an embslim method in one line,
trained in its own loop, on one process or sharded table-wise over 2 gloo ranks.

The model takes a `KeyedJaggedTensor` of categorical features into a TorchRec `EmbeddingBagCollection`
(of `EmbeddingBagConfig`s) whose `KeyedTensor` output feeds a dense part (bottom MLP, pairwise dot
interactions, top MLP). The conversion is one line (`convert` below):

    model.ebc = embslim.nn.EmbeddingBagCollection.from_torchrec(model.ebc, method=M, budget_bytes=B, counts=counts)

    python examples/torchrec_convert.py --method torchrec              # TorchRec's own tables
    python examples/torchrec_convert.py --method qr --budget 0.1       # one budget for all tables
    python examples/torchrec_convert.py --method mde --budget 0.1 --ranks 2
    python examples/torchrec_convert.py --data criteo.tsv --method hash --budget 0.1
    python examples/torchrec_convert.py --criteo-shaped --rows 2000000 --method full --ranks 2 --sharder torchrec

Data: synthetic clicks (zipf ids, a planted logistic model) or, with `--data`, Criteo TSV rows.
Prints test AUC and the bytes of the tables (per rank with `--ranks`).

Sharding (`--ranks N`, CPU gloo ranks via torch.multiprocessing.spawn), two ways. `--sharder torchrec` (the
default for `--method torchrec`): TorchRec's planner places the tables and DistributedModelParallel shards them,
FBGEMM's fused row-wise Adagrad updating them in backward; an embslim method with a TorchRec equivalent (`full`)
is handed over first (`embslim.nn.to_torchrec` configs, `load_sharded_weights` into each rank's shards).
`--sharder embslim` (the default otherwise): TorchRec's planner and
DistributedModelParallel shard only TorchRec's own module types, so `embslim.nn.ShardedEmbeddingBagCollection`
shards the embslim tables table-wise itself: each rank owns some tables (largest first to the least
loaded rank) with its share of the budget (the same fraction of its own tables), computes their pooled
outputs for the global batch, and a differentiable all-to-all gives every rank all features for its
slice of the batch, on which the DDP-wrapped dense part runs. Methods whose tables keep their own rows
shard (full, hash, qr, mde, tt, lowrank, double-hash, nested, magnitude, pep, dsl, lpt, int8/int4/int2/
fp16/bf16/svd); those whose tables share storage do not (robe, multiplex, hash with shared=True, mpe):
`embslim.nn.why_not_shardable(method)` says why, from the method's storage, not from a list.
"""
from __future__ import annotations

import argparse
import gc
import importlib.util
import tempfile
from datetime import timedelta
from pathlib import Path

import numpy as np
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from sklearn.metrics import roc_auc_score
from torch import nn
from torch.nn.parallel import DistributedDataParallel
from torchrec.modules.embedding_configs import EmbeddingBagConfig, PoolingType
from torchrec.modules.embedding_modules import EmbeddingBagCollection
from torchrec.sparse.jagged_tensor import KeyedJaggedTensor, KeyedTensor

import embslim.nn

DIM = 16


class DenseArch(nn.Module):
    """Bottom MLP on dense features, dot products of all pooled vectors, top MLP: DLRM's dense half."""

    def __init__(self, num_dense: int, num_sparse: int) -> None:
        super().__init__()
        self.bottom = nn.Sequential(nn.Linear(num_dense, 64), nn.ReLU(), nn.Linear(64, DIM), nn.ReLU())
        pairs = (num_sparse + 1) * num_sparse // 2
        self.top = nn.Sequential(nn.Linear(DIM + pairs, 64), nn.ReLU(), nn.Linear(64, 1))
        self.register_buffer("upper", torch.triu_indices(num_sparse + 1, num_sparse + 1, offset=1), persistent=False)

    def forward(self, dense: torch.Tensor, pooled: KeyedTensor) -> torch.Tensor:
        x = self.bottom(dense)
        vectors = torch.cat([x.unsqueeze(1), pooled.values().view(len(x), -1, DIM)], dim=1)
        dots = torch.bmm(vectors, vectors.transpose(1, 2))[:, self.upper[0], self.upper[1]]
        return self.top(torch.cat([x, dots], dim=1)).squeeze(1)


class DLRM(nn.Module):
    """TorchRec tables (`ebc`, KeyedJaggedTensor in, KeyedTensor out) and the dense part."""

    def __init__(self, rows: list[int], num_dense: int, tables: list[EmbeddingBagConfig] | None = None, device: str = "cpu") -> None:
        super().__init__()
        self.ebc = EmbeddingBagCollection(tables=tables or table_configs(rows), device=torch.device(device))
        self.dense = DenseArch(num_dense, len(rows))

    def forward(self, dense: torch.Tensor, sparse: KeyedJaggedTensor) -> torch.Tensor:
        return self.dense(dense, self.ebc(sparse))


def table_configs(rows: list[int]) -> list[EmbeddingBagConfig]:
    return [EmbeddingBagConfig(name=f"t{j}", embedding_dim=DIM, num_embeddings=n, feature_names=[f"f{j}"], pooling=PoolingType.SUM)
            for j, n in enumerate(rows)]


def convert(model: DLRM, method: str, budget: float | None, counts: dict[str, np.ndarray], total_steps: int) -> None:
    """The one line: TorchRec's collection becomes embslim tables under one budget (the model is unchanged otherwise)."""
    model.ebc = embslim.nn.EmbeddingBagCollection.from_torchrec(model.ebc, method=method, budget_bytes=budget, counts=counts,
                                                                total_steps=total_steps)


def synthetic(rows: int, seed: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Labels, dense features and ids of clicks drawn from a planted logistic model over zipf-distributed ids."""
    rng = np.random.default_rng(seed)
    sizes = [20_000, 5_000, 800, 40]
    ids = np.stack([(rng.zipf(1.3, rows) - 1) % n for n in sizes], axis=1)
    effects = [rng.normal(0, 1, n) for n in sizes]
    dense = rng.normal(0, 1, (rows, 4)).astype(np.float32)
    logit = sum(e[ids[:, j]] for j, e in enumerate(effects)) + dense[:, 0] - 1
    labels = (rng.random(rows) < 1 / (1 + np.exp(-logit))).astype(np.float32)
    return labels, dense, ids


def criteo(path: Path) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Labels, dense features and ids of Criteo TSV rows, read as examples/dlrm_plain_loop.py reads them."""
    spec = importlib.util.spec_from_file_location("dlrm_plain_loop", Path(__file__).with_name("dlrm_plain_loop.py"))
    dlrm = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(dlrm)
    labels, dense, cats = dlrm.read_criteo(path)
    ids, _ = dlrm.encode(cats, np.arange(int(0.8 * len(labels))))
    return labels, dense, ids


def criteo_shaped(rows: int, seed: int) -> tuple[np.ndarray, np.ndarray, np.ndarray, dict[str, np.ndarray]]:
    """Labels, a constant dense feature, ids and splits of embslim's generated Criteo-shaped clicks (26 fields with
    Criteo's cardinalities capped at 1M; vocabularies fitted on the training rows)."""
    from embslim.data import PrepareConfig, load_dataset
    from embslim.data.synthetic import synthetic_config

    data = load_dataset("synthetic-criteo", "ctr", config=PrepareConfig(split_seed=seed), synthetic=synthetic_config("synthetic-criteo", rows))
    table = data.table
    return table.label, np.zeros((len(table.label), 1), dtype=np.float32), table.ids, data.splits


def kjt(ids: torch.Tensor) -> KeyedJaggedTensor:
    """One id per feature per row, as TorchRec's KeyedJaggedTensor (feature-major values)."""
    return KeyedJaggedTensor.from_lengths_sync(keys=[f"f{j}" for j in range(ids.shape[1])], values=ids.t().reshape(-1),
                                               lengths=torch.ones(ids.numel(), dtype=torch.int32))


def load(args: argparse.Namespace) -> dict:
    if args.criteo_shaped:
        labels, dense, ids, splits = criteo_shaped(args.rows, args.seed)
        train, test = splits["train"], splits["test"]
    else:
        labels, dense, ids = criteo(args.data) if args.data else synthetic(args.rows, args.seed)
        order = np.random.default_rng(args.seed).permutation(len(labels))
        cut = int(0.8 * len(order))
        if args.data:  # criteo() builds its vocabularies on the first 80% of the file: keep that split
            order = np.arange(len(labels))
        train, test = order[:cut], order[cut:]
    rows = [int(ids[:, j].max()) + 1 for j in range(ids.shape[1])]
    counts = {f"t{j}": np.bincount(ids[train, j], minlength=n) for j, n in enumerate(rows)}
    return {"labels": torch.from_numpy(labels), "dense": torch.from_numpy(dense), "ids": torch.from_numpy(ids).long(),
            "train": train, "test": test, "rows": rows, "counts": counts}


def batches(data: dict, args: argparse.Namespace, epoch: int):
    shuffled = np.random.default_rng([args.seed, epoch]).permutation(data["train"])
    for start in range(0, len(shuffled), args.batch_size):
        yield torch.from_numpy(shuffled[start:start + args.batch_size])


def steps(data: dict, args: argparse.Namespace) -> int:
    return args.epochs * -(-len(data["train"]) // args.batch_size)


def train_one_process(args: argparse.Namespace, data: dict) -> dict:
    model = DLRM(data["rows"], data["dense"].shape[1])
    if args.method != "torchrec":
        convert(model, args.method, args.budget, data["counts"], steps(data, args))
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    for epoch in range(args.epochs):
        model.train()
        for rows in batches(data, args, epoch):
            loss = nn.functional.binary_cross_entropy_with_logits(model(data["dense"][rows], kjt(data["ids"][rows])), data["labels"][rows])
            opt.zero_grad()
            loss.backward()
            opt.step()
    model.eval()
    test = torch.from_numpy(data["test"])
    with torch.no_grad():
        scores = model(data["dense"][test], kjt(data["ids"][test]))
    tables = model.ebc.memory_bytes() if args.method != "torchrec" else sum(t.weight.numel() * 4 for t in model.ebc.embedding_bags.values())
    return {"auc": float(roc_auc_score(data["labels"][test].numpy(), scores.numpy())), "bytes": tables}


def rank_main(rank: int, args: argparse.Namespace, data: dict, out: str) -> None:
    """One gloo rank: its tables (sharded), the DDP-wrapped dense part on its slice of every global batch."""
    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"file://{out}/rendezvous", rank=rank, world_size=args.ranks,
                            timeout=timedelta(minutes=10))
    torch.manual_seed(args.seed)
    ebc = embslim.nn.ShardedEmbeddingBagCollection.from_torchrec(table_configs(data["rows"]), counts=data["counts"], method=args.method,
                                                                 budget_bytes=args.budget, total_steps=steps(data, args))
    dense = DistributedDataParallel(DenseArch(data["dense"].shape[1], len(data["rows"])))
    opt = torch.optim.Adam(list(dense.parameters()) + list(ebc.parameters()), lr=1e-3)
    losses = []
    for epoch in range(args.epochs):
        ebc.train()
        for rows in batches(data, args, epoch):
            mine = rows[ebc.batch_rows(len(rows))]
            logits = dense(data["dense"][mine], ebc(kjt(data["ids"][rows])))
            loss = nn.functional.binary_cross_entropy_with_logits(logits, data["labels"][mine])
            opt.zero_grad()
            loss.backward()
            opt.step()
            losses.append(loss.item())
    ebc.eval()
    test = torch.from_numpy(data["test"])
    with torch.no_grad():
        scores = dense.module(data["dense"][test[ebc.batch_rows(len(test))]], ebc(kjt(data["ids"][test])))
    every = [None] * args.ranks
    dist.all_gather_object(every, (scores, ebc.memory_bytes(), [t.name for t in ebc.local_tables], losses))
    if rank == 0:
        torch.save(every, f"{out}/result.pt")
    # Free what holds the process groups (DDP's reducer, the collection's exchange group) while both ranks are
    # still here, then leave together: a rank that tore them down after its peer had exited hung in ~1 of 15 runs.
    del dense, ebc, opt
    gc.collect()
    dist.barrier()
    dist.destroy_process_group()


def torchrec_rank_main(rank: int, args: argparse.Namespace, data: dict, out: str) -> None:
    """One gloo rank of TorchRec's own sharding: its planner places the tables, DistributedModelParallel shards
    them (FBGEMM's fused row-wise Adagrad updates them in backward) and wraps the dense part in DDP; each rank
    feeds its slice of every global batch. With an embslim method (full), its tables are handed over first."""
    from torchrec.distributed.model_parallel import DistributedModelParallel
    from torchrec.optim import RowWiseAdagrad, apply_optimizer_in_backward

    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"file://{out}/rendezvous", rank=rank, world_size=args.ranks,
                            timeout=timedelta(minutes=10))
    torch.manual_seed(args.seed)
    weights, configs = None, None
    if args.method != "torchrec":
        # an embslim collection started, like the one-process --method full, from TorchRec's initialisation
        tables = embslim.nn.EmbeddingBagCollection.from_torchrec(EmbeddingBagCollection(tables=table_configs(data["rows"])),
                                                                 counts=data["counts"], method=args.method)
        weights, configs = embslim.nn.table_weights(tables), embslim.nn.torchrec_configs(tables)
    model = DLRM(data["rows"], data["dense"].shape[1], configs, device="meta")
    model.dense = DenseArch(data["dense"].shape[1], len(data["rows"]))
    apply_optimizer_in_backward(RowWiseAdagrad, model.ebc.parameters(), {"lr": args.table_lr})
    model = DistributedModelParallel(model, device=torch.device("cpu"))
    if weights is not None:
        embslim.nn.load_sharded_weights(model, weights)
    dense = [p for name, p in model.named_parameters() if ".ebc." not in f".{name}"]
    opt = torch.optim.Adam(dense, lr=1e-3)
    losses = []
    for epoch in range(args.epochs):
        model.train()
        for rows in batches(data, args, epoch):
            mine = rows[rank::args.ranks]
            loss = nn.functional.binary_cross_entropy_with_logits(model(data["dense"][mine], kjt(data["ids"][mine])), data["labels"][mine])
            opt.zero_grad()
            loss.backward()
            opt.step()
            losses.append(loss.item())
    model.eval()
    test = torch.from_numpy(data["test"])[rank::args.ranks]
    with torch.no_grad():
        scores = model(data["dense"][test], kjt(data["ids"][test]))
    local = sum(t.numel() * t.element_size() for key, value in model.state_dict().items() if ".embedding_bags." in key  # shards, and
                for t in ([s.tensor for s in value.local_shards()] if hasattr(value, "local_shards") else [value]))  # replicated small tables
    plan = [name for name, spec in model.plan.plan["ebc"].items() if spec.ranks and rank in spec.ranks]
    every = [None] * args.ranks
    dist.all_gather_object(every, (test, scores, local, plan, losses))
    if rank == 0:
        torch.save(every, f"{out}/result.pt")
    del model, opt
    gc.collect()
    dist.barrier()
    dist.destroy_process_group()


def train_sharded(args: argparse.Namespace, data: dict) -> dict:
    if args.sharder == "torchrec":
        return train_torchrec_sharded(args, data)
    with tempfile.TemporaryDirectory() as out:
        mp.spawn(rank_main, args=(args, data, out), nprocs=args.ranks, join=True)
        every = torch.load(f"{out}/result.pt", weights_only=False)
    scores = torch.cat([scores for scores, *_ in every])
    losses = np.mean([losses for *_, losses in every], axis=0)
    return {"auc": float(roc_auc_score(data["labels"][torch.from_numpy(data["test"])].numpy(), scores.numpy())),
            "bytes": sum(b for _, b, _, _ in every), "rank_bytes": [b for _, b, _, _ in every], "rank_tables": [t for _, _, t, _ in every],
            "first_loss": float(losses[:10].mean()), "last_loss": float(losses[-10:].mean())}


def train_torchrec_sharded(args: argparse.Namespace, data: dict) -> dict:
    with tempfile.TemporaryDirectory() as out:
        mp.spawn(torchrec_rank_main, args=(args, data, out), nprocs=args.ranks, join=True)
        every = torch.load(f"{out}/result.pt", weights_only=False)
    rows = torch.cat([test for test, *_ in every])
    scores = torch.cat([scores for _, scores, *_ in every])
    losses = np.mean([losses for *_, losses in every], axis=0)
    return {"auc": float(roc_auc_score(data["labels"][rows].numpy(), scores.numpy())), "bytes": sum(b for _, _, b, _, _ in every),
            "rank_bytes": [b for _, _, b, _, _ in every], "rank_tables": [t for *_, t, _ in every],
            "first_loss": float(losses[:10].mean()), "last_loss": float(losses[-10:].mean())}


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, default=None, help="Criteo TSV rows (default: synthetic clicks)")
    parser.add_argument("--rows", type=int, default=20_000, help="synthetic rows")
    parser.add_argument("--criteo-shaped", action="store_true",
                        help="embslim's generated Criteo-shaped clicks (26 tables, Criteo's cardinalities up to 1M ids) instead")
    parser.add_argument("--method", default="torchrec", help="torchrec (its own tables), or an embslim method (full, qr, mde, hash, int8, ...)")
    parser.add_argument("--budget", type=float, default=None, help="fraction of the fp32 tables' bytes, for all tables together")
    parser.add_argument("--ranks", type=int, default=1, help="gloo ranks to shard the tables over (table-wise)")
    parser.add_argument("--sharder", choices=["embslim", "torchrec"], default=None,
                        help="with --ranks: embslim's table-wise sharding of any shardable method, or TorchRec's planner and "
                             "DistributedModelParallel (TorchRec's own tables, or an embslim method TorchRec has tables for: full); "
                             "default: torchrec for --method torchrec, else embslim")
    parser.add_argument("--table-lr", type=float, default=0.05, help="--sharder torchrec: the fused row-wise Adagrad's learning rate")
    parser.add_argument("--epochs", type=int, default=2)
    parser.add_argument("--batch-size", type=int, default=256)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    if args.data and not args.data.is_file():
        parser.error(f"no Criteo file at {args.data}")
    args.sharder = args.sharder or ("torchrec" if args.method == "torchrec" else "embslim")
    if args.ranks > 1:
        if args.sharder == "embslim" and args.method == "torchrec":
            raise SystemExit("--sharder embslim shards embslim tables: pass --method, or --sharder torchrec for TorchRec's own tables")
        reason = (embslim.nn.why_no_torchrec_table(args.method, training=True) if args.method != "torchrec" else None) if args.sharder == "torchrec" \
            else embslim.nn.why_not_shardable(args.method)
        if reason:
            raise SystemExit(reason)
    torch.manual_seed(args.seed)
    data = load(args)
    result = train_sharded(args, data) if args.ranks > 1 else train_one_process(args, data)
    result.update(method=args.method, ranks=args.ranks, full_bytes=sum(data["rows"]) * DIM * 4)
    per_rank = (f", per rank {result['rank_bytes']} (tables {result['rank_tables']}), training loss "
                f"{result['first_loss']:.4f} -> {result['last_loss']:.4f}") if args.ranks > 1 else ""
    print(f"{args.method}: test AUC {result['auc']:.4f}, tables {result['bytes']:,} bytes "
          f"({result['bytes'] / result['full_bytes']:.1%} of fp32){per_rank}")
    return result


if __name__ == "__main__":
    main()
