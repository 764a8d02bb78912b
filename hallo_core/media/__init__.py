"""Video and media files (PyAV): the final MP4 with sound, the lossless clip files of a render, readers and probes."""
