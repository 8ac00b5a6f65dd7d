"""Models: kinds.py (the model kinds registry, one `create_model` factory), backbones.py (timm backbones,
pooling), models.py (the 2D, 1D and multimodal nets), the public notebooks' models, and losses."""

# The seed's public notebooks' model kinds register themselves on import (docs/recipes.md).
from hms_train.model import features_head, resized_2d, resnet1d_gru  # noqa: F401
