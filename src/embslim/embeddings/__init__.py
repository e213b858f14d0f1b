"""Embedding methods behind one interface; importing a method's module registers it."""
from embslim.embeddings import blockwise, dnis, full, mde  # noqa: F401  (register methods)
from embslim.embeddings.base import EmbeddingConfig, FeatureEmbedding
from embslim.embeddings.batch import SparseBatch
from embslim.embeddings.registry import create_embedding, list_embeddings, load_artifact, register_embedding

__all__ = ["EmbeddingConfig", "FeatureEmbedding", "SparseBatch", "create_embedding", "list_embeddings", "load_artifact", "register_embedding"]
