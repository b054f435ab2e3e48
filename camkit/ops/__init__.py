"""Pure tensor kernels, batched on the device: maps, weighting, filters, distances, dbscan, quantiles, pca, images, imputation."""
