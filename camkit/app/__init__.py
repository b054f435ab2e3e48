"""The application built on the core: model loading, the demo, file io, folder runs, manifests, torchrun."""
