"""Data preparation: streaming readers, pretokenization, sample-index maps and the demo corpus."""
