"""The training config's schema: one table of section -> key -> type, range or choices, default.

:func:`validate` checks a whole config against :data:`SCHEMA` and reports every problem at
once (unknown sections and keys with a did-you-mean, wrong types, out-of-range values, NaN
and infinity); :func:`deeplab_tf.training.trainer.resolve_config` fills the defaults. Defaults
written ``RECIPE`` come from the model's registry recipe.

The ``data`` section's common keys are in the table; the dataset-specific ones (``size`` of
``synthetic``, ``list_file`` of ``folder``...) are the keyword arguments of the dataset's
listing function, checked by name.
"""

from __future__ import annotations

import difflib
import inspect
import math
from dataclasses import dataclass

RECIPE = object()  # default: the registry recipe's value
REQUIRED = object()  # no default: the key must be given


@dataclass(frozen=True)
class Field:
    """One config key.

    ``kind``: ``int``, ``float``, ``bool``, ``str``, ``floats`` / ``ints`` (non-empty lists),
    ``size`` (positive int or ``[h, w]``), ``mapping`` or ``any``. ``lo``/``hi`` bound numbers
    (and list items); ``lo_open``/``hi_open`` make the bound exclusive. ``nullable`` allows
    ``null``.
    """

    kind: str
    default: object = None
    lo: float | None = None
    hi: float | None = None
    lo_open: bool = False
    hi_open: bool = False
    choices: tuple | None = None
    nullable: bool = False


def _pos_int(default=RECIPE, **kw):
    return Field("int", default, lo=1, **kw)


_LR_MULT_KEYS = ("weights", "biases", "classifier_weights", "classifier_biases")

SCHEMA: dict[str, dict[str, Field]] = {
    "model": {
        "name": Field("str", REQUIRED),
        "num_classes": Field("int", None, lo=1, nullable=True),
        "weights": Field("str", None, nullable=True),
        "freeze_batchnorm": Field("bool", None, nullable=True),
        "rates": Field("ints", None, lo=1, nullable=True),
        "dropout": Field("float", None, lo=0.0, hi=1.0, hi_open=True, nullable=True),
        "pool5a": Field("bool", None, nullable=True),
        "output_stride": Field("int", None, choices=(8, 16), nullable=True),
        "head": Field("str", None, choices=("largefov", "aspp_s", "aspp_l", "aspp"), nullable=True),
        "backbone": Field(
            "str",
            None,
            choices=("vgg16", "resnet50", "resnet101", "resnet152", "mobilenetv2"),
            nullable=True,
        ),
    },
    "data": {
        "name": Field("str", REQUIRED),
        "root": Field("str", None, nullable=True),
        "split": Field("str", None, nullable=True),
        "train": Field("mapping", None, nullable=True),
        "val": Field("mapping", None, nullable=True),
        "on_error": Field("str", None, choices=("raise", "skip"), nullable=True),
        "shuffle_files": Field("bool", None, nullable=True),
        "seed": Field("int", None, lo=0, nullable=True),
        "num_parallel_calls": Field("int", None, lo=1, nullable=True),
        "deterministic": Field("bool", None, nullable=True),
        "source": Field("str", None, choices=("files", "tfds"), nullable=True),
        "data_dir": Field("str", None, nullable=True),
    },
    "train": {
        "steps": _pos_int(),
        "batch_size": _pos_int(),
        "accumulation_steps": _pos_int(1),
        "crop_size": Field("size", RECIPE),
        "scales": Field("floats", RECIPE, lo=0.0, hi=4.0, lo_open=True),
        "flip": Field("bool", True),
        "msc": Field("bool", RECIPE),
        "msc_scales": Field("floats", RECIPE, lo=0.0, hi=4.0, lo_open=True),
        "optimizer": Field("str", "caffe_sgd", choices=("caffe_sgd", "adam")),
        "base_lr": Field("float", RECIPE, lo=0.0, lo_open=True),
        "power": Field("float", RECIPE, lo=0.0),
        "momentum": Field("float", RECIPE, lo=0.0, hi=1.0, hi_open=True),
        "weight_decay": Field("float", RECIPE, lo=0.0),
        "lr_mult": Field("mapping", RECIPE),
        "label_mode": Field(
            "str", "nearest", choices=("nearest", "nearest_floor", "upsample_logits")
        ),
        "bn_momentum": Field("float", None, lo=0.0, hi=1.0, hi_open=True, nullable=True),
        "seed": Field("int", None, lo=0, nullable=True),
        "shuffle_buffer": _pos_int(1000),
        "validate_examples": Field("int", 64, lo=0, nullable=True),
        "verbose": Field("any", "auto", choices=("auto", 0, 1, 2)),
    },
    "val": {
        "crop_size": Field("size", 513),
        "batch_size": _pos_int(1),
        "max_examples": Field("int", None, lo=1, nullable=True),
    },
    "output": {
        "workdir": Field("str", REQUIRED),
        "checkpoint_every": _pos_int(1000),
        "tensorboard": Field("bool", True),
        "resume": Field("bool", True),
        "max_to_keep": _pos_int(5),
    },
    "distribute": {
        "strategy": Field("str", "default", choices=("default", "mirrored", "multi_worker", "tpu")),
        "tpu": Field("str", None, nullable=True),
        "devices": Field("any", None, nullable=True),
        "communication": Field("str", "auto", choices=("auto", "ring", "nccl")),
    },
}


