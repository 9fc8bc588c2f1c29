"""The K-Face dataset itself: its codes (S/L/E/C), its annotation files, and its zips or unpacked trees."""
