"""embslim as a torch.nn library: drop-in tables and a collection in TorchRec's shape.

    bag = embslim.nn.EmbeddingBag(n, d, mode="sum", method="qr", budget_bytes=0.1, counts=counts)

DNIS in your own loop: `embslim.nn.DNISSearch` (see embslim.nn.search).
"""
from embslim.nn.collection import EmbeddingBagCollection, TableConfig
from embslim.nn.optim import TableAdam, sparse_table_parameters
from embslim.nn.search import DNISSearch
from embslim.nn.tables import Embedding, EmbeddingBag

__all__ = ["DNISSearch", "Embedding", "EmbeddingBag", "EmbeddingBagCollection", "TableAdam", "TableConfig", "sparse_table_parameters"]
