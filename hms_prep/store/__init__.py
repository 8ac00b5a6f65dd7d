"""The store on disk, its format by concern: layout.py (the root's layout attributes, creating and opening
a store), arrays.py (which arrays it holds, `describe_arrays`), labels.py (labels.parquet, the row table),
build_state.py (per chunk and row build state); codecs.py (each codec declared once: writer, checked decoder, whole-chunk reads and writes), lock.py
(one builder at a time). Knows no preprocessing math: the trainer's reader imports it.
"""
