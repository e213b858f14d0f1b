"""Backbones; importing a module registers its models."""
from embslim.models import collaborative, ctr, din, graph, sequential  # noqa: F401  (register models)
from embslim.models.base import ModelOptions, Recommender
from embslim.models.registry import create_model, list_models, model_class, register_model

__all__ = ["ModelOptions", "Recommender", "create_model", "list_models", "model_class", "register_model"]
