"""Embedding methods behind one interface; importing a method's module registers it."""
from embslim.embeddings import (blockwise, cafe, collisionless, dnis, doublehash, dsl, full, hashing, lowrank, lpt, magnitude, mde, mpe,  # noqa: F401  (register methods)
                                multiplex, nested, pep, qr, quantized, robe, tt)
from embslim.embeddings.base import EmbeddingConfig, FeatureEmbedding
from embslim.embeddings.batch import SparseBatch
from embslim.embeddings.registry import (MethodInfo, convert_embedding, create_embedding, list_embeddings, load_artifact, method_info,
                                         register_embedding, unregister_embedding)
from embslim.embeddings.settings import NoSettings, settings_from, split_key_values

__all__ = ["EmbeddingConfig", "FeatureEmbedding", "MethodInfo", "NoSettings", "SparseBatch", "convert_embedding", "create_embedding",
           "list_embeddings", "load_artifact", "method_info", "register_embedding", "settings_from", "split_key_values",
           "unregister_embedding"]
