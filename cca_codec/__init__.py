"""ccacodec: a learned image codec built on the CCA-loss network (Han et al., NeurIPS 2024)."""
__version__ = "0.1.0"
