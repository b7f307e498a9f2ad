"""Training in NumPy: backward passes, losses, optimizers, a training loop, and
quantization-aware training.

The contract every trainable piece follows (float32 throughout, NumPy arrays a student
can print):

- A float layer of :mod:`npquant.models.nn` computes ``y = layer(x)`` (also ``layer.forward(x)``).
  In training mode (``layer.train()``; ``layer.eval()`` leaves it) the forward pass keeps
  what its backward pass needs, and ``grad_x = layer.backward(grad_y)`` returns the
  gradient of the loss with respect to its input (same shape as ``x``) and *accumulates*
  the gradients of its parameters into ``layer.grads`` (``{name: array}``, the same names
  and shapes as ``layer.parameters()``; ``layer.zero_grad()`` sets them to zero).
  ``layer.parameters()`` returns the live arrays (``{"weight": W, "bias": b}``), which an
  optimizer updates in place. A layer without parameters returns ``{}``.
- ``Sequential`` follows the same contract; its ``named_parameters()`` and
  ``named_grads()`` are flat dicts keyed ``"<layer name>.<param>"`` (the state-dict keys
  of the reference models, so ``state_dict()`` round-trips with :func:`npquant.models.nn.build_model`).
- A loss is a function ``loss, grad_logits = loss_fn(logits, labels)``
  (:mod:`npquant.training.losses`).
- An optimizer (:mod:`npquant.training.optim`) holds the dict of live parameter arrays and
  updates them in place from a dict of gradients of the same keys: ``opt.step(grads)``.

Deep Compression's retraining: :mod:`npquant.training.pruning` (magnitude pruning, then
retraining with the pruned weights held at 0) and :mod:`npquant.training.kmeans_qat`
(k-means weight sharing, then fine-tuning the shared centroids); the whole pipeline to one
file, and the tables of the source material: :mod:`npquant.training.deep_compression`.
"""

from .convert_qat import convert_qat, freeze_bn, freeze_observers, prepare_qat
from .deep_compression import DeepCompressionResult, deep_compression
from .fake_quant import (
    FakeQuantize,
    LSQFakeQuantize,
    PACTFakeQuantize,
    activation_fake_quant,
    fake_quantize_with_mask,
    weight_fake_quant,
)
from .kmeans_qat import KMeansQATResult, SharedWeights, kmeans_qat
from .losses import accuracy, log_softmax, softmax, softmax_cross_entropy
from .optim import SGD, Adam, AdamW, CosineAnnealingLR, LinearWarmup, StepLR
from .pruning import PruneRetrainResult, prune_and_retrain, prune_model, weight_names
from .qat import QATConv2d, QATConvBn2d, QATLinear
from .trainer import EarlyStopping, History, Hook, evaluate, fit, train_reference

__all__ = [
    "SGD",
    "Adam",
    "AdamW",
    "CosineAnnealingLR",
    "DeepCompressionResult",
    "EarlyStopping",
    "FakeQuantize",
    "History",
    "Hook",
    "KMeansQATResult",
    "LSQFakeQuantize",
    "LinearWarmup",
    "PACTFakeQuantize",
    "PruneRetrainResult",
    "QATConv2d",
    "QATConvBn2d",
    "QATLinear",
    "SharedWeights",
    "StepLR",
    "accuracy",
    "activation_fake_quant",
    "convert_qat",
    "deep_compression",
    "evaluate",
    "freeze_bn",
    "freeze_observers",
    "prepare_qat",
    "fake_quantize_with_mask",
    "fit",
    "kmeans_qat",
    "log_softmax",
    "prune_and_retrain",
    "prune_model",
    "softmax",
    "softmax_cross_entropy",
    "train_reference",
    "weight_fake_quant",
    "weight_names",
]
