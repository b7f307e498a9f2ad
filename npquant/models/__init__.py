"""Models: float layers, their integer forms, graphs and model files.

- :mod:`~npquant.models.nn`: float layers and :class:`~npquant.models.nn.Sequential`
  models, forward and backward;
- :mod:`~npquant.models.registry`: each layer type declared once: how it is read from the
  architecture format, its integer form and its storage size;
- :mod:`~npquant.models.convert`: post-training quantization to integer models;
- :mod:`~npquant.models.graph`: graph models (residuals, concatenations) and their file;
- :mod:`~npquant.models.io`, :mod:`~npquant.models.checkpoint`: weight files and
  quantized checkpoints;
- :mod:`~npquant.models.sklearn_mlp`, :mod:`~npquant.models.cases`: a scikit-learn MLP and
  the bundled outlier case, for the demos and tutorials.
"""
