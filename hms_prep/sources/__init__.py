"""Data in: the Kaggle folder's files and what is derived from them alone.

kaggle.py (paths and validated readers), rows.py (train.csv -> planned rows in store order, folds,
targets, raw segments), montage.py and signal_filter.py (bipolar signals, NaN repair, band-pass),
recordings.py (a file opened once per chunk for every kind). Imports only hms_prep.domain and the store
format's `digest`.
"""
