"""The codec: model directories, transform precision, encoder-side refinement, encode/decode and rate control."""
