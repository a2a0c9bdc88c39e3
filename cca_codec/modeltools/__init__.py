"""Tools that make new model directories from existing weights: official checkpoints, widening, quality-table extension."""