def _number(value):
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _integer(value):
    return isinstance(value, int) and not isinstance(value, bool)


def _range_problem(value, f: Field):
    if isinstance(value, float) and not math.isfinite(value):
        return "must be a finite number"
    if f.lo is not None and (value <= f.lo if f.lo_open else value < f.lo):
        return f"must be {'>' if f.lo_open else '>='} {f.lo:g}"
    if f.hi is not None and (value >= f.hi if f.hi_open else value > f.hi):
        return f"must be {'<' if f.hi_open else '<='} {f.hi:g}"
    return None


def check_value(value, f: Field):
    """``None`` if ``value`` fits ``f``, else what is wrong (a phrase)."""
    if value is None:
        return None if f.nullable else "must be set (got null)"
    kind = f.kind
    if kind == "any":
        problem = None
    elif kind == "bool":
        problem = None if isinstance(value, bool) else "must be true or false"
    elif kind == "str":
        problem = None if isinstance(value, str) and value else "must be a non-empty string"
    elif kind == "mapping":
        problem = None if isinstance(value, dict) else "must be a mapping"
    elif kind == "int":
        positive = f.lo == 1 and f.hi is None
        if not _integer(value):
            return "must be a positive int" if positive else "must be an integer"
        problem = _range_problem(value, f)
        if problem and positive:
            problem = "must be a positive int"
    elif kind == "float":
        if not _number(value):
            return "must be a number"
        problem = _range_problem(float(value), f)
    elif kind == "size":
        pair = [value, value] if not isinstance(value, (list, tuple)) else list(value)
        if len(pair) != 2 or any(not isinstance(v, int) or isinstance(v, bool) for v in pair):
            return "must be a positive integer or [height, width]"
        problem = None if min(pair) >= 1 else "must be positive"
    elif kind in ("floats", "ints"):
        item_ok = (
            _number
            if kind == "floats"
            else lambda v: isinstance(v, int) and not isinstance(v, bool)
        )
        if not isinstance(value, (list, tuple)) or not value or not all(map(item_ok, value)):
            noun = "numbers" if kind == "floats" else "integers"
            return f"must be a non-empty list of {noun}"
        problem = next((p for v in value if (p := _range_problem(float(v), f))), None)
        if problem:
            problem = "every item " + problem
    else:  # pragma: no cover - a schema typo
        raise ValueError(f"Unknown schema kind. Received: kind={kind!r}")
    if problem is None and f.choices is not None and value not in f.choices:
        problem = f"must be one of {list(f.choices)}"
        if isinstance(value, str):
            problem += _did_you_mean(value, [c for c in f.choices if isinstance(c, str)])
    return problem


def _did_you_mean(key, known):
    close = difflib.get_close_matches(str(key), list(known), n=1, cutoff=0.6)
    return f" (did you mean {close[0]!r}?)" if close else ""


