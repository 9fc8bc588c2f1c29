"""The synthetic K-Face generator behind ``kface sample-data`` and the bundled ``sample_data/``."""
