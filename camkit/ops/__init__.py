"""Batched tensor kernels: channel weightings, map post-processing, clustering, filters."""
