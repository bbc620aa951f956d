"""The one checkpoint schema, atomic writes, and the random states a resumed run continues from.

Two files per run, in `<output_dir>/checkpoints/` (docs/design.md, "Checkpoints"):

    best.pt  {"schema": 1, "state_dict", "config" (resolved run config), "amp", "epoch", "monitor", "value"}
             the weights of the best validation epoch; what seg.predict and the test pass load
    last.pt  best.pt's keys + "optimizer", "scheduler", "scaler", "rng", "loop", "history":
             everything a resumed run needs to continue bitwise as if never stopped; the previous
             last.pt is kept as last.prev.pt, so a damaged last.pt has a predecessor to resume from

"rng" holds every random stream the loop draws from: torch (CPU and each CUDA device), numpy's
global generator, python `random`, the DataLoader's shuffle generator and the albumentations
generators of the training transforms (which the dataset seeded at build time; restoring them
continues the stream instead of replaying epoch 1's augmentations).

Every file is written atomically (temp file in the same folder, fsync, rename), so a kill at any
moment leaves either the old file or the new one. Loading is `torch.load(weights_only=True)`
(tensors, dicts, lists, numbers, strings: nothing in a file can run code), and a model is built
from a stored config only through `seg.models.build_model` (a closed allowlist of classes).
"""
from __future__ import annotations

import copy
import logging
import os
import pickle
import random
import re
import signal
from collections import OrderedDict
from pathlib import Path
from typing import Any, Iterable

import numpy as np
import torch
from torch import nn

from seg.models import UnsafeModelConfig, build_model

log = logging.getLogger(__name__)

SCHEMA = 1
BEST, LAST, PREV = "best.pt", "last.pt", "last.prev.pt"


class CheckpointError(ValueError):
    """A checkpoint file is missing, unreadable, not weights-only, not of this schema, or not finite."""


# ---------------------------------------------------------------------------------------------
# atomic writes


