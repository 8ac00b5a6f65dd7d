"""`hms-prep build`: which arrays and chunks are missing, computing them on Dask or in this process,
and recording status, failures and labels.parquet. run.py is the driver; task.py one chunk's task.
"""
