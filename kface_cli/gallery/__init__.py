"""The gallery: enrolled face templates, their store and their search index.

* :mod:`~kface_cli.gallery.store`: the HDF5 file (schema, crash-safe batched appends, the lock).
* :mod:`~kface_cli.gallery.index`: the FAISS index beside it (kind chosen by size, staleness).
* :mod:`~kface_cli.gallery.manage`: facts, identities, removal, index rebuild (``kface gallery``).

Enrolling photos and identifying faces against a gallery: :mod:`kface_cli.deploy`. Nothing heavy is
imported here (h5py and faiss load inside the functions that use them).
"""
