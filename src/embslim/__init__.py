"""embslim: right-sized embedding tables for recommender models."""
__version__ = "0.1.0"