def _fsync_dir(folder: Path) -> None:
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def _write_atomic(path: Path, write, keep_previous: Path | None = None) -> Path:
    """write(fh) into a temp file beside `path`, fsync, then rename over `path` (the old one to
    keep_previous first, if given and present). A crash leaves the old file or the new one, never half."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    # SIGTERM / SIGINT are held until the file is in place: a handler raising inside torch.save would turn
    # the interrupt into a torch RuntimeError (a FAILED run instead of a KILLED one)
    held = {signal.SIGTERM, signal.SIGINT}
    old_mask = signal.pthread_sigmask(signal.SIG_BLOCK, held)
    try:
        _write_and_rename(path, tmp, write, keep_previous)
    finally:
        signal.pthread_sigmask(signal.SIG_SETMASK, old_mask)
    _fsync_dir(path.parent)
    return path


def _write_and_rename(path: Path, tmp: Path, write, keep_previous: Path | None) -> None:
    try:
        with open(tmp, "wb") as fh:
            write(fh)
            fh.flush()
            os.fsync(fh.fileno())
        if keep_previous is not None and path.exists():
            os.replace(path, keep_previous)
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def save_atomic(obj: Any, path: str | Path, keep_previous: Path | None = None) -> Path:
    """torch.save(obj) to path atomically (see _write_atomic)."""
    return _write_atomic(Path(path), lambda fh: torch.save(obj, fh), keep_previous)


def write_text_atomic(path: str | Path, text: str) -> Path:
    """A text file (job_status.json, ...) written atomically."""
    return _write_atomic(Path(path), lambda fh: fh.write(text.encode()))


# ---------------------------------------------------------------------------------------------
# random states


def _transforms(dataset) -> list:
    """The albumentations Compose objects (with their own generators) reachable from a training Dataset:
    its `transform`, and those of ConcatDataset parts / Subset bases."""
    found, stack, seen = [], [dataset], set()
    while stack:
        ds = stack.pop()
        if ds is None or id(ds) in seen:
            continue
        seen.add(id(ds))
        t = getattr(ds, "transform", None)
        if t is not None and hasattr(t, "random_generator") and hasattr(t, "py_random"):
            found.append(t)
        stack += list(getattr(ds, "datasets", []) or []) + [getattr(ds, "dataset", None)]
    return found


def rng_state(loader_generator: torch.Generator | None = None, dataset=None) -> dict:
    """Every random stream of the loop -> a weights-only-loadable dict (tensors, lists, ints)."""
    np_state = np.random.get_state(legacy=False)
    state = {"torch": torch.get_rng_state(),
             "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
             "numpy": {**np_state, "state": {"key": np_state["state"]["key"].tolist(),
                                             "pos": int(np_state["state"]["pos"])}},
             "python": random.getstate(),
             "loader": loader_generator.get_state() if loader_generator is not None else None,
             "transforms": [{"numpy": t.random_generator.bit_generator.state, "python": t.py_random.getstate()}
                            for t in _transforms(dataset)]}
    return state


def set_rng_state(state: dict, loader_generator: torch.Generator | None = None, dataset=None) -> None:
    """Restore what rng_state saved. The transforms' generators are set in place, so every step of a
    Compose (they share its generators) continues the saved stream."""
    torch.set_rng_state(state["torch"])
    if state.get("cuda") and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])
    if state.get("numpy") is not None:
        np_state = dict(state["numpy"])
        np_state["state"] = {"key": np.asarray(np_state["state"]["key"], dtype=np.uint32),
                             "pos": np_state["state"]["pos"]}
        np.random.set_state(np_state)
    if state.get("python") is not None:
        py = state["python"]
        random.setstate((py[0], tuple(py[1]), py[2]))
    if loader_generator is not None and state.get("loader") is not None:
        loader_generator.set_state(state["loader"])
    transforms = _transforms(dataset)
    saved = state.get("transforms") or []
    if saved and len(saved) != len(transforms):
        log.warning("the checkpoint holds %d transform random states but the dataset has %d transforms: "
                    "augmentations restart from their seed", len(saved), len(transforms))
        return
    for t, s in zip(transforms, saved):
        t.random_generator.bit_generator.state = s["numpy"]
        py = s["python"]
        t.py_random.setstate((py[0], tuple(py[1]), py[2]))


# ---------------------------------------------------------------------------------------------
# payloads


def best_payload(model: nn.Module, config: dict, epoch: int, monitor: str, value: float) -> dict:
    """best.pt: the weights of the best epoch with the resolved config (and its `amp`)."""
    return {"schema": SCHEMA, "state_dict": model.state_dict(), "config": config,
            "amp": str(config.get("amp", "auto")), "epoch": int(epoch), "monitor": monitor, "value": float(value)}


def last_payload(model: nn.Module, config: dict, optimizer, scheduler, scaler, loop: dict, history: list[dict],
                 loader_generator: torch.Generator | None, dataset) -> dict:
    """last.pt: best.pt's keys plus everything a resume needs (see the module docstring)."""
    return {"schema": SCHEMA, "state_dict": model.state_dict(), "config": config,
            "amp": str(config.get("amp", "auto")), "epoch": int(loop["epoch"]),
            "optimizer": optimizer.state_dict(),
            "scheduler": scheduler.state_dict() if scheduler is not None else None,
            "scaler": scaler.state_dict(), "rng": rng_state(loader_generator, dataset),
            "loop": dict(loop), "history": [dict(h) for h in history]}


