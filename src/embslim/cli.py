"""The `embslim` command: thin parsing into config dataclasses, then library calls."""
from __future__ import annotations

import argparse
import json
import sys
from dataclasses import replace
from pathlib import Path

from embslim.budget import parse_budget
from embslim.cli_types import (blocks_spec, budget_fractions, budget_text, dnis_options, dropout_rate, field_dims, fill_rank, fine_tune_source, int_list,
                               holdout_fraction, learning_rate, network_start, non_negative_float, non_negative_int, positive_float, positive_int, seed_int,
                               seed_set)
from embslim.data import DATASETS, PrepareConfig, load_dataset
from embslim.data.fetch import Archive, fetch_archive
from embslim.data.registry import data_dirs, get_source, resolve_path
from embslim.data.synthetic import SYNTHETIC_SHAPES, synthetic_config
from embslim.embeddings import EmbeddingConfig, list_embeddings, method_info, split_key_values
from embslim.embeddings.blockwise import PRECISIONS
from embslim.embeddings.full import full_bytes
from embslim.errors import ConfigError, EmbslimError
from embslim.extras import require
from embslim.train.metrics import headline_metrics
from embslim.models import ModelOptions, list_models, model_class
from embslim.train.recipes import embedding_dim, model_options, recipe, train_options
from embslim.train.slice import PRECISIONS as SLICE_PRECISIONS
from embslim.train.table_optim import ALL_TABLE_OPTIMIZERS
from embslim.train.trainer import TrainConfig

SEARCH_HOLDOUT = 0.0  # DNISConfig.search_holdout (tests/test_cli.py checks they agree)
TRAIN_KEYS = {"epochs", "lr", "batch_size", "patience", "negatives", "embedding_l2", "embedding_l2_mode", "weight_decay", "optimizer", "eval_protocol",
              "table_optimizer", "table_lr", "seq_loss", "softmax_negatives", "temperature", "pair_loss", "pair_sampling",
              "dense_precision", "length_batches"}


