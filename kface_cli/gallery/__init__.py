"""The gallery: enrolled face templates and searching them.

* :mod:`~kface_cli.gallery.store`: the HDF5 file (schema, crash-safe batched appends, the lock).
* :mod:`~kface_cli.gallery.index`: the FAISS index beside it (kind chosen by size, staleness).
* :mod:`~kface_cli.gallery.enroll`: folders of photos -> templates (``kface enroll``).
* :mod:`~kface_cli.gallery.identify`: photos, videos, a webcam -> names (``kface identify``).
* :mod:`~kface_cli.gallery.draw`: boxes and names in any script drawn on images.
* :mod:`~kface_cli.gallery.manage`: facts, identities, removal, index rebuild (``kface gallery``).

Nothing heavy is imported here (h5py and faiss load inside the functions that use them).
"""
