"""Batched clustering on the device: ``camkit.cluster.dbscan`` gives scikit-learn's DBSCAN partition."""

from .ops.dbscan import dbscan, pairwise_distances

__all__ = ["dbscan", "pairwise_distances"]
