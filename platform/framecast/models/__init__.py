"""Video prediction models behind one registry: `create(name, preset=...)`."""

from framecast.models.registry import available_models, create, create_from_config, model_config

__all__ = ["available_models", "create", "create_from_config", "model_config"]
