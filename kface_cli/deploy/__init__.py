"""Deployment: what the commands that use a model share, and their library functions.

* :mod:`~kface_cli.deploy.model`: the model a command uses (a loader called late), as results report
  it, and the distance threshold it applies (given, calibrated or the default).
* :mod:`~kface_cli.deploy.sources`: photos, folders, videos and webcams in, one frame at a time.
* :mod:`~kface_cli.deploy.enroll`: folders of photos -> gallery templates (``kface enroll``).
* :mod:`~kface_cli.deploy.bulk`: embedding files -> gallery templates (``kface enroll --embeddings``).
* :mod:`~kface_cli.deploy.identify`: photos, videos, a webcam -> names (``kface identify``).
* :mod:`~kface_cli.deploy.compare`: two photos -> same person? (``kface verify``); photos ->
  embedding file (``kface embed``).
* :mod:`~kface_cli.deploy.detect`: photos -> face boxes and 5 points (``kface detect``).
* :mod:`~kface_cli.deploy.draw`: boxes and names in any script drawn on images.

Nothing heavy is imported here.
"""
