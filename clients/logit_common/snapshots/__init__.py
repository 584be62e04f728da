"""The on-disk snapshot format (manifest.py, standard library only) and its atomic writer (writer.py)."""
