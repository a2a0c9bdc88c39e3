"""Base helpers every layer may use: errors and exit codes, atomic file writes, stage timing, process tuning. Imports nothing of cca_codec."""
