"""Models (models.py: registered kinds, one `create_model` factory, timm backbones) and losses."""
