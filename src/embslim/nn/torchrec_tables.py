"""embslim tables handed to TorchRec, for the methods TorchRec has an equivalent of, so that TorchRec's planner and
`DistributedModelParallel` shard them (table-, row- or column-wise, FBGEMM's fused kernels and optimisers).

    ebc = embslim.nn.to_torchrec(collection)            # a TorchRec EmbeddingBagCollection holding the same rows
    model = DistributedModelParallel(...)                # shards it as it shards any TorchRec collection
    embslim.nn.load_sharded_weights(model, embslim.nn.table_weights(collection))   # into each rank's shards

TorchRec's trainable tables are dense float rows, so `full` is the one method it trains exactly. `int8` and `int4`
tables are served by TorchRec's quantized collection (`torchrec.quant`): row-wise codes (FBGEMM's packing) with an
fp16 scale and bias per row, the same numbers embslim stores, copied over, so TorchRec serves exactly the values
embslim serves. Every other method stores its values in a form TorchRec's tables do not have (shared hashed rows,
mixed widths per block, factored or pruned tables, int2 packing, collisionless admission and expiry):
`why_no_torchrec_table` says so, and `embslim.nn.ShardedEmbeddingBagCollection` shards those table-wise itself.
"""
from __future__ import annotations

from typing import Any, Mapping

import torch
from torch import nn

from embslim.errors import ConfigError
from embslim.extras import require
from embslim.nn.collection import EmbeddingBagCollection


SERVED_AS = {"full": "FP32", "int8": "INT8", "int4": "INT4"}  # methods TorchRec holds exactly, and its DataType for them
NO_EQUIVALENT = {  # where a TorchRec module of the same idea exists but holds other values
    "collisionless": "TorchRec's managed-collision tables remap ids by their own eviction policy, not embslim's admission counts and "
                     "expiry, so the rows would not carry over",
}


def why_no_torchrec_table(method: str, training: bool = False) -> str | None:
    """None where TorchRec's tables hold the method's tables exactly (full: trainable; int8: served only), else why not."""
    if method == "full" or (method in SERVED_AS and not training):
        return None
    if method in SERVED_AS:
        return (f"method {method!r} is served by TorchRec's quantized tables but not trained by them: train it as full, "
                f"or shard it with embslim.nn.ShardedEmbeddingBagCollection")
    if method in NO_EQUIVALENT:
        return f"method {method!r} has no TorchRec table equivalent: {NO_EQUIVALENT[method]}"
    return (f"method {method!r} has no TorchRec table equivalent (TorchRec trains dense float rows only); shard it with "
            f"embslim.nn.ShardedEmbeddingBagCollection, or train it data-parallel (embslim train --nproc)")


def table_weights(collection: EmbeddingBagCollection) -> dict[str, torch.Tensor]:
    """Each table's [rows, width] float rows by table name (a full collection only)."""
    reason = why_no_torchrec_table(collection.set.method, training=True)
    if reason:
        raise ConfigError(reason)
    emb = collection.set.embedding
    out = {}
    for i, t in enumerate(collection.tables):
        table, first = emb.table_of(i)
        out[t.name] = table.detach()[first:first + t.num_embeddings]
    return out


def torchrec_configs(collection: EmbeddingBagCollection) -> list[Any]:
    """TorchRec `EmbeddingBagConfig`s of the collection's tables (names, rows, widths, features, pooling)."""
    reason = why_no_torchrec_table(collection.set.method)
    if reason:
        raise ConfigError(reason)
    require("torchrec", "TorchRec tables")
    from torchrec.modules.embedding_configs import DataType, EmbeddingBagConfig, PoolingType

    return [EmbeddingBagConfig(name=t.name, embedding_dim=t.embedding_dim, num_embeddings=t.num_embeddings, feature_names=list(t.features()),
                               pooling=PoolingType[t.pooling.upper()], data_type=DataType[SERVED_AS[collection.set.method]])
            for t in collection.tables]


def to_torchrec(collection: EmbeddingBagCollection, device: torch.device | str | None = None) -> nn.Module:
    """A TorchRec EmbeddingBagCollection with the collection's tables and rows: same pooled outputs for the same
    KeyedJaggedTensor. On the meta device it holds configs only (what DistributedModelParallel shards; load the
    rows into the shards with `load_sharded_weights`). An int8 collection becomes TorchRec's quantized (serving)
    collection holding embslim's codes, scales and biases."""
    configs = torchrec_configs(collection)
    if collection.set.method != "full":
        return _quantized(collection, configs)
    require("torchrec", "TorchRec tables")
    from torchrec.modules.embedding_modules import EmbeddingBagCollection as TorchRecEBC

    device = torch.device(device) if device is not None else next(collection.parameters()).device
    module = TorchRecEBC(tables=configs, device=device)
    if device.type != "meta":
        weights = table_weights(collection)
        with torch.no_grad():
            for name, bag in module.embedding_bags.items():
                bag.weight.copy_(weights[name])
    return module


@torch.no_grad()
def _quantized(collection: EmbeddingBagCollection, configs: list[Any]) -> nn.Module:
    """TorchRec's quantized collection (CPU) holding the int8/int4 tables embslim serves: codes, fp16 scale and bias per row."""
    require("torchrec", "TorchRec's quantized tables")
    from torchrec.quant.embedding_modules import EmbeddingBagCollection as QuantEBC

    served = collection.set.served()
    module = QuantEBC(tables=configs, is_weighted=False, device=torch.device("cpu"), quant_state_dict_split_scale_bias=True)
    state = module.state_dict()
    for i, t in enumerate(collection.tables):
        group, member = served._place[i]
        d = served.group_dims[group]
        first = int(getattr(served, f"offsets_{d}")[member])
        rows = getattr(served, f"rows_{d}")[first:first + t.num_embeddings]
        codes = rows.shape[1] - 4  # FBGEMM's fused row: packed codes, then fp16 scale and bias
        scale_bias = rows[:, codes:].contiguous().view(torch.float16)
        weight = state[f"embedding_bags.{t.name}.weight"]
        getattr(weight, "elem", weight).copy_(rows[:, :codes])  # int4: TorchRec's UInt4Tensor wraps the packed bytes
        state[f"embedding_bags.{t.name}.weight_qscale"].copy_(scale_bias[:, :1])
        state[f"embedding_bags.{t.name}.weight_qbias"].copy_(scale_bias[:, 1:])
    return module


@torch.no_grad()
def load_sharded_weights(module: nn.Module, weights: Mapping[str, torch.Tensor]) -> int:
    """Copy full [rows, width] tables by name into the shards of them this rank holds (a DistributedModelParallel
    model or any module whose state has `embedding_bags.NAME.weight` entries, sharded or not); returns how many
    shards (or whole tables) were filled. Each shard takes the rows and columns its offsets say."""
    filled = 0
    for key, value in module.state_dict().items():
        parts = key.split(".")
        if len(parts) < 3 or parts[-1] != "weight" or parts[-3] != "embedding_bags" or parts[-2] not in weights:
            continue
        full = weights[parts[-2]]
        shards = value.local_shards() if hasattr(value, "local_shards") else None
        if shards is None:
            value.copy_(full)
            filled += 1
            continue
        for shard in shards:
            (r, c), (rows, cols) = shard.metadata.shard_offsets, shard.metadata.shard_sizes
            shard.tensor.copy_(full[r:r + rows, c:c + cols])
            filled += 1
    return filled
