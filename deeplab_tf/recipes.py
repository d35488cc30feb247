"""``deeplab_tf.recipes``: the paper's training recipes as ``model.compile`` arguments.

Example:
    >>> model.compile(**deeplab_tf.recipes.paper("resnet101", steps=20000))
"""

from deeplab_tf.training.recipes import ALIASES, get_recipe, paper, resolve_model_name

__all__ = ["ALIASES", "get_recipe", "paper", "resolve_model_name"]