def add_data_args(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("data")
    g.add_argument("--dataset", default="synthetic", help=f"one of {sorted(DATASETS)} or 'tabular' (default: synthetic, generated, no download)")
    g.add_argument("--task", choices=["ctr", "rating", "topk"], help="ctr (AUC, logloss), rating (RMSE, MAE) or topk (HR, NDCG, Recall, MRR); default: ctr")
    g.add_argument("--data-path", type=Path, help="file or folder of the dataset (default: found under $EMBSLIM_DATA_DIR)")
    g.add_argument("--schema", type=Path, help="JSON schema for --dataset tabular")
    g.add_argument("--min-count", type=non_negative_int, help="values seen fewer times in training go to the OOV bucket (default per dataset)")
    g.add_argument("--max-bad-rows", type=non_negative_float, default=0, help="malformed rows tolerated: a count, or a fraction if < 1 (default 0)")
    g.add_argument("--split", choices=["random", "time", "user"], default="random",
                   help="ctr/rating: train/val/test as a seeded shuffle (default), by time, the newest 10%% as test (needs "
                        "timestamps), or by user, whole users held out so test users are unseen (needs a user column); "
                        "top-k always leaves each user's last items out")
    g.add_argument("--split-seed", type=seed_int, default=0, help="seed of the random or user train/val/test split (default 0)")
    g.add_argument("--ctr-negatives", type=non_negative_int, default=0,
                   help="ctr on interaction logs: every interaction is a click and gets N non-clicks, items its user never "
                        "interacted with, drawn uniformly (DIN's protocol); default 0: clicks are ratings >= 4")
    g.add_argument("--synthetic-rows", type=positive_int, help="rows of a generated dataset (synthetic: 200000, synthetic-criteo: 2000000)")
    g.add_argument("--history", type=non_negative_int, default=0,
                   help="ctr/rating: give each row its user's last N earlier items, each with its item-side fields (genre), read "
                        "through their tables (din attends over them, other backbones mean-pool them); default 0, off")


def add_train_args(p: argparse.ArgumentParser) -> None:
    add_data_args(p)
    g = p.add_argument_group("model")
    g.add_argument("--model", default="deepfm", choices=list_models())
    g.add_argument("--embedding", default="full", choices=list_embeddings(), help="embedding method (default full)")
    g.add_argument("--dim", type=positive_int, help="embedding dimension of every field (default per recipe: 50 for sasrec and hstu "
                   "as in the SASRec paper, else 16)")
    g.add_argument("--dims", type=field_dims, help="per-field dimensions, e.g. user_id=32,zip=4")
    g.add_argument("--budget", type=budget_text, help="memory budget: fraction of the full table at --dim (0.2) or bytes (150000, 512KiB)")
    g.add_argument("--embedding-opt", action="append", metavar="KEY=VALUE",
                   help="a setting of the embedding method, repeatable or comma-separated, e.g. shared=true (see `embslim list`)")
    g.add_argument("--hidden", type=int_list, help="MLP widths, e.g. 256,128")
    g.add_argument("--dropout", type=dropout_rate, help="dropout rate of the MLP (sequence models: of every block), in [0, 1)")
    g.add_argument("--dropout-mask", choices=["bernoulli", "bits"],
                   help="CTR backbones' MLP dropout: bernoulli (nn.Dropout, default) or bits (15-bit integer draws, ~3x cheaper on CPU; other draws for the same seed)")
    g.add_argument("--maxlen", type=positive_int, help="sequence models: the last items of a history they read (default per recipe)")
    g.add_argument("--graph-layers", type=non_negative_int, help="lightgcn: propagation layers (default 3)")
    t = p.add_argument_group("training (defaults per model and task: embslim/train/recipes.py)")
    t.add_argument("--epochs", type=positive_int)
    t.add_argument("--lr", type=learning_rate)
    t.add_argument("--batch-size", type=positive_int)
    t.add_argument("--patience", type=positive_int, help="epochs without validation improvement before stopping")
    t.add_argument("--embedding-l2", type=non_negative_float, help="L2 penalty on the embedding rows a batch uses")
    t.add_argument("--embedding-l2-mode", choices=["mean", "mba"],
                   help="mean: of the rows' squared norms (default); mba: DIN's mini-batch aware form, each distinct row once "
                        "over its id's training frequency (rating/CTR)")
    t.add_argument("--weight-decay", type=non_negative_float)
    t.add_argument("--optimizer", choices=["adam", "adamw"], help="optimizer of the dense network (and of tables with dense gradients)")
    t.add_argument("--table-optimizer", choices=list(ALL_TABLE_OPTIMIZERS),
                   help="optimizer of tables with sparse gradients (default adam: lazy Adam; rowwise-adagrad keeps one float per row; "
                        "fbgemm-*: the same update fused into FBGEMM's kernel, `full` method only, needs fbgemm-gpu-cpu)")
    t.add_argument("--table-lr", type=learning_rate, help="learning rate of the tables (default: --lr)")
    t.add_argument("--dense-precision", choices=["fp32", "bf16"],
                   help="bf16: train the dense network under bfloat16 autocast (faster matmuls where the CPU has AMX/AVX512-BF16; "
                        "weights and evaluation stay fp32; default fp32)")
    t.add_argument("--negatives", type=positive_int, help="sampled negatives per positive (topk)")
    t.add_argument("--eval-protocol", choices=["full", "sampled100", "both"],
                   help="topk: rank against every item (full, default), against 100 sampled unseen items as in the SASRec "
                        "paper (sampled100, metrics named s100_*), or both")
    t.add_argument("--seq-loss", choices=["bce", "softmax"],
                   help="sequence models: bce (one sampled negative per position, as in the SASRec paper; default) or softmax "
                        "(sampled softmax over --softmax-negatives shared negatives, cosine / --temperature)")
    t.add_argument("--softmax-negatives", type=positive_int, help="negatives of --seq-loss softmax (default 128)")
    t.add_argument("--temperature", type=positive_float, help="temperature of --seq-loss softmax (default 0.05)")
    t.add_argument("--length-batches", action=argparse.BooleanOptionalAction,
                   help="sequence models: group users of similar history length into a batch, so a batch of short "
                        "histories reads few columns (every position keeps its weight over an epoch; default per recipe)")
    t.add_argument("--pair-loss", choices=["bpr", "softmax"],
                   help="topk: train on (user, positive, sampled negatives) with BPR or sampled softmax over --negatives shared "
                        "items per batch (mf: instead of its pointwise logistic loss; lightgcn: default bpr)")
    t.add_argument("--pair-sampling", choices=["interactions", "users"],
                   help="pairwise top-k (mf --pair-loss, lightgcn): each epoch a shuffled pass over the training interactions "
                        "(default), or as many draws of a uniform user and a uniform one of its items (LightGCN's reference)")
    t.add_argument("--seed", type=seed_int, default=0)
    o = p.add_argument_group("output")
    o.add_argument("--out", type=Path, help="run folder (default runs/train-DATASET-TASK-MODEL-seedN)")
    o.add_argument("--resume", action="store_true", help="continue a killed run in --out from its last finished epoch")
    o.add_argument("--quiet", action="store_true", help="no progress bars or per-epoch lines")


def add_stream_args(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("streaming (train --stream: one epoch over data larger than memory)")
    g.add_argument("--stream", action="store_true",
                   help="read criteo/avazu text or a generated synthetic/synthetic-criteo stream in chunks: one pass counts the "
                        "vocabularies, a second trains; validation and test are the stream's last rows; memory does not grow with rows")
    g.add_argument("--stream-chunk-rows", type=positive_int, help="rows per generated chunk (default 262144)")
    g.add_argument("--stream-eval-rows", type=positive_int, help="held-out rows of validation and of test each, the stream's tail "
                                                                 "(default 100000, at most a tenth of the stream each)")
    g.add_argument("--drift", type=non_negative_float, help="generated stream: share of each field's ids by which popularity "
                                                            "shifts from start to end, in [0, 1] (default 0)")
    g.add_argument("--online", action="store_true",
                   help="with --stream: no counting pass and no vocabulary; every value becomes a 62-bit hashed id and each "
                        "chunk is scored (progressive validation) before it is trained on; results.json per chunk, online.png")
    g.add_argument("--id-space", type=positive_int,
                   help="--online: rows per field for methods that need a cardinality (they read the hashed id modulo it; "
                        "collisionless and hash read it whole); --budget fractions are of this full table (default 1048576)")


def load_from_args(args: argparse.Namespace):
    source = get_source(args.dataset)
    config = PrepareConfig(task=args.task or source.default_task, min_count=args.min_count if args.min_count is not None else source.min_count,
                           split_seed=args.split_seed, split=args.split or "random", history=args.history or 0,
                           negatives=args.ctr_negatives or 0)
    synthetic = synthetic_config(args.dataset, args.synthetic_rows) if args.synthetic_rows and args.dataset in SYNTHETIC_SHAPES else None
    return load_dataset(args.dataset, config.task, args.data_path, config, args.max_bad_rows, args.schema, synthetic)


def budget_bytes(text: str, fields: list, dim: int) -> int:
    """--budget in bytes; more than the full table at --dim would grow the tables instead of slimming them."""
    full = full_bytes(fields, [dim] * len(fields))
    budget = parse_budget(text, full)
    if budget > full:
        raise ConfigError(f"--budget {text} is {budget:,} bytes, more than the full table at --dim {dim} ({full:,} bytes)")
    return budget


def parse_method_options(items: list[str]) -> dict[str, dict[str, str]]:
    """`["hash:shared=true", "svd:fine_tune_epochs=1"]` -> {method: {key: value}}, each checked against the method's settings."""
    from embslim.bench.grid import registry_name

    out: dict[str, dict[str, str]] = {}
    for item in items:
        method, sep, rest = item.partition(":")
        if not sep:
            raise ConfigError(f"cannot read --method-opt {item!r}: expected METHOD:KEY=VALUE")
        out.setdefault(method, {}).update(split_key_values(rest, "--method-opt"))
        method_info(registry_name(method)).parse(out[method])
    return out


def configs_from_args(args: argparse.Namespace, data) -> tuple:
    """RunConfig pieces from flags over the recipe for this model and task."""
    from embslim.train.run import RunConfig

    defaults = recipe(args.model, data.task, data.name, getattr(args, "pair_loss", None) or "")
    args.dim = embedding_dim(defaults, args.dim)
    flags = {k: getattr(args, k) for k in TRAIN_KEYS if getattr(args, k, None) is not None}
    train = TrainConfig(**{**train_options(defaults), **flags}, seed=args.seed, progress=not args.quiet)
    names = model_class(args.model).select_fields(data.table.fields, data.user_field, data.item_field)
    fields = data.select_fields(names).table.fields
    budget = budget_bytes(args.budget, fields, args.dim) if args.budget else None
    options = split_key_values(args.embedding_opt, "--embedding-opt")
    method_info(args.embedding).parse(options)
    emb = EmbeddingConfig(args.embedding, args.dim, args.dims, budget, defaults.get("init_std", 0.01), options)
    opts = model_options(defaults)
    if getattr(args, "maxlen", None) is not None:
        opts["maxlen"] = args.maxlen
    if args.hidden:
        opts["hidden"] = args.hidden
    if args.dropout is not None:
        opts["dropout"] = args.dropout
    if args.graph_layers is not None:
        opts["graph_layers"] = args.graph_layers
    if getattr(args, "dropout_mask", None) is not None:
        opts["dropout_mask"] = args.dropout_mask
    return RunConfig(args.model, emb, ModelOptions.from_dict(opts), train)


DATA_FLAGS = {"dataset": "synthetic", "task": None, "data_path": None, "schema": None, "min_count": None, "max_bad_rows": 0,
              "split_seed": 0, "split": "random", "ctr_negatives": 0, "synthetic_rows": None,
              "history": 0}  # the data flags and their defaults


def write_data_args(args: argparse.Namespace, task: str, out: Path) -> None:
    """Record the data flags of a run in OUT/data_args.json, so `embslim slice` loads the same data."""
    from embslim.train.slice import DATA_ARGS

    values = {k: getattr(args, k) for k in DATA_FLAGS}
    values["task"] = task
    out.mkdir(parents=True, exist_ok=True)
    (out / DATA_ARGS).write_text(json.dumps({k: str(v) if isinstance(v, Path) else v for k, v in values.items()}, indent=1))


def cmd_train_stream(args: argparse.Namespace) -> int:
    """`train --stream`: count the stream's values, build the model on them, train one epoch chunk by chunk."""
    from embslim.data.stream import count_pass, synthetic_chunks, text_chunks
    from embslim.train.stream import run_stream, skeleton, stream_config

    if args.task not in (None, "ctr") or args.history or args.resume or args.ctr_negatives or args.split != "random":
        raise ConfigError("--stream trains CTR rows and holds out the stream's last rows: leave out --history, --resume, "
                          "--split and --ctr-negatives")
    source_info = get_source(args.dataset)
    min_count = args.min_count if args.min_count is not None else source_info.min_count
    stream = stream_config(min_count, chunk_rows=args.stream_chunk_rows, eval_rows=args.stream_eval_rows, drift=args.drift)
    if args.dataset in SYNTHETIC_SHAPES:
        source = synthetic_chunks(synthetic_config(args.dataset, args.synthetic_rows), stream.chunk_rows, stream.drift)
    else:
        if args.drift:
            raise ConfigError("--drift shifts a generated stream; a file's order is its own")
        source = text_chunks(args.dataset, resolve_path(source_info, args.data_path), args.max_bad_rows)
    source.name = args.dataset
    plan = count_pass(source, stream)
    data = skeleton(source.name, plan)
    config = configs_from_args(args, data)
    if args.epochs is None:
        config = replace(config, train=replace(config.train, epochs=1))
    out = args.out or Path("runs") / f"train-{args.dataset}-stream-{args.model}-seed{args.seed}"
    results = run_stream(source, stream, config, out, plan)
    print_summary(results, out)
    t = results["timing"]
    print(f"stream: {plan.rows:,} rows; counting pass {t['count_pass_rows_per_second']:,.0f} rows/s; "
          f"training {t['train_samples_per_second']:,.0f} samples/s; peak RSS {t['peak_rss_mb']:,.0f} MB")
    return 0


def cmd_train_online(args: argparse.Namespace) -> int:
    """`train --stream --online`: score then train each chunk of the stream once, on hashed raw ids."""
    from embslim.data.stream import rechunk, synthetic_chunks, text_chunks
    from embslim.train.online import DEFAULT_ID_SPACE, raw_skeleton, run_online

    if args.task not in (None, "ctr") or args.history or args.resume or args.ctr_negatives or args.split != "random":
        raise ConfigError("--online trains CTR rows, each chunk scored before it is trained on: leave out --history, "
                          "--resume, --split and --ctr-negatives")
    if args.stream_eval_rows is not None:
        raise ConfigError("--online scores every chunk before training on it (progressive validation); --stream-eval-rows does not apply")
    if args.min_count is not None:
        raise ConfigError("--online builds no vocabulary, so --min-count does not apply; collisionless admits ids after "
                          "--embedding-opt min_count=N sightings")
    if args.epochs not in (None, 1):
        raise ConfigError("--online reads the stream once; leave --epochs at 1")
    chunk_rows = args.stream_chunk_rows or 262_144
    if args.dataset in SYNTHETIC_SHAPES:
        source = synthetic_chunks(synthetic_config(args.dataset, args.synthetic_rows), chunk_rows, args.drift or 0.0)
    else:
        if args.drift:
            raise ConfigError("--drift shifts a generated stream; a file's order is its own")
        source = rechunk(text_chunks(args.dataset, resolve_path(get_source(args.dataset), args.data_path), args.max_bad_rows), chunk_rows)
    source.name = args.dataset
    id_space = args.id_space or DEFAULT_ID_SPACE
    config = configs_from_args(args, raw_skeleton(source.name, source.field_names, id_space))
    config = replace(config, train=replace(config.train, epochs=1))
    out = args.out or Path("runs") / f"train-{args.dataset}-online-{args.model}-{args.embedding}-seed{args.seed}"
    results = run_online(source, config, out, id_space, hash_seed=0)
    p, m = results["metrics"], results["memory"]
    after = p.get("progressive_after_first_chunk", p["progressive"])
    print(f"{args.dataset} online {args.model} {args.embedding}: {results['data']['rows']:,} rows in {results['data']['chunks']} chunks; "
          f"progressive AUC {after['auc']:.4f}, logloss {after['logloss']:.4f} (after the first chunk; all: {p['progressive']['auc']:.4f})")
    print(f"memory: held at most {m['max_held_bytes']:,} bytes (cap {m['cap_bytes'] or 'none'}), serve up to {m['max_serve_bytes']:,}, "
          f"train up to {m['max_train_bytes']:,}; peak RSS {m['peak_rss_mb']:,.0f} MB")
    print(f"results: {out / 'results.json'}  plot: {out / 'online.png'}")
    return 0


def cmd_train(args: argparse.Namespace) -> int:
    """Train in this process, in `--nproc` processes spawned here, or as one rank of a torchrun job (RANK/WORLD_SIZE set)."""
    from embslim.train import distributed
    from embslim.train.run import run

    if args.online and not args.stream:
        raise ConfigError("--online reads a stream: add --stream")
    if args.id_space is not None and not args.online:
        raise ConfigError("--id-space sizes the hashed ids of --online training: add --stream --online")
    launched = distributed.init_from_env()
    nproc = args.nproc or (launched.world_size if launched else 1)
    if launched and nproc != launched.world_size:
        raise ConfigError(f"--nproc {nproc} under a launcher of {launched.world_size} processes: leave --nproc out under torchrun")
    if args.online:
        if nproc > 1:
            raise ConfigError("--online trains in one process; leave out --nproc (and torchrun)")
        return cmd_train_online(args)
    if args.stream:
        if nproc > 1:
            raise ConfigError("--stream trains in one process; leave out --nproc (and torchrun)")
        return cmd_train_stream(args)
    try:
        data = load_from_args(args)
        config = configs_from_args(args, data)
        out = args.out or Path("runs") / f"train-{args.dataset}-{data.task}-{args.model}-seed{args.seed}"
        if distributed.is_main():
            write_data_args(args, data.task, out)
            if (out / "results.json").exists() and not args.resume:
                (out / "checkpoint.pt").unlink(missing_ok=True)
        if nproc > 1 and not launched:
            distributed.spawn_run(distributed.run_worker, (data, config, out, args.resume), nproc)
            results = json.loads((out / "results.json").read_text())
        else:
            distributed.broadcast(None)  # under torchrun: no rank starts before rank 0 has cleared the old checkpoint
            results = run(data, config, out, resume=args.resume)
        if distributed.is_main():
            print_summary(results, out)
    finally:
        if launched:
            torch_distributed_done()
    return 0


def torch_distributed_done() -> None:
    import torch.distributed as dist

    if dist.is_initialized():
        dist.destroy_process_group()


def cmd_search(args: argparse.Namespace) -> int:
    from embslim.search.dnis import DNISConfig
    from embslim.search.pipeline import run_search
    from embslim.search.report import summary_lines

    data = load_from_args(args)
    budget_flag = args.budget
    args.budget = None
    config = configs_from_args(args, data)
    names = model_class(args.model).select_fields(data.table.fields, data.user_field, data.item_field)
    fields = data.select_fields(names).table.fields
    budget = budget_bytes(budget_flag, fields, args.dim)
    tuned = {"align": args.align} if args.align is not None else {}
    dnis = DNISConfig(blocks=args.blocks, l1=args.l1, alpha_lr=args.alpha_lr, search_epochs=args.search_epochs,
                      frequency_exponent=args.frequency_exponent, min_dims=args.min_dims, fine_tune=not args.from_scratch,
                      fine_tune_network=args.fine_tune_network,
                      fine_tune_from=args.fine_tune_from,
                      prune_during_search=args.prune_during_search, threshold=args.threshold, score=args.score, fill=args.fill,
                      fill_temperature=args.fill_temperature, fill_rank=args.fill_rank, search_holdout=args.search_holdout,
                      search_trains_weights=args.search_trains_weights, retrain=args.retrain, precision=args.precision, **tuned)
    out = args.out or Path("runs") / f"search-{args.dataset}-{data.task}-{args.model}-b{budget_flag}-seed{args.seed}"
    write_data_args(args, data.task, out)
    baselines = tuple(b for b in args.baselines.split(",") if b)
    report = run_search(data, config, budget, dnis, out, resume=args.resume, baselines=baselines)
    print("\n".join(summary_lines(report)))
    print(f"report: {out / 'report.json'}  layout: {out / 'layout.json'}  plot: {out / 'kept_dims.png'}")
    return 0


def cmd_slice(args: argparse.Namespace) -> int:
    from embslim.train.run import model_data
    from embslim.train.slice import read_run, slice_run

    source = read_run(args.run)
    for key, default in DATA_FLAGS.items():
        if getattr(args, key) is None:
            value = source.data_args.get(key, default)
            setattr(args, key, Path(value) if key in ("data_path", "schema") and value is not None else value)
    require_extras(args)
    data = load_from_args(args)
    fields = model_data(data, source.config.model).table.fields
    budget = budget_bytes(args.budget, fields, source.config.embedding.dim)
    results = slice_run(source, data, budget, args.out, args.fine_tune_epochs, args.budget, args.val_rows, progress=not args.quiet,
                        precisions=tuple(p for p in args.precisions.split(",") if p))
    print(f"sliced {args.run} ({results['slice']['source_method']}, {results['slice']['source_bytes']:,} bytes) "
          f"to {results['embedding']['bytes']:,} bytes (budget {budget:,})")
    print_summary(results, args.out)
    return 0


def cmd_export(args: argparse.Namespace) -> int:
    from embslim.serve.export import export_run

    manifest = export_run(args.run, args.out)
    b = manifest["bytes"]
    print(f"exported {args.run} ({manifest['method']}, {manifest['model']}, {manifest['task']}) to {args.out}")
    print(f"embedding.safetensors: {b['embedding_file']:,} bytes = {b['embedding_tensors']:,} tensor bytes (memory_bytes serve "
          f"{b['memory_bytes_serve']:,}) + {b['safetensors_header']:,} header")
    print(f"model.ts: {b['program_file']:,} bytes ({b['program_backbone_tensors']:,} backbone tensors, "
          f"{b['program_constants']:,} lookup constants, the rest code)")
    return 0


def cmd_bench(args: argparse.Namespace) -> int:
    from dataclasses import replace as dc_replace

    from embslim.bench.grid import PRESETS, BenchSpec, benchmark_methods, spec_dict
    from embslim.bench.report import PRIMARY, machine_line, plot_pareto, summarise, write_markdown, write_table
    from embslim.bench.runner import run_grid

    spec = PRESETS[args.preset] if args.preset else BenchSpec()
    overrides = {}
    for key in ("dataset", "task", "model", "dim", "epochs", "patience", "synthetic_rows"):
        value = getattr(args, key, None)
        if value is not None:
            overrides[key] = value
    if args.data_path:
        overrides["data_path"] = str(args.data_path)
    if args.methods:
        overrides["methods"] = tuple(benchmark_methods()) if args.methods == "all" else tuple(args.methods.split(","))
    if args.budgets:
        overrides["budgets"] = args.budgets
    if args.seeds:
        overrides["seeds"] = args.seeds
    if args.dnis:
        overrides["dnis"] = {**spec.dnis, **args.dnis}
    if args.method_opt:
        overrides["method_options"] = {**spec.method_options, **parse_method_options(args.method_opt)}
    spec = dc_replace(spec, **overrides)
    out = args.out or Path("runs") / f"bench-{args.preset or spec.dataset}"
    data_task = spec.task or get_source(spec.dataset).default_task
    rows = run_grid(spec, out, workers=args.workers, ray_address=args.ray_address, progress=not args.quiet)
    metric = PRIMARY[data_task]
    write_table(rows, out)
    summary = summarise(rows, metric)
    title = f"{spec.dataset} {data_task} {spec.model}: test {metric} against embedding bytes"
    plot_pareto(summary, metric, out, title)
    from_command_line = sys.argv[0].endswith("embslim") or Path(sys.argv[0]).parts[-2:] == ("embslim", "cli.py")  # or python -m embslim.cli
    command = "embslim " + " ".join(sys.argv[1:]) if from_command_line else "embslim bench (library call)"
    header = [f"# {title}", "", f"Command: `{command}`", "", machine_line(), "", f"Spec: `{json.dumps(spec_dict(spec))}`"]
    write_markdown(summary, metric, out, header, spec.budgets)
    (out / "spec.json").write_text(json.dumps(spec_dict(spec), indent=1))
    print((out / "report.md").read_text())
    print(f"results: {out / 'results.csv'}  plot: {out / 'pareto.png'}  report: {out / 'report.md'}")
    return 0


def print_summary(results: dict, out: Path) -> None:
    emb = results["embedding"]
    test = headline_metrics(results["metrics"]["test"])
    print(f"{results['config']['dataset']} {results['config']['task']} {results['config']['model']}: test {test}")
    print(f"embedding: {emb['method']} {emb['params']:,} params, {emb['bytes']:,} bytes to serve, {emb['train_bytes']:,} bytes to train")
    t = results["timing"]
    print(f"time: {t['wall_seconds']:.1f}s wall, {t['train_samples_per_second']:,.0f} train samples/s")
    print(f"results: {out / 'results.json'}")


def cmd_data_info(args: argparse.Namespace) -> int:
    data = load_from_args(args)
    info = {k: v for k, v in data.info.items()}
    if args.json:
        print(json.dumps(info, indent=2, default=float))
        return 0
    print(f"dataset {data.name}, task {data.task}, rows {info['rows']}")
    for read in info.get("reads", []):
        print(f"{read['path']}: read {read['rows_read']:,} = used {read['rows_used']:,} + rejected {read['rows_rejected']:,}")
        for reason, n in read["reasons"].items():
            print(f"    rejected {n:,}: {reason}")
        for example in read["examples"][:3]:
            print(f"    e.g. {example}")
    print(f"fields (min count {info.get('min_count')}):  distinct values in train -> table rows incl. OOV (OOV share of train)")
    for name, s in info["fields"].items():
        print(f"  {name:<14} {s['distinct_in_train']:>9,} -> {s['cardinality']:>9,}  ({s['oov_share_of_train']:.1%})")
    if "history" in info:
        h = info["history"]
        print(f"history: last {h['max_length']} earlier items per row, read through {h['reads_table_of']}'s table "
              f"(mean length {h['mean_length']:.1f}, empty {h['empty_share']:.1%})")
    return 0


def cmd_data_fetch(args: argparse.Namespace) -> int:
    source = get_source(args.name)
    if source.archive is None and args.url is None:
        raise ConfigError(f"dataset {args.name} cannot be fetched automatically: {source.manual or 'it is generated'}")
    archive = source.archive or Archive(args.url, None, args.name)
    if args.url:
        archive = replace(archive, url=args.url)
    if args.checksum:
        archive = replace(archive, checksum=args.checksum)
    dest = args.dest or data_dirs()[0]
    folder = fetch_archive(archive, dest, args.allow_unverified, progress=not args.quiet)
    print(f"{args.name}: {folder}")
    return 0


def cmd_list(args: argparse.Namespace) -> int:
    print("datasets:   " + ", ".join(sorted(DATASETS)) + ", tabular")
    print("models:     " + ", ".join(list_models()))
    print("embeddings:")
    for name in list_embeddings():
        print("  " + describe_method(name))
    return 0


def describe_method(name: str) -> str:
    """One line: name, kind, and settings with their defaults."""
    from dataclasses import MISSING, fields

    info = method_info(name)
    kind = {"scratch": "trained from scratch", "trained": "converted from the trained full model", "search": "searched"}[info.source]
    settings = ", ".join(f"{f.name}={f.default if f.default is not MISSING else '(required)'}" for f in fields(info.settings))
    return f"{name:<10} {kind}{', built from a budget' if info.budgeted else ''}; settings: {settings or 'none'}"


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="embslim",
        description="Right-sized embedding tables for recommender models. Start with `embslim train` (generated data, no download).",
        epilog="Data folders are looked up under $EMBSLIM_DATA_DIR; caches go to $EMBSLIM_CACHE_DIR (default ~/.cache/embslim).",
    )
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser("train", help="train one model and write results.json", description="Train a backbone over an embedding method; writes OUT/results.json, OUT/checkpoint.pt and OUT/embedding.safetensors.")
    add_train_args(p)
    add_stream_args(p)
    p.add_argument("--nproc", type=positive_int,
                   help="train data-parallel in N processes on this machine (gloo, tables replicated, each process a slice "
                        "of every --batch-size batch); under torchrun, leave it out: the launcher's processes train (default 1)")
    p.set_defaults(func=cmd_train)
    p = sub.add_parser("search", help="DNIS: search mixed dimensions, prune to a budget, retrain; with baselines",
                       description="Train the full model, search a soft selection layer on validation loss (DNIS), prune to --budget, "
                                   "retrain the slim model, and train the uniform and MDE baselines at the same bytes. Writes OUT/report.json.")
    add_train_args(p)
    p.set_defaults(budget="0.2")
    s = p.add_argument_group("search")
    s.add_argument("--blocks", type=blocks_spec, default=6, help="frequency blocks per field: a count (equal frequency mass) or fractions of rows, e.g. 0.01,0.1,1")
    s.add_argument("--l1", type=non_negative_float, default=1e-5, help="L1 penalty on alpha (default 1e-5)")
    s.add_argument("--alpha-lr", type=learning_rate, default=0.01, help="Adam learning rate of alpha (default 0.01)")
    s.add_argument("--search-epochs", type=positive_int, default=2, help="epochs of bi-level search after the full model (default 2)")
    s.add_argument("--score", choices=["loss", "magnitude"], default="loss",
                   help="what pruning ranks (block, dimension) pairs by: loss = the validation loss increase of dropping it, per byte "
                        "(default); magnitude = E|e*alpha| times block frequency to --frequency-exponent")
    s.add_argument("--fill", action=argparse.BooleanOptionalAction, default=True,
                   help="with --score loss: spend budget the evidence leaves by MDE's power law of block frequency (default); "
                        "--no-fill keeps only the pairs whose loss increase clears its confidence bound, and reports the bytes they need")
    s.add_argument("--fill-temperature", type=non_negative_float, default=0.3,
                   help="with --fill: blocks of frequency p get widths in proportion to p to this power (MDE's temperature, default 0.3)")
    s.add_argument("--fill-rank", type=fill_rank, default="scaled",
                   help="with --fill: the frequency prior put in the evidence's loss units, each pair scoring the larger of "
                        "the two (scaled, default), or ranked below every pair with evidence (below)")
    s.add_argument("--frequency-exponent", type=non_negative_float, default=0.25,
                   help="with --score magnitude: weight of block frequency, 0 importance only, 1 signal per byte (default 0.25)")
    s.add_argument("--min-dims", type=non_negative_int, default=1, help="dimensions every block keeps before the rest is ranked (default 1)")
    s.add_argument("--from-scratch", action="store_true",
                   help="retrain the slim model from a fresh initialisation instead of from the pruned, alpha-scaled searched weights")
    s.add_argument("--fine-tune-network", type=network_start, default="auto",
                   help="where the retrain's network starts: start = the network of the weights it starts from, fresh = a new "
                        "initialisation (only the embedding values carry over), auto = fresh for a rating or CTR model "
                        "started from the searched values, start otherwise (default)")
    s.add_argument("--fine-tune-from", type=fine_tune_source, default="auto",
                   help="the weights the retrain starts from under the searched mask: search = the searched e * alpha and "
                        "network; full = the full model the search began with (holds LR's accuracy, loses a little on the "
                        "other backbones measured); auto = full for backbones that read each field along one direction "
                        "(LR), search for the rest (default)")
    s.add_argument("--search-trains-weights", action=argparse.BooleanOptionalAction, default=True,
                   help="train the model's weights beside alpha during the search (default); --no-search-trains-weights "
                        "moves alpha only (one-pass data such as Criteo, where a second pass over the rows memorises)")
    s.add_argument("--retrain", action=argparse.BooleanOptionalAction, default=True,
                   help="retrain the pruned model (default); --no-retrain serves the pruned searched model as it is "
                        "(with --no-search-trains-weights: the full model, alpha-scaled and pruned, no second pass)")
    s.add_argument("--search-holdout", type=holdout_fraction, default=SEARCH_HOLDOUT,
                   help="rating/CTR: fit alpha and the pruning scores on this share of the training rows, held out from the "
                        "search's training, instead of the validation split that selects the retrained model (0: validation; "
                        f"default {SEARCH_HOLDOUT:g})")
    s.add_argument("--precision", choices=PRECISIONS, default="fp32",
                   help="how the pruned table stores its values: fp32 (default), fp16, or int8 (row-wise codes with an fp16 "
                        "scale and bias per row); the budget counts those bytes, so more dimensions fit, and the retrain "
                        "trains through the rounding")
    s.add_argument("--threshold", type=non_negative_float,
                   help="prune by a fixed importance threshold (keep block dimensions with E|e*alpha| >= it) instead of "
                        "--budget; the baselines get the bytes it reached")
    s.add_argument("--prune-during-search", action="store_true",
                   help="prune gradually to the budget during the search (cubic schedule) instead of once after it")
    s.add_argument("--align", action=argparse.BooleanOptionalAction, default=None,
                   help="rotate the full model's embeddings to their principal axes before the search, where the backbone "
                        "is invariant to it (MF, FM, DeepFM, LR; default on, skipped for the others)")
    s.add_argument("--baselines", default="uniform,mde", help="baselines at the same bytes (default uniform,mde; empty for none)")
    p.set_defaults(func=cmd_search)
    data = sub.add_parser("data", help="fetch datasets or report what a dataset holds").add_subparsers(dest="data_command", required=True)
    p = data.add_parser("info", help="rows read/used/rejected and per-field cardinalities")
    add_data_args(p)
    p.add_argument("name", nargs="?", help="dataset (same as --dataset)")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_data_info)
    p = data.add_parser("fetch", help="download an official archive and verify its checksum")
    p.add_argument("name", choices=sorted(DATASETS))
    p.add_argument("--dest", type=Path, help="folder to extract into (default $EMBSLIM_DATA_DIR or ~/.cache/embslim/data)")
    p.add_argument("--url", help="mirror to download from instead of the official address (file:// works)")
    p.add_argument("--checksum", help="expected ALGO:HEX of the archive, e.g. md5:0e33...")
    p.add_argument("--allow-unverified", action="store_true", help="accept an archive with no published checksum")
    p.add_argument("--quiet", action="store_true")
    p.set_defaults(func=cmd_data_fetch)
    p = sub.add_parser("bench", help="every method at every budget and seed: results table, Pareto chart, report",
                       description="Benchmark embedding methods at byte budgets on one dataset and backbone. Finished runs are kept on disk; rerunning skips them.")
    p.add_argument("--preset", choices=["smoke", "paper", "paper-rating", "criteo-shaped"],
                   help="smoke: generated data, < 3 minutes; paper: MovieLens-100K CTR DeepFM grid; paper-rating: MovieLens-100K "
                        "rating MF grid; criteo-shaped: 26 generated fields with Criteo's cardinalities (up to 1M ids), 2M rows, the methods that reach 100x and 1000x")
    p.add_argument("--dataset")
    p.add_argument("--task", choices=["ctr", "rating", "topk"])
    p.add_argument("--data-path", type=Path)
    p.add_argument("--model", choices=list_models())
    p.add_argument("--dim", type=positive_int)
    p.add_argument("--methods", help="comma-separated, or 'all' (full, uniform, dnis and every budgeted method in the registry)")
    p.add_argument("--budgets", type=budget_fractions, help="fractions of the full table, e.g. 1,0.5,0.2,0.1,0.05,0.01")
    p.add_argument("--seeds", type=seed_set, help="N: seeds 0..N-1; or a comma-separated list of seeds, e.g. 3,4")
    p.add_argument("--epochs", type=positive_int)
    p.add_argument("--patience", type=positive_int, help="every cell's early-stopping patience, over the recipe's (e.g. 2 reproduces CTR grids measured before 2026-11-27)")
    p.add_argument("--synthetic-rows", type=positive_int)
    p.add_argument("--dnis", type=dnis_options, help="DNIS settings for the dnis cells, e.g. fine_tune=false,search_epochs=1 (see DNISConfig)")
    p.add_argument("--method-opt", action="append", metavar="METHOD:KEY=VALUE",
                   help="a setting of one method's cells, repeatable, e.g. hash:shared=true (see `embslim list`)")
    p.add_argument("--workers", type=positive_int, default=2, help="local worker processes (default 2)")
    p.add_argument("--ray-address", help="run the cells as Ray tasks on this cluster ('local' starts one here)")
    p.add_argument("--out", type=Path)
    p.add_argument("--quiet", action="store_true")
    p.set_defaults(func=cmd_bench)
    p = sub.add_parser("slice", help="serve one trained run at a smaller budget, without retraining",
                       description="Turn a finished run (an `embslim train` folder of a sliceable method such as nested, or an "
                                   "`embslim search` folder) into a servable artifact of at most --budget bytes, chosen by validation "
                                   "loss, evaluated on the run's own test split. Writes OUT/results.json (train's shape plus a `slice` "
                                   "record) and OUT/embedding.safetensors. The data flags default to the run's (OUT/data_args.json).")
    p.add_argument("run", type=Path, help="folder of the finished run to slice")
    p.add_argument("--budget", type=budget_text, required=True, help="fraction of the full table at the run's --dim (0.2) or bytes (150000, 512KiB)")
    p.add_argument("--out", type=Path, required=True, help="folder of the sliced run")
    p.add_argument("--fine-tune-epochs", type=non_negative_int, default=0, help="at most this many epochs of training after slicing, stopped early by the run's patience on validation; the slice before them is kept if no epoch beats it (default 0)")
    p.add_argument("--val-rows", type=positive_int, default=20_000, help="validation rows the width choice measures (default 20000)")
    p.add_argument("--precisions", default=",".join(SLICE_PRECISIONS),
                   help="storage precisions a slice may use for its values, one for the whole table, the best on held-out "
                        f"validation rows wins: some of fp32,fp16,int8,int4 (default {','.join(SLICE_PRECISIONS)})")
    p.add_argument("--quiet", action="store_true")
    add_data_args(p)
    p.set_defaults(func=cmd_slice, **{k: None for k in DATA_FLAGS})
    p = sub.add_parser("export", help="write an inference artifact of a trained run (TorchScript + safetensors, runs without embslim)",
                       description="Export a finished `embslim train` or `embslim slice` folder: OUT/embedding.safetensors (the "
                                   "embedding's tensors, exactly its serving bytes plus the safetensors header), OUT/model.ts "
                                   "(TorchScript lookup and backbone, taking those tensors as inputs), OUT/manifest.json and "
                                   "OUT/serve.py (a loader that needs only torch and safetensors).")
    p.add_argument("run", type=Path, help="folder of the finished run to export")
    p.add_argument("--out", type=Path, required=True, help="folder of the artifact")
    p.set_defaults(func=cmd_export)
    p = sub.add_parser("list", help="list datasets, models and embedding methods")
    p.set_defaults(func=cmd_list)
    return parser


def require_extras(args: argparse.Namespace) -> None:
    """Optional dependencies that the flags ask for, checked before any data is read or model trained."""
    path = getattr(args, "data_path", None)
    if path is not None and path.suffix == ".parquet":
        require("pyarrow", "reading Parquet")
    if getattr(args, "ray_address", None):
        require("ray", "--ray-address")
    if (getattr(args, "table_optimizer", None) or "").startswith("fbgemm-"):
        require("fbgemm_gpu", f"--table-optimizer {args.table_optimizer}")


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if getattr(args, "name", None) and args.command == "data" and args.data_command == "info":
        args.dataset = args.name
    try:
        require_extras(args)
        return args.func(args)
    except EmbslimError as exc:
        print(f"embslim: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("embslim: interrupted; finished epochs are checkpointed, rerun with --resume", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
