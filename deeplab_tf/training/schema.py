"""The training config's schema: one table of section -> key -> type, range or choices, default.

:func:`validate` checks a whole config against :data:`SCHEMA` and reports every problem at
once (unknown sections and keys with a did-you-mean, wrong types, out-of-range values, NaN
and infinity); :func:`deeplab_tf.training.trainer.resolve_config` fills the defaults. Defaults
written ``RECIPE`` come from the model's registry recipe.

The ``data`` section's common keys are in the table; each dataset's own keys (``size`` of
``synthetic``, ``list_file`` of ``voc2012``...) are in :data:`DATASET_FIELDS`, with their types:
they are the keyword arguments of the dataset's listing function (a test keeps the two equal).
``data.train`` and ``data.val`` take the same keys as ``data`` (except ``name``) and override
them for their split. The rules that tie keys together are written as functions next to the
tables (:data:`DATA_RULES`; the checkpoint interval rule is
:func:`deeplab_tf.training.trainer.resolve_config`'s).
"""

from __future__ import annotations

import copy
import difflib
import math
from dataclasses import dataclass

from deeplab_tf.training.class_weights import ABSENT_RULES, WEIGHTING_METHODS

#: The online hard example mining modes of :class:`deeplab_tf.training.losses.DeepLabLoss`
#: (defined here, where the config needs them without importing TensorFlow).
OHEM_MODES = ("loss", "threshold")

RECIPE = object()  # default: the registry recipe's value
REQUIRED = object()  # no default: the key must be given


@dataclass(frozen=True)
class Field:
    """One config key.

    ``kind``: ``int``, ``float``, ``bool``, ``str``, ``floats`` / ``ints`` / ``strs``
    (non-empty lists), ``size`` (positive int or ``[h, w]``), ``colors`` (a list of ``[r, g,
    b]``, each 0..255), ``mapping`` or ``any``. ``lo``/``hi`` bound numbers (and list items, and
    each side of a ``size``); ``lo_open``/``hi_open`` make the bound exclusive. ``nullable``
    allows ``null``. ``fallback``: the value of a ``RECIPE`` default the recipe does not set
    (``None``: the key is left out).
    """

    kind: str
    default: object = None
    lo: float | None = None
    hi: float | None = None
    lo_open: bool = False
    hi_open: bool = False
    choices: tuple | None = None
    nullable: bool = False
    fallback: object = None


def _pos_int(default=RECIPE, **kw):
    return Field("int", default, lo=1, **kw)


