"""Measuring the codec: BD-rate, classical codecs, RD evaluation, side-by-side comparison, HTML reports, stage timing, the reconstruction ceiling. Never imports training."""