def snapshot(obj: Any) -> Any:
    """A copy of a payload that training can no longer change: every tensor copied to the CPU (its layout
    kept), dicts / lists / tuples rebuilt (a state_dict's `_metadata` kept), other values shared (ints,
    floats, strings: immutable). What the Checkpointer hands to its writer thread."""
    if isinstance(obj, torch.Tensor):
        return obj.detach().to("cpu", copy=True)
    if isinstance(obj, dict):
        out = (OrderedDict if isinstance(obj, OrderedDict) else dict)((k, snapshot(v)) for k, v in obj.items())
        if hasattr(obj, "_metadata"):               # a module state_dict's per-module versions
            out._metadata = copy.deepcopy(obj._metadata)
        return out
    if type(obj) in (list, tuple):
        return type(obj)(snapshot(v) for v in obj)
    return obj


# ---------------------------------------------------------------------------------------------
# loading


def load(path: str | Path, map_location: str | torch.device = "cpu", require_config: bool = True) -> dict:
    """torch.load(weights_only=True) with errors that name the file -> the checkpoint dict.

    CheckpointError: missing, not a PyTorch file, truncated / corrupt, needs arbitrary pickled
    objects (refused without running them), or not a dict with "state_dict" and "config"
    (require_config=False: "state_dict" only, as in a last.pt written before schema 1).
    """
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"checkpoint not found: {path}")
    try:
        ckpt = torch.load(path, map_location=map_location, weights_only=True)
    except pickle.UnpicklingError as err:
        text = str(err)
        # the weights-only unpickler says "Unsupported global" for an object it will not build (what a
        # malicious or foreign pickle needs), and stops at the first opcode of a bare pickle (pickle.dump,
        # protocol >= 2: first byte PROTO) it does not read; other bytes are no checkpoint at all
        found = re.search(r"GLOBAL (\S+?)(?: whose|\s|$)", text)
        with open(path, "rb") as fh:
            bare_pickle = fh.read(1) == pickle.PROTO
        if "Weights only load failed" in text and (found or bare_pickle):
            what = f" (it references {found.group(1)})" if found else " (a bare pickle, not a torch.save file)"
            raise CheckpointError(f"refusing checkpoint {path}: it needs arbitrary pickled objects{what}, which "
                                  "could run code when loaded; only weights-only checkpoints (tensors, dicts, "
                                  "lists, numbers, strings) are accepted, as written by seg.train") from None
        detail = re.search(r"(Unsupported \w+ \S+)", text)
        raise CheckpointError(f"not a PyTorch checkpoint: {path} "
                              f"({detail.group(1) if detail else text.splitlines()[0] if text else 'unpickling failed'})") from None
    except Exception as err:  # truncated / corrupt: EOFError, RuntimeError, struct.error, BadZipFile, ...
        raise CheckpointError(f"corrupt or unreadable checkpoint {path}: {type(err).__name__}: {err}") from None
    if not isinstance(ckpt, dict) or not isinstance(ckpt.get("state_dict"), dict) \
            or (require_config and not isinstance(ckpt.get("config"), dict)):
        keys = sorted(ckpt) if isinstance(ckpt, dict) else type(ckpt).__name__
        raise CheckpointError(f"{path} is not a segsweep checkpoint: expected a dict with 'state_dict' and "
                              f"'config' (the resolved run config), got {keys}")
    return ckpt


def nonfinite(tensors: Iterable[tuple[str, torch.Tensor]]) -> list[str]:
    """Names of the floating-point tensors holding NaN or inf.

    One fused norm over all of them comes first (torch.nn.utils.get_total_norm, with the foreach kernels where
    the device has them: NaN or inf when any element is, or when large finite values overflow the sum of
    squares); only then is each tensor checked on its own, so finite weights cost one pass (the loop checks
    after every epoch: 1-3 ms instead of about 11 for TransUNet's 157 tensors on the cpu preset, and one host
    sync instead of one per tensor on a GPU) and an overflow alone names nothing."""
    named = [(name, t) for name, t in tensors if isinstance(t, torch.Tensor) and t.is_floating_point()]
    if not named or bool(torch.isfinite(torch.nn.utils.get_total_norm([t for _, t in named]))):
        return []
    return [name for name, t in named if not bool(torch.isfinite(t).all())]


