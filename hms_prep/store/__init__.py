"""The store on disk: format.py (the Zarr v3 layout, labels.parquet, build state, `describe_arrays`),
codecs.py (each codec declared once: writer, checked decoder, whole-chunk reads and writes), lock.py
(one builder at a time). Knows no preprocessing math: the trainer's reader imports it.
"""
