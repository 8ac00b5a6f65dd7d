"""Runs: config.py (recipes as checked data), forward.py (config + batch -> model inputs and predictions),
train.py (the loop), predict.py, blend.py, compare.py, metric.py, bench.py, plots.py."""
