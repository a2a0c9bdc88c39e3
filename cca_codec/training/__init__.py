"""Training: data packs, the training loop, data-parallel plumbing, and the background run."""
