"""Entropy coding: frozen integer tables, scale-index selection and the range-coded symbol stream."""
