"""Pretrained model packs: the known ones, fetching them (checksummed, atomic) and finding them by name.

::

    kface models list                       known packs and the ones already fetched
    kface models get buffalo_l --accept-licence
    kface models get https://host/pack.zip --name mypack --sha256 HEX
    kface models get pack.zip --name mypack  a file downloaded by hand
    kface models remove mypack
    kface identify photo.jpg --model buffalo_l

Layout under the cache root (``$KFACE_HOME``, default the platform's user cache folder)::

    models/<name>/kface-pack.json   what the pack is: source, SHA-256, licence, which file embeds faces
    models/<name>/...               the pack's files, as its archive holds them
    models/.digests.json            the SHA-256 of each known pack and URL at its first download

A pack folder appears by one rename once everything is downloaded, verified and unpacked
(:mod:`kface_cli.hub.fetch`), so a folder with ``kface-pack.json`` is always a whole pack.
The recognition model in a pack is found by its signature, not its name
(:mod:`kface_cli.hub.signature`). This package sits below ``embedding``: it resolves a name to a
model file (:func:`kface_cli.hub.cache.resolve_pack`) and never loads a model for inference.
"""
