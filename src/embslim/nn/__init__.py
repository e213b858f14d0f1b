"""embslim as a torch.nn library: drop-in tables and a collection in TorchRec's shape.

    bag = embslim.nn.EmbeddingBag(n, d, mode="sum", method="qr", budget_bytes=0.1, counts=counts)

DNIS in your own loop: `embslim.nn.DNISSearch` (see embslim.nn.search). Table-wise sharding over
torch.distributed ranks: `embslim.nn.ShardedEmbeddingBagCollection` (see embslim.nn.shard); full tables handed to
TorchRec's own sharding: `embslim.nn.to_torchrec` (see embslim.nn.torchrec_tables).
"""
from embslim.nn.collection import EmbeddingBagCollection, TableConfig
from embslim.nn.optim import TableAdam, sparse_table_parameters
from embslim.nn.search import DNISSearch
from embslim.nn.shard import ShardedEmbeddingBagCollection, shardable, shared_storage, why_not_shardable
from embslim.nn.tables import Embedding, EmbeddingBag
from embslim.nn.torchrec_tables import load_sharded_weights, table_weights, to_torchrec, torchrec_configs, why_no_torchrec_table

__all__ = ["DNISSearch", "Embedding", "EmbeddingBag", "EmbeddingBagCollection", "ShardedEmbeddingBagCollection", "TableAdam", "TableConfig",
           "load_sharded_weights", "shardable", "shared_storage", "sparse_table_parameters", "table_weights", "to_torchrec",
           "torchrec_configs", "why_no_torchrec_table", "why_not_shardable"]
