"""Backbones: feature extractors that declare the channels and stride of each level they emit.

Importing the package registers them all (:func:`models.registry.list_backbones`).
"""
from models.backbones import efficientnet, ghostnet, interaction, mit, mobilenetv2, resnet, resnetv2_vit  # noqa: F401
