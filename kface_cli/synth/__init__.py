"""The synthetic K-Face generator behind ``kface sample-data`` and the bundled ``sample_data/``:
``identity`` (who), ``head`` (the 3D head), ``generator`` (one rendered photo and its annotation),
``sample_data`` (the zips on disk)."""
