"""Geometry of a face in a photo: image loading, detection (boxes + 5 points), alignment."""
