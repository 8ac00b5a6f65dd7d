"""The model's image on the device: layout.py (which arrays, where, cropped how: data), compose.py (the
tensor work), augment.py (batched training augmentations)."""
