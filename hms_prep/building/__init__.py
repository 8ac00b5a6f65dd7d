"""`hms-prep build` in parts: config.py (the options, checked), plan.py (what to compute, read from the
store), execute.py (where the chunk tasks run: this process or Dask), task.py (one chunk's task),
record.py (labels.parquet, the summary); run.py is the driver that calls them in that order.
"""
