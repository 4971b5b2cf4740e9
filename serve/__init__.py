"""Ray Serve apps: HTTP endpoints for the models in the MLflow registry.

`serve.app:build_app` is the application builder (`serve run serve/config.yaml`); the model
deployment lives in `model_deployment.py`, request parsing and encoding in `codec.py`, the model
step (plain torch, no Ray) in `inference.py`.
"""
