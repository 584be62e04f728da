"""Deployment files (Dockerfile, compose GPU override, Kubernetes manifests) and the example trainer.

A package only so that `python -m deploy.example_trainer` runs from the repository root or the image.
"""
