"""Rows to batches: reader.py (`StoreReader`: select rows, stream batches), sampler.py (an epoch's plan),
chunks.py (a chunk of every input decoded), assembly.py (rows copied into the batch), prefetch.py."""
