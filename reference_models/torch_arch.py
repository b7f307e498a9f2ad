"""The PyTorch model of an npquant architecture description: shared by ``export.py``
(which trains the reference models) and the training benchmark. Imports torch when called."""

import numpy as np


def build(arch, state=None):
    """A ``torch.nn.Sequential`` whose children carry the layer names of ``arch`` (npquant's
    architecture format, ``reference_models/README.md``), with ``state`` loaded if given."""
    from collections import OrderedDict

    import torch
    from torch import nn

    mods = OrderedDict()
    for L in arch["layers"]:
        t = L["type"]
        if t == "linear":
            m = nn.Linear(L["in_features"], L["out_features"], bias=L["bias"])
        elif t == "conv2d":
            m = nn.Conv2d(
                L["in_channels"],
                L["out_channels"],
                L["kernel_size"],
                L["stride"],
                L["padding"],
                L["dilation"],
                L["groups"],
                bias=L["bias"],
            )
        elif t == "batchnorm2d":
            m = nn.BatchNorm2d(L["num_features"], eps=L["eps"], momentum=L["momentum"])
        elif t == "relu":
            m = nn.ReLU()
        elif t == "maxpool2d":
            m = nn.MaxPool2d(L["kernel_size"], L["stride"], L["padding"], L["dilation"], ceil_mode=L["ceil_mode"])
        elif t == "flatten":
            m = nn.Flatten(L["start_dim"])
        else:
            raise ValueError(f"unknown layer type {t!r}")
        mods[L["name"]] = m
    model = nn.Sequential(mods)
    if state is not None:
        model.load_state_dict({k: torch.from_numpy(np.array(v)) for k, v in state.items()})
    return model
