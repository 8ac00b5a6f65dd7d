"""A synthetic dataset in the exact Kaggle HMS layout (`dataset.py`: `synthesize`), with planted, learnable
class patterns (`patterns.py`), optionally with the competition's table structure (`competition.py`)."""