def _dataset_keys(name):
    """Extra keyword arguments the dataset ``name`` takes (``None``: cannot tell)."""
    try:
        if name == "synthetic":
            from deeplab_tf.data.synthetic import synthetic_dataset as fn
        else:
            from deeplab_tf.data.catalog import lister

            fn = lister(name)
    except (ImportError, KeyError):
        return None
    params = inspect.signature(fn).parameters.values()
    if any(p.kind is p.VAR_KEYWORD for p in params):
        return None
    return {p.name for p in params} - {"root", "split"}


def validate(config) -> None:
    """Checks a config against :data:`SCHEMA`; raises one ``ValueError`` listing every problem.

    Raises:
        ValueError: ``"Invalid training config (N problems):"`` then one line per problem, each
            naming ``section.key``, what is wrong and the value received.
    """
    if not isinstance(config, dict):
        raise ValueError(f"The config must be a mapping. Received: {type(config).__name__}")
    problems = []
    for section in config:
        if section not in SCHEMA:
            problems.append(
                f"Unknown config section {section!r}{_did_you_mean(section, SCHEMA)}; "
                f"allowed: {sorted(SCHEMA)}"
            )
    for section, fields in SCHEMA.items():
        values = config.get(section)
        if values is None:
            values = {}
        if not isinstance(values, dict):
            problems.append(f"{section} must be a mapping. Received: {values!r}")
            continue
        extra = set()
        if section == "data" and isinstance(values.get("name"), str):
            extra = _dataset_keys(values["name"])  # None: takes any keyword, names not judged
            from deeplab_tf.data.catalog import DATASET_NAMES

            if values["name"] not in DATASET_NAMES:
                problems.append(
                    f"data.name must be one of {list(DATASET_NAMES)}"
                    f"{_did_you_mean(values['name'], DATASET_NAMES)}. "
                    f"Received: {values['name']!r}"
                )
        unknown = []
        for key, value in values.items():
            if key in fields:
                problem = check_value(value, fields[key])
                if problem:
                    problems.append(f"{section}.{key} {problem}. Received: {value!r}")
            elif extra is not None and key not in extra:
                unknown.append(key)
        if section == "data" and extra is not None:
            for split in ("train", "val"):
                if isinstance(values.get(split), dict):
                    unknown += [
                        f"{split}.{k}" for k in values[split] if k not in fields and k not in extra
                    ]
        if unknown:
            known = set(fields) | (extra or set())
            hints = [
                f"{k!r}{_did_you_mean(k.split('.')[-1], known)}" for k in sorted(unknown, key=str)
            ]
            problems.append(
                f"Unknown keys in config section {section!r}: {sorted(unknown, key=str)}: "
                f"{', '.join(hints)}; allowed: {sorted(known)}"
            )
        for key, f in fields.items():
            if f.default is REQUIRED and values.get(key) is None:
                problems.append(f"{section}.{key} is required. Received none")
        if section == "train":
            lr_mult = values.get("lr_mult")
            if isinstance(lr_mult, dict):
                for k, v in lr_mult.items():
                    if k not in _LR_MULT_KEYS:
                        problems.append(
                            f"unknown key train.lr_mult.{k}{_did_you_mean(k, _LR_MULT_KEYS)}; "
                            f"expected one of {list(_LR_MULT_KEYS)}"
                        )
                    elif check_value(v, Field("float", lo=0.0)):
                        problems.append(
                            f"train.lr_mult.{k} must be a finite number >= 0. Received: {v!r}"
                        )
    if problems:
        raise ValueError(
            f"Invalid training config ({len(problems)} problem{'s' * (len(problems) > 1)}):\n  "
            + "\n  ".join(problems)
        )


def defaults(section: str, recipe: dict) -> dict:
    """The section's defaults (``RECIPE`` ones from ``recipe``; required keys left out)."""
    out = {}
    for key, f in SCHEMA[section].items():
        if f.default is REQUIRED:
            continue
        if f.default is RECIPE:
            if key in recipe:
                out[key] = recipe[key]
            elif key == "msc":
                out[key] = False
            elif key == "msc_scales":
                out[key] = [1.0, 0.75, 0.5]
        elif section in ("train", "val", "output", "distribute"):
            out[key] = f.default
    return out
