"""Training in NumPy: backward passes, losses, optimizers, a training loop, and
quantization-aware training.

The contract every trainable piece follows (float32 throughout, NumPy arrays a student
can print):

- A float layer of :mod:`npquant.nn` computes ``y = layer(x)`` (also ``layer.forward(x)``).
  In training mode (``layer.train()``; ``layer.eval()`` leaves it) the forward pass keeps
  what its backward pass needs, and ``grad_x = layer.backward(grad_y)`` returns the
  gradient of the loss with respect to its input (same shape as ``x``) and *accumulates*
  the gradients of its parameters into ``layer.grads`` (``{name: array}``, the same names
  and shapes as ``layer.parameters()``; ``layer.zero_grad()`` sets them to zero).
  ``layer.parameters()`` returns the live arrays (``{"weight": W, "bias": b}``), which an
  optimizer updates in place. A layer without parameters returns ``{}``.
- ``Sequential`` follows the same contract; its ``named_parameters()`` and
  ``named_grads()`` are flat dicts keyed ``"<layer name>.<param>"`` (the state-dict keys
  of the reference models, so ``state_dict()`` round-trips with :func:`npquant.nn.build_model`).
- A loss is a function ``loss, grad_logits = loss_fn(logits, labels)``
  (:mod:`npquant.training.losses`).
- An optimizer (:mod:`npquant.training.optim`) holds the dict of live parameter arrays and
  updates them in place from a dict of gradients of the same keys: ``opt.step(grads)``.
"""