#: ``train.mixed_precision`` values: ``none`` (the global policy, float32 by default) or the
#: compute dtype of a ``mixed_*`` Keras dtype policy.
MIXED_PRECISION = ("none", "bfloat16", "float16")

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
        # Images with N channels (DeepLabV2's input_channels, channel_mean, channel_std).
        "input_channels": Field("int", None, lo=1, nullable=True),
        "channel_mean": Field("floats", None, nullable=True),
        "channel_std": Field("floats", None, lo=0.0, lo_open=True, nullable=True),
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
        "pseudo_labels": Field("str", None, nullable=True),
    },
    "train": {
        "steps": _pos_int(),
        "batch_size": _pos_int(),
        "accumulation_steps": _pos_int(1),
        "crop_size": Field("size", RECIPE),
        "scales": Field("floats", RECIPE, lo=0.0, hi=4.0, lo_open=True),
        "flip": Field("bool", True),
        "msc": Field("bool", RECIPE, fallback=False),
        "msc_scales": Field(
            "floats", RECIPE, lo=0.0, hi=4.0, lo_open=True, fallback=[1.0, 0.75, 0.5]
        ),
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
        # Class imbalance (deeplab_tf.training.losses / class_weights): explicit per-class
        # weights or a rule computed from the training split's label histogram, not both.
        "class_weights": Field("floats", None, lo=0.0, nullable=True),
        "class_weighting": Field("str", None, choices=WEIGHTING_METHODS, nullable=True),
        "class_weight_examples": Field("int", None, lo=1, nullable=True),
        "class_weight_absent": Field("str", "error", choices=ABSENT_RULES),
        "ohem": Field("str", None, choices=OHEM_MODES, nullable=True),
        "ohem_threshold": Field(
            "float", None, lo=0.0, hi=1.0, lo_open=True, hi_open=True, nullable=True
        ),  # fmt: skip
        "ohem_min_kept": _pos_int(256),
        # Mixed precision (docs/training.md#mixed-precision): the model's dtype policy,
        # mixed_bfloat16 or mixed_float16 (dynamic loss scaling); variables stay float32.
        "mixed_precision": Field("str", "none", choices=MIXED_PRECISION),
    },
    "val": {
        "crop_size": Field("size", 513),
        "batch_size": _pos_int(1),
        "max_examples": Field("int", None, lo=1, nullable=True),
        # Warn when a class present in the validation labels keeps IoU 0 this many evaluations
        # in a row (null: never).
        "zero_iou_patience": Field("int", 3, lo=1, nullable=True),
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


#: Sections whose left-out keys get their defaults; ``model`` and ``data`` pass on only the keys
#: given (the others take ``DeepLabV2``'s and the dataset's own defaults).
FILLED_SECTIONS = ("train", "val", "output", "distribute")


def _path():
    return Field("str", None, nullable=True)


#: Dataset name -> its own ``data`` keys: the keyword arguments of its listing function in
#: :mod:`deeplab_tf.data` (``synthetic``: of ``synthetic_dataset``), besides ``root``/``split``.
DATASET_FIELDS: dict[str, dict[str, Field]] = {
    "voc2012": {"list_file": _path()},
    "voc2012_aug": {"sbd_root": _path(), "aug_dir": _path(), "list_file": _path()},
    "cityscapes": {
        "label_type": Field("str", None, choices=("labelIds", "trainIds"), nullable=True)
    },
    "cocostuff10k": {"list_file": _path()},
    "cocostuff164k": {},
    "coco2014": {
        "crowd": Field("str", None, choices=("ignore", "class"), nullable=True),
        "cache_dir": _path(),
        "list_file": _path(),
    },
    "pascal_context": {"label_dir": _path(), "list_file": _path()},
    "person_part": {"label_dir": _path(), "list_file": _path()},
    "folder": {
        "num_classes": Field("int", None, lo=1, hi=255, nullable=True),
        "class_names": Field("strs", None, nullable=True),
        "palette": Field("colors", None, nullable=True),
        "ignore_label": Field("int", None, lo=0, hi=255, nullable=True),
        "unlabeled": Field("bool", None, nullable=True),
    },
    "synthetic": {
        "num_images": Field("int", None, lo=1, nullable=True),
        "size": Field("size", None, lo=16, nullable=True),
        "num_classes": Field("int", None, lo=2, hi=8, nullable=True),
        "max_objects": Field("int", None, lo=1, nullable=True),
        "noise": Field("float", None, lo=0.0, nullable=True),
    },
}
#: The common ``data`` keys of datasets read from files; ``synthetic`` reads none and takes
#: only ``split`` and ``seed`` (its generator's seed) of the common keys.
FILE_KEYS = ("root", "on_error", "shuffle_files", "num_parallel_calls", "deterministic")
FILE_KEYS += ("source", "data_dir", "pseudo_labels")
#: Datasets that ``source: tfds`` can prepare.
TFDS_DATASETS = ("voc2012", "voc2012_aug", "cityscapes", "cocostuff10k", "cocostuff164k")


def _tfds_rules(name, values):
    """``source``/``data_dir``: what :func:`deeplab_tf.data.load_dataset` accepts."""
    problems = []
    source = values.get("source") or "files"
    if source == "tfds" and name not in TFDS_DATASETS:
        problems.append(
            f"source 'tfds' is available for {list(TFDS_DATASETS)}. Received: name={name!r}"
        )
    own = sorted(k for k in values if k in DATASET_FIELDS.get(name, {}))
    if source == "tfds" and own:
        received = ", ".join(f"{k}={values[k]!r}" for k in own)
        problems.append(
            f"source 'tfds' takes no dataset options; expected none of {own}. Received: {received}"
        )
    if source == "tfds" and values.get("pseudo_labels") is not None:
        problems.append(
            "pseudo_labels replaces the labels of files read from disk, not of TFDS records; "
            f"use source 'files'. Received: pseudo_labels={values['pseudo_labels']!r}"
        )
    if source != "tfds" and values.get("data_dir") is not None:
        problems.append(
            "data_dir is only used with source 'tfds'. "
            f"Received: data_dir={values['data_dir']!r}, source={source!r}"
        )
    return problems


#: Rules over the ``data`` keys of a split (``data`` merged with ``data.train`` or ``data.val``):
#: ``rule(dataset_name, values) -> [problem]``, each problem starting with the key it names.
DATA_RULES = (_tfds_rules,)


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
        if f.lo is None:
            problem = None if min(pair) >= 1 else "must be positive"
        else:
            problem = None if min(pair) >= f.lo else f"must be >= {f.lo:g} on each side"
    elif kind == "strs":
        if not isinstance(value, (list, tuple)) or not value:
            return "must be a non-empty list of strings"
        problem = (
            None
            if all(isinstance(v, str) and v for v in value)
            else ("every item must be a non-empty string")
        )
    elif kind == "colors":
        ok = (
            isinstance(value, (list, tuple))
            and value
            and all(
                isinstance(c, (list, tuple))
                and len(c) == 3
                and all(_integer(v) and 0 <= v <= 255 for v in c)
                for c in value
            )
        )
        problem = None if ok else "must be a non-empty list of [r, g, b] colours, each 0..255"
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


def _unknown_keys(section, unknown, known, note=""):
    hints = [f"{k!r}{_did_you_mean(k.split('.')[-1], known)}" for k in sorted(unknown, key=str)]
    return (
        f"Unknown keys in config section {section!r}{note}: {sorted(unknown, key=str)}: "
        f"{', '.join(hints)}; allowed: {sorted(known)}"
    )


def _section_problems(section, values, fields):
    """Type, range and required-key problems of one section, and its unknown keys."""
    problems, unknown = [], []
    for key, value in values.items():
        if key in fields:
            problem = check_value(value, fields[key])
            if problem:
                problems.append(f"{section}.{key} {problem}. Received: {value!r}")
        else:
            unknown.append(key)
    for key, f in fields.items():
        if f.default is REQUIRED and values.get(key) is None:
            problems.append(f"{section}.{key} is required. Received none")
    return problems, unknown


def _data_problems(values):
    """The ``data`` section: the dataset name, then every key of ``data``, ``data.train`` and
    ``data.val`` against the common keys and the dataset's own (:data:`DATASET_FIELDS`)."""
    from deeplab_tf.data.catalog import DATASET_NAMES

    common = SCHEMA["data"]
    problems, unknown = _section_problems("data", values, common)
    name = values.get("name")
    if not isinstance(name, str):
        return problems  # data.name is required / must be a string: reported above
    if name not in DATASET_NAMES:
        problems.append(
            f"data.name must be one of {list(DATASET_NAMES)}{_did_you_mean(name, DATASET_NAMES)}. "
            f"Received: {name!r}"
        )
        return problems  # the dataset's own keys cannot be judged
    own = DATASET_FIELDS[name]
    splits = [s for s in ("train", "val") if isinstance(values.get(s), dict)]
    for split in splits:
        for key, value in values[split].items():
            if key in ("name", "train", "val"):
                problems.append(
                    f"data.{split}.{key} cannot be set per split: name, train and val are keys "
                    f"of data itself. Received: {value!r}"
                )
                continue
            f = own.get(key) or common.get(key)
            if f is None:
                unknown.append(f"{split}.{key}")
                continue
            problem = check_value(value, f)
            if problem:
                problems.append(f"data.{split}.{key} {problem}. Received: {value!r}")
    checked = {k for k in own if k not in common}
    for key in [k for k in values if k in checked]:
        problem = check_value(values[key], own[key])
        if problem:
            problems.append(f"data.{key} {problem}. Received: {values[key]!r}")
    unknown = [k for k in unknown if k.split(".")[-1] not in own]
    if name == "synthetic":
        for where, mapping in [("", values)] + [(f"{s}.", values[s]) for s in splits]:
            for key in [k for k in FILE_KEYS if k in mapping]:
                problems.append(
                    f"data.{where}{key} is not a key of dataset 'synthetic' (it reads no files; "
                    f"expected only split, seed and {sorted(own)}). Received: {mapping[key]!r}"
                )
    if unknown:
        known = (set(common) - (set(FILE_KEYS) if name == "synthetic" else set())) | set(own)
        elsewhere = []
        for key in sorted({k.split(".")[-1] for k in unknown}):
            owners = [d for d, fields in DATASET_FIELDS.items() if key in fields and d != name]
            if owners:
                elsewhere.append(f"{key!r} is a key of {', '.join(map(repr, owners))}")
        problems.append(
            _unknown_keys("data", unknown, known, f" for dataset {name!r}")
            + (f" ({'; '.join(elsewhere)})" if elsewhere else "")
        )
    for rule in DATA_RULES:
        common_problems = rule(name, values)
        problems += [f"data.{p}" for p in common_problems]
        for split in splits:
            found = rule(name, {**values, **values[split]})
            problems += [f"data.{split}.{p}" for p in found if p not in common_problems]
    return problems


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
        if section == "data":
            problems += _data_problems(values)
            continue
        found, unknown = _section_problems(section, values, fields)
        problems += found
        if unknown:
            problems.append(_unknown_keys(section, unknown, set(fields)))
        if section == "train":
            problems += _lr_mult_problems(values.get("lr_mult"))
    if problems:
        raise ValueError(
            f"Invalid training config ({len(problems)} problem{'s' * (len(problems) > 1)}):\n  "
            + "\n  ".join(problems)
        )


def _lr_mult_problems(lr_mult):
    problems = []
    if isinstance(lr_mult, dict):
        for k, v in lr_mult.items():
            if k not in _LR_MULT_KEYS:
                problems.append(
                    f"unknown key train.lr_mult.{k}{_did_you_mean(k, _LR_MULT_KEYS)}; "
                    f"expected one of {list(_LR_MULT_KEYS)}"
                )
            elif check_value(v, Field("float", lo=0.0)):
                problems.append(f"train.lr_mult.{k} must be a finite number >= 0. Received: {v!r}")
    return problems


def defaults(section: str, recipe: dict) -> dict:
    """The section's defaults (``RECIPE`` ones from ``recipe``, else the field's ``fallback``;
    required keys left out). Sections not in :data:`FILLED_SECTIONS` have none."""
    if section not in FILLED_SECTIONS:
        return {}
    out = {}
    for key, f in SCHEMA[section].items():
        if f.default is REQUIRED:
            continue
        if f.default is RECIPE:
            if key in recipe:
                out[key] = recipe[key]
            elif f.fallback is not None:
                out[key] = copy.deepcopy(f.fallback)
        else:
            out[key] = f.default
    return out
