"""Training epochs: one epoch of a reference architecture on the 1,078 digits training images, npquant against PyTorch.

Each case is a reference model (``mlp``, ``lenet_300_100``, ``cnn``; ``NAME:B`` sets the
batch size, default 32 as in ``reference_models/export.py``). One call is one epoch:
shuffle, then for every batch zero the gradients, forward, softmax cross-entropy,
backward, an Adam step (lr 1e-3, 3e-3 for the CNN), and the running loss and accuracy.
Both sides start from the same weights (``npquant.training.trainer.torch_default_init``,
seed 0) and keep training from call to call.

* ``numba``: ``npquant.training.fit(model, softmax_cross_entropy, Adam(...), x, y,
  epochs=1, batch_size=B, seed=k, progress=False)`` with the optimizer's numba kernels;
* ``numpy``: the same with ``Adam(..., backend="numpy")`` (the NumPy twins of the update);
* ``torch``: the usual PyTorch loop on the same architecture (``torch.nn`` modules,
  ``model.train()``, ``torch.randperm`` shuffles, ``torch.optim.Adam`` with its CPU
  default, single-tensor), with ``loss.item()`` and the argmax count per batch, as ``fit``
  keeps them. Threads: the runner's count for PyTorch (``torch.set_num_threads``) and
  for NumPy's BLAS (the env vars set before NumPy is imported).

Check (un-timed): from the same weights, one epoch over the same permutation on each
side; the largest difference of any weight after it, relative to that tensor's largest
magnitude (float32 rounding accumulates over the epoch's steps, so it is small, not 0).
"""

from __future__ import annotations

import numpy as np

from benchmarks.common import Case, Impl

NAME = "training"
DEFAULT_SIZES = ["mlp", "lenet_300_100", "cnn"]
MODELS = ("mlp", "lenet_300_100", "cnn")


def _label(label: str) -> tuple[str, int]:
    name, sep, b = label.partition(":")
    if name not in MODELS or (sep and not (b.isdigit() and int(b) >= 1)):
        raise ValueError(
            f"{NAME} sizes are a model name ({', '.join(MODELS)}), optionally with a "
            f"batch size as in cnn:64, got {label!r}"
        )
    return name, int(b) if sep else 32


def _torch_model(torch, arch, state):
    from reference_models.torch_arch import build  # the repository root is on sys.path (benchmarks/run.py)

    return build(arch, state)


def _torch_epoch(torch, model, opt, xt, yt, batch, order=None, gen=None):
    loss_fn = torch.nn.functional.cross_entropy
    model.train()
    perm = torch.randperm(len(xt), generator=gen) if order is None else torch.from_numpy(order)
    total, correct = 0.0, 0
    for s in range(0, len(xt), batch):
        b = perm[s : s + batch]
        xb, yb = xt[b], yt[b]
        opt.zero_grad()
        out = model(xb)
        loss = loss_fn(out, yb)
        loss.backward()
        opt.step()
        total += loss.item() * len(b)
        correct += int((out.argmax(1) == yb).sum().item())
    return total / len(xt), correct / len(xt)


def _npq_epoch(model, opt, x, y, batch, seed):
    from npquant.training.losses import softmax_cross_entropy
    from npquant.training.trainer import fit

    return fit(model, softmax_cross_entropy, opt, x, y, epochs=1, batch_size=batch, seed=seed, progress=False)


def cases(ctx):
    from npquant.app.demo import default_models_dir
    from npquant.models.io import load_reference
    from npquant.models.nn import build_model
    from npquant.training.optim import Adam
    from npquant.training.trainer import REFERENCE_TRAINING, digits_data, torch_default_init

    for label in ctx.sizes:
        name, batch = _label(label)
        ref = load_reference(default_models_dir() / f"{name}.npz")
        arch, lr = ref.arch, REFERENCE_TRAINING[name]["lr"]
        data = digits_data(arch)
        x, y = data["x_train"], data["y_train"]
        init = torch_default_init(arch, ctx.seed)
        impls, models = [], {}
        for backend in ("numba", "numpy"):
            model = build_model(arch, {k: np.array(v) for k, v in init.items()})
            opt = Adam(model.named_parameters(), lr, backend=backend)
            seeds = iter(range(1 << 30))

            def run(model=model, opt=opt, seeds=seeds):
                return _npq_epoch(model, opt, x, y, batch, next(seeds))

            impls.append(Impl(backend, run))
            models[backend] = model
        buffers = ("running_mean", "running_var", "num_batches_tracked")
        info = {
            "batch": batch,
            "steps/epoch": -(-len(x) // batch),
            "parameters": sum(int(np.size(v)) for k, v in init.items() if not k.endswith(buffers)),
        }
        miss = ctx.peer_impl("torch")
        if miss is None:
            torch = ctx.peers["torch"]
            tmodel = _torch_model(torch, arch, init)
            topt = torch.optim.Adam(tmodel.parameters(), lr)
            xt, yt = torch.from_numpy(x), torch.from_numpy(y)
            gen = torch.Generator().manual_seed(ctx.seed + 1)

            def run_torch(tmodel=tmodel, topt=topt, xt=xt, yt=yt, gen=gen):
                return _torch_epoch(torch, tmodel, topt, xt, yt, batch, gen=gen)

            impls.append(Impl("torch", run_torch, check=_check(torch, arch, init, lr, x, y, batch, ctx.seed)))
        else:
            impls.append(miss)
        yield Case(NAME, f"{name} batch {batch}", float(len(x)), "images/s", impls, targets={"torch": 0.5}, info=info)


def _check(torch, arch, init, lr, x, y, batch, seed) -> str:
    """One epoch from the same weights over the same permutation on both sides; the largest
    weight difference relative to the tensor's largest magnitude."""
    from npquant.models.nn import build_model
    from npquant.training.losses import softmax_cross_entropy
    from npquant.training.optim import Adam

    order = np.random.default_rng(seed).permutation(len(x))
    model = build_model(arch, {k: np.array(v) for k, v in init.items()}).train()
    opt = Adam(model.named_parameters(), lr)
    for s in range(0, len(x), batch):
        b = order[s : s + batch]
        model.zero_grad()
        _, g = softmax_cross_entropy(model(x[b]), y[b])
        model.backward(g)
        opt.step(model.named_grads())
    tmodel = _torch_model(torch, arch, init)
    _torch_epoch(
        torch,
        tmodel,
        torch.optim.Adam(tmodel.parameters(), lr),
        torch.from_numpy(x),
        torch.from_numpy(y),
        batch,
        order=order,
    )
    ours = model.state_dict()
    worst = 0.0
    for k, v in tmodel.state_dict().items():
        v = v.detach().numpy()
        if v.dtype.kind != "f":
            continue
        worst = max(worst, float(np.abs(ours[k] - v).max() / max(np.abs(v).max(), 1e-30)))
    return f"weights after 1 epoch: max rel diff {worst:.1e}"
