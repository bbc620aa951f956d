"""The segmentation architectures; each maps x (B, C_in, H, W) -> logits (B, num_classes, H, W).

`build_model(node)` is the only way a model is built from a config that was read back from a file
(a checkpoint, an MLflow artifact): a closed allowlist of the three classes by their exact
`_target_`, arguments checked against the constructor's signature and restricted to plain values.
Nothing else named in a file is imported or called.
"""
from __future__ import annotations

import inspect
from typing import Any, Mapping

from torch import nn

from seg.models.resunet import ResUNet
from seg.models.transunet import TransUNet
from seg.models.unet import UNet

__all__ = ["MODELS", "ResUNet", "TransUNet", "UNet", "UnsafeModelConfig", "build_model"]

# exact `_target_` -> class. Adding an architecture means adding it here, by hand.
MODELS: dict[str, type[nn.Module]] = {
    "seg.models.unet.UNet": UNet,
    "seg.models.resunet.ResUNet": ResUNet,
    "seg.models.transunet.TransUNet": TransUNet,
}
# keys of a model node that describe it for humans / MLflow and are not constructor arguments
META_KEYS = ("_target_", "name", "size")
# constructor arguments that read files: never taken from a stored config (the weights are in it)
FILE_ARGUMENTS = ("pretrained_path",)


class UnsafeModelConfig(ValueError):
    """A stored model config names something outside the allowlist or carries non-plain values."""


def _plain(value: Any) -> bool:
    if value is None or isinstance(value, (bool, int, float, str)):
        return True
    if isinstance(value, (list, tuple)):
        return all(v is None or isinstance(v, (bool, int, float)) for v in value)
    return False


def build_model(node: Mapping[str, Any]) -> nn.Module:
    """A model config node (plain dict, as stored in a checkpoint) -> the module, through the allowlist.

    Raises UnsafeModelConfig naming the offending `_target_` or key: an unknown target, a nested
    node (a dict, or anything with its own `_target_`), a non-plain value, an argument the
    class does not take, or a file-reading argument.
    """
    if not isinstance(node, Mapping):
        raise UnsafeModelConfig(f"model config must be a mapping, got {type(node).__name__}")
    target = node.get("_target_")
    cls = MODELS.get(target) if isinstance(target, str) else None
    if cls is None:
        raise UnsafeModelConfig(f"model._target_={target!r} is not an allowed model class; allowed: "
                                f"{', '.join(MODELS)}")
    params = inspect.signature(cls.__init__).parameters
    kwargs: dict[str, Any] = {}
    for key, value in node.items():
        if key in META_KEYS:
            continue
        if key in FILE_ARGUMENTS:
            if value is not None:
                raise UnsafeModelConfig(f"model.{key}={value!r}: a stored model config may not name a file "
                                        "to load (its weights are in the checkpoint)")
            continue
        if key not in params or key == "self":
            raise UnsafeModelConfig(f"model.{key}: {cls.__name__} takes no argument {key!r}; it takes "
                                    f"{', '.join(p for p in params if p != 'self')}")
        if not _plain(value):
            raise UnsafeModelConfig(f"model.{key}={value!r}: only plain values (numbers, strings, booleans, "
                                    "lists of numbers) are accepted in a stored model config")
        kwargs[key] = list(value) if isinstance(value, tuple) else value
    return cls(**kwargs)
