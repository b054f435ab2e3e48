"""Pure tensor kernels, batched on the device: maps, weighting, filters, dbscan, quantiles, pca, images, imputation."""
