"""Models (models.py: registered kinds, one `create_model` factory, timm backbones) and losses."""

# The seed's public notebooks' model kinds register themselves on import (docs/recipes.md).
from hms_train.model import features_head, resized_2d, resnet1d_gru  # noqa: F401