def amp_of(ckpt: dict) -> str:
    """The run's amp setting: the checkpoint's "amp", else its config's, else "auto" (older files)."""
    return str(ckpt.get("amp") or (ckpt.get("config") or {}).get("amp") or "auto")


def build_from(ckpt: dict, source: str = "checkpoint") -> nn.Module:
    """The checkpoint's model (architecture from config.model through the allowlist) with its weights,
    on the CPU, in eval mode. CheckpointError naming `source` when refused or when the weights do not fit."""
    node = ckpt["config"].get("model")
    if not isinstance(node, dict):
        raise CheckpointError(f"{source}: the checkpoint's config has no 'model' section")
    try:
        net = build_model(node)
    except UnsafeModelConfig as err:
        raise CheckpointError(f"refusing the checkpoint {source}: {err}") from None
    try:
        net.load_state_dict(ckpt["state_dict"])
    except Exception as err:  # wrong keys / shapes, bad constructor arguments
        raise CheckpointError(f"{source}: the weights do not fit the architecture in its config "
                              f"({node.get('_target_')}): {type(err).__name__}: {err}") from None
    return net.eval()


def _upgrade(ckpt: dict) -> dict:
    """A last.pt written before schema 1 (flat keys, torch RNG and loader generator only) -> schema 1."""
    if "loop" in ckpt:
        return ckpt
    keys = ("epoch", "best", "best_epoch", "stale", "train_time", "images")
    ckpt = dict(ckpt)
    ckpt["loop"] = {k: ckpt[k] for k in keys if k in ckpt}
    ckpt["rng"] = {"torch": ckpt.get("rng"), "loader": ckpt.get("generator")}
    ckpt.setdefault("history", None)
    return ckpt


def resume_state(folder: str | Path) -> tuple[dict | None, list[str]]:
    """The newest good training state in a run's checkpoint folder -> (last.pt dict or None, notes).

    last.pt, then last.prev.pt: a file that cannot be read or whose weights / optimizer state are not
    finite is named in the notes (and the log) and set aside as `<name>.damaged` (never loaded
    again, never deleted: it is evidence). None: no good state, the run starts from scratch.
    """
    folder = Path(folder)
    notes: list[str] = []
    for name in (LAST, PREV):
        path = folder / name
        if not path.exists():
            continue
        try:
            ckpt = _upgrade(load(path, require_config=False))
            for key in ("optimizer", "loop"):
                if key not in ckpt:
                    raise CheckpointError(f"{path} has no {key!r}: not a resumable last.pt")
            bad = nonfinite(ckpt["state_dict"].items())
            if bad:
                raise CheckpointError(f"{path} holds non-finite weights ({', '.join(bad[:3])}"
                                      f"{', ...' if len(bad) > 3 else ''})")
        except CheckpointError as err:
            aside = path.with_name(path.name + ".damaged")
            os.replace(path, aside)
            notes.append(f"{err}; set aside as {aside.name}")
            log.warning("damaged checkpoint: %s; set aside as %s", err, aside)
            continue
        return ckpt, notes
    return None, notes


def restore(ckpt: dict, model, optimizer, scheduler, scaler, loader_generator, dataset) -> tuple[dict, list | None]:
    """Load a resumable last.pt (resume_state's result) into the run's objects and random streams ->
    (the loop state dict, the per-epoch history)."""
    model.load_state_dict(ckpt["state_dict"])
    optimizer.load_state_dict(ckpt["optimizer"])
    if scheduler is not None and ckpt.get("scheduler") is not None:
        scheduler.load_state_dict(ckpt["scheduler"])
    scaler.load_state_dict(ckpt["scaler"])
    set_rng_state(ckpt["rng"], loader_generator, dataset)
    loop = dict(ckpt["loop"])
    loop.setdefault("steps", int(loop.get("epoch", -1)) + 1)   # before schema 1: it trained every epoch it holds
    return loop, ckpt.get("history")
