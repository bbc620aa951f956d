"""Check a composed run config before anything is created (no MLflow run, no experiment, no data read).

    validate(cfg)  ->  None, or ConfigError("trainer.epochs='abc': expected an integer >= 1")

Each rule names one key, the expected type and range; the first violation is raised, as one line.
Hydra composes `trainer.epochs=abc` into the string 'abc' without complaint, so without this check a
typo became a FAILED run (or worse, `trainer.grad_clip=-1` trained backwards, `limit_train_batches=0`
recorded a FINISHED run that never trained).
"""
from __future__ import annotations

import math
import re
from dataclasses import dataclass
from typing import Any, Callable

from omegaconf import DictConfig, OmegaConf

from seg.runtime import AMP_MODES, MEMORY_FORMATS    # one list each: the config check and the runtime

# the monitored validation metrics (higher is better); the loop selects the best epoch on one of them
MONITORS = ("val/dice", "val/iou")
_DEVICE = re.compile(r"auto|cpu|mps|cuda(:\d+)?")


class ConfigError(ValueError):
    """A config value of the wrong type or range; the message is one line naming the key."""


@dataclass(frozen=True)
class Rule:
    key: str                            # dotted path in the composed config
    kind: str                           # int | float | bool | str
    low: float | None = None            # inclusive bounds (numbers)
    high: float | None = None
    nullable: bool = False
    low_open: bool = False              # low is exclusive (lr > 0)
    choices: tuple[str, ...] = ()       # for kind == str
    pattern: re.Pattern | None = None
    required: bool = True               # absent key: an error (else: skipped)

    def expected(self) -> str:
        if self.choices:
            text = "one of " + ", ".join(self.choices)
        elif self.pattern is not None:
            text = f"a string matching {self.pattern.pattern}"
        else:
            noun = {"int": "an integer", "float": "a number", "bool": "true or false", "str": "a string"}[self.kind]
            bounds = []
            if self.low is not None:
                bounds.append(f"{'>' if self.low_open else '>='} {_fmt(self.low)}")
            if self.high is not None:
                bounds.append(f"<= {_fmt(self.high)}")
            text = noun + (" " + " and ".join(bounds) if bounds else "")
        return text + (" (or null)" if self.nullable else "")


def _fmt(x: float) -> str:
    return str(int(x)) if float(x).is_integer() else str(x)


RULES: tuple[Rule, ...] = (
    Rule("seed", "int", 0, 2**32 - 1),
    Rule("device", "str", pattern=_DEVICE),
    Rule("amp", "str", choices=AMP_MODES),
    Rule("threads", "int", 1, nullable=True),
    Rule("memory_format", "str", choices=MEMORY_FORMATS, required=False),
    Rule("resume", "bool"),
    Rule("trainer.epochs", "int", 1),
    Rule("trainer.batch_size", "int", 1),
    Rule("trainer.num_workers", "int", 0),
    Rule("trainer.accumulate", "int", 1),
    Rule("trainer.grad_clip", "float", 0, nullable=True),
    Rule("trainer.early_stopping", "int", 0),
    Rule("trainer.monitor", "str", choices=MONITORS),
    Rule("trainer.limit_train_batches", "int", 1, nullable=True),
    Rule("trainer.val_every", "int", 1, required=False),
    Rule("trainer.checkpoint_every_s", "float", 0, required=False),
    Rule("profile.image_size", "int", 16),
    Rule("dataset.num_classes", "int", 1),
    Rule("dataset.in_channels", "int", 1),
    Rule("optimizer.lr", "float", 0, low_open=True),
    Rule("optimizer.weight_decay", "float", 0, required=False),
    Rule("optimizer.momentum", "float", 0, 1, required=False),
    Rule("scheduler.patience", "int", 0, required=False),
    Rule("scheduler.factor", "float", 0, 1, low_open=True, required=False),
    Rule("debug.sigterm_after_epoch", "int", 1, nullable=True, required=False),
    Rule("tracking.overlays", "int", 0, required=False),
    Rule("tracking.heartbeat_s", "float", 0, low_open=True, required=False),
    Rule("tracking.stale_after_s", "float", 0, low_open=True, required=False),
    Rule("tracking.log_model", "bool", required=False),
    Rule("tracking.system_metrics", "bool", required=False),
    Rule("cv.folds", "int", 2, nullable=True, required=False),
    Rule("cv.fold", "int", 0, nullable=True, required=False),
    Rule("cv.seed", "int", 0, 2**32 - 1, required=False),
)


def check_cv(cfg: DictConfig) -> None:
    """The cross-validation keys together (cv.fold in 0..cv.folds-1 when cv.folds is set, unset otherwise):
    seg.data.layout.Folds.of, the one check the dataset readers apply too. (Each key's own type and range
    are RULES.)"""
    node = OmegaConf.select(cfg, "cv")
    if node is None:
        return
    from seg.data.layout import Folds

    try:
        Folds.of(OmegaConf.to_container(node, resolve=True))
    except ValueError as err:
        raise ConfigError(str(err)) from None


_MISSING = object()


def _lookup(cfg: DictConfig, key: str) -> Any:
    try:
        value = OmegaConf.select(cfg, key, default=_MISSING, throw_on_missing=True)
    except Exception as err:  # an interpolation that does not resolve, a missing mandatory value
        raise ConfigError(f"{key}: cannot be resolved ({type(err).__name__}: {str(err).splitlines()[0]})") from None
    return value


def _coerce(rule: Rule, value: Any) -> Any:
    """value -> the rule's Python type, or raise ConfigError naming the key (bool is not an int)."""
    bad = ConfigError(f"{rule.key}={value!r}: expected {rule.expected()}")
    if rule.kind == "bool":
        if isinstance(value, bool):
            return value
        raise bad
    if rule.kind == "str":
        if not isinstance(value, str):
            raise bad
        if rule.choices and value not in rule.choices:
            raise bad
        if rule.pattern is not None and not rule.pattern.fullmatch(value):
            raise bad
        return value
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise bad
    if rule.kind == "int":
        if isinstance(value, float):
            if not value.is_integer():
                raise bad
            value = int(value)
    elif not math.isfinite(value):
        raise bad
    if rule.low is not None and (value <= rule.low if rule.low_open else value < rule.low):
        raise bad
    if rule.high is not None and value > rule.high:
        raise bad
    return value


def validate(cfg: DictConfig, rules: tuple[Rule, ...] = RULES, extra: Callable[[DictConfig], None] | None = None) -> None:
    """Raise ConfigError (one line, naming the key and the allowed values) on the first bad value."""
    for rule in rules:
        value = _lookup(cfg, rule.key)
        if value is _MISSING:
            if rule.required:
                raise ConfigError(f"{rule.key}: missing; expected {rule.expected()}")
            continue
        if value is None:
            if rule.nullable:
                continue
            raise ConfigError(f"{rule.key}=null: expected {rule.expected()}")
        _coerce(rule, value)
    if rules is RULES:
        check_cv(cfg)
    if extra is not None:
        extra(cfg)
