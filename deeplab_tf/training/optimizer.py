"""Caffe's SGD with per-parameter learning-rate multipliers, and the poly schedule.

The authors' solvers (docs/architecture.md#solver-and-schedule) use Caffe's SGD with momentum
and L2 weight decay added to the gradient, scaled per parameter blob by ``lr_mult`` and
``decay_mult``::

    v = momentum * v + lr * lr_mult * (grad + weight_decay * decay_mult * w)
    w = w - v

With ``lr_mult = 1`` and no weight decay this is the update of Keras's ``SGD`` with momentum
(whose velocity is ``-v``), under a schedule too. :class:`CaffeSGD` exists for what Keras's
optimizers do not do:

* per-variable multipliers: the DeepLab prototxts set ``lr_mult`` 1 / ``decay_mult`` 1 on
  backbone weights, 2 / 0 on biases, 10 / 1 on classifier weights and 20 / 0 on classifier
  biases; frozen BatchNorm has ``lr_mult`` 0 (in Keras: it is not trainable, so the optimizer
  never sees it). Keras has one learning rate per optimizer;
* weight decay added into the gradient, so that it goes through the momentum as Caffe's
  regularization does (it runs before the update). Keras's ``weight_decay`` is decoupled
  (``w -= lr * weight_decay * w`` beside the update), and variables can be excluded from it
  but not given their own multiplier;
* gradient accumulation (Caffe's ``iter_size``) that works under a ``tf.distribute`` strategy
  with several replicas, and a schedule that counts applied updates: Keras's accumulation
  calls the cross-replica update inside ``ops.cond``, which ``tf.distribute`` refuses, and its
  schedules see every micro-batch.
"""

from __future__ import annotations

import warnings

import keras
from keras import ops

PACKAGE = "deeplab_tf"

#: Caffe multipliers of the DeepLab v2 prototxts.
DEFAULT_LR_MULT = {
    "weights": 1.0,
    "biases": 2.0,
    "classifier_weights": 10.0,
    "classifier_biases": 20.0,
}
#: The Caffe release's classifier names (VGG ``fc8*``, ResNet ``fc1_voc12*``): the fallback for
#: models that do not say which layers are their classifier (a DeepLabV2 does).
CLASSIFIER_PREFIXES = ("fc8", "fc1_voc12")
_NO_DECAY_NAMES = ("bias", "gamma", "beta")


def variable_multipliers(
    variable, lr_mult=None, classifier_prefixes=CLASSIFIER_PREFIXES, classifier_layers=None
):
    """Caffe's ``(lr_mult, decay_mult)`` for one Keras variable, from its path.

    Rules: a variable named ``bias`` gets the bias multiplier and no decay; a trainable BatchNorm
    ``gamma``/``beta`` (only with ``freeze_batchnorm=False``, never in the paper) gets the weight
    multiplier and no decay; everything else (kernels) gets the weight multiplier and decay 1.
    A variable belongs to the classifier when it says so (``deeplab_classifier``, set by
    :class:`~deeplab_tf.DeepLabV2` on its classifier's variables), else when a component of its
    path is one of ``classifier_layers`` or, when those are not given either, starts with one of
    ``classifier_prefixes`` (the Caffe release's names).

    Args:
        variable: a ``keras.Variable`` (uses ``.path``, falling back to ``.name``).
        lr_mult: dict with keys ``weights``, ``biases``, ``classifier_weights``,
            ``classifier_biases`` (defaults to :data:`DEFAULT_LR_MULT`).
        classifier_prefixes: layer-name prefixes of the classifier.
        classifier_layers: exact classifier layer names; win over the prefixes.

    Returns:
        ``(lr_mult, decay_mult)`` floats.
    """
    lr_mult = {**DEFAULT_LR_MULT, **(lr_mult or {})}
    path = str(getattr(variable, "path", None) or variable.name)
    parts = path.split("/")
    leaf = parts[-1].split(":")[0]
    marked = getattr(variable, "deeplab_classifier", None)
    if marked is not None:
        is_classifier = bool(marked)
    elif classifier_layers is not None:
        is_classifier = any(p in tuple(classifier_layers) for p in parts[:-1])
    else:
        is_classifier = any(p.startswith(tuple(classifier_prefixes)) for p in parts[:-1])
    prefix = "classifier_" if is_classifier else ""
    if leaf == "bias":
        return float(lr_mult[prefix + "biases"]), 0.0
    if leaf in _NO_DECAY_NAMES:
        return float(lr_mult[prefix + "weights"]), 0.0
    return float(lr_mult[prefix + "weights"]), 1.0


@keras.saving.register_keras_serializable(package=PACKAGE)
class CaffeSGD(keras.optimizers.Optimizer):
    """SGD exactly as Caffe's solver runs it, with DeepLab's per-parameter multipliers.

    Per variable ``w`` with gradient ``g`` (averaged over ``gradient_accumulation_steps``
    micro-batches when set, like Caffe's ``iter_size``)::

        v = momentum * v + lr * lr_mult * (g + weight_decay * decay_mult * w)
        w = w - v

    A learning-rate schedule sees the number of *applied updates* (``optimizer.iterations``),
    not micro-batches, so ``batch 5 x 2 accumulation`` follows the same poly curve as batch 10.
    Accumulation also works under ``tf.distribute`` strategies (gradients are summed over the
    replicas every micro-batch, then accumulated), which Keras's generic accumulation does not.

    Paper: Sec. 4.1.1-4.1.2; the authors' solvers (docs/architecture.md#solver-and-schedule).

    Args:
        learning_rate: float or a ``LearningRateSchedule`` (e.g. :func:`poly_schedule`).
        momentum: Caffe momentum (0.9).
        weight_decay: L2 coefficient added to the gradient (5e-4). Not Keras's decoupled decay.
        lr_mult: multipliers, keys ``weights``, ``biases``, ``classifier_weights``,
            ``classifier_biases`` (default 1, 2, 10, 20).
        classifier_layers: names of the classifier layers, for models other than
            :class:`~deeplab_tf.DeepLabV2` (whose classifier variables are marked, which wins).
            With neither marks nor names, ``classifier_prefixes`` decide, with a warning that
            says how many variables matched.
        classifier_prefixes: layer-name prefixes treated as the classifier when
            ``classifier_layers`` is not known (default: the Caffe release's names).
        **kwargs: passed to ``keras.optimizers.Optimizer`` (``gradient_accumulation_steps``,
            ``clipnorm``, ``name``...).

    Example:
        >>> opt = CaffeSGD(poly_schedule(2.5e-4, 20000), gradient_accumulation_steps=2)
    """

    def __init__(
        self,
        learning_rate=0.001,
        momentum: float = 0.9,
        weight_decay: float = 5e-4,
        lr_mult=None,
        classifier_prefixes=CLASSIFIER_PREFIXES,
        classifier_layers=None,
        name: str = "caffe_sgd",
        **kwargs,
    ):
        if kwargs.get("use_ema"):
            raise ValueError("CaffeSGD does not support use_ema. Received: use_ema=True")
        # Keras's own (decoupled) weight_decay must stay off: ours is L2 in the gradient.
        kwargs.pop("weight_decay", None)
        super().__init__(learning_rate=learning_rate, name=name, **kwargs)
        if not 0.0 <= float(momentum) < 1.0:
            raise ValueError(f"momentum must be in [0, 1). Received: momentum={momentum!r}")
        if float(weight_decay) < 0:
            raise ValueError(f"weight_decay must be >= 0. Received: weight_decay={weight_decay!r}")
        lr_mult = dict(lr_mult or {})
        unknown = set(lr_mult) - set(DEFAULT_LR_MULT)
        if unknown:
            raise ValueError(
                f"lr_mult keys must be among {sorted(DEFAULT_LR_MULT)}. Received: {sorted(unknown)}"
            )
        self.momentum = float(momentum)
        self.caffe_weight_decay = float(weight_decay)
        self.lr_mult = {k: float(v) for k, v in {**DEFAULT_LR_MULT, **lr_mult}.items()}
        self.classifier_prefixes = tuple(classifier_prefixes)
        self.classifier_layers = None if classifier_layers is None else tuple(classifier_layers)

    def build(self, variables):
        if self.built:
            return
        super().build(variables)
        self.velocities = self.add_optimizer_variables(variables, "velocity")
        self._multipliers = [
            variable_multipliers(v, self.lr_mult, self.classifier_prefixes, self.classifier_layers)
            for v in variables
        ]
        marked = any(getattr(v, "deeplab_classifier", None) for v in variables)
        if self.classifier_layers is None and not marked:
            prefixes = tuple(self.classifier_prefixes)
            found = sum(
                any(part.startswith(prefixes) for part in str(v.path).split("/")[:-1])
                for v in variables
            )
            warnings.warn(
                "CaffeSGD was not told which layers are the classifier (the model is not a "
                "DeepLabV2 and classifier_layers was not given): it used the layer-name prefixes "
                f"{self.classifier_prefixes} and found {found} classifier variable(s) of "
                f"{len(variables)}.",
                stacklevel=2,
            )

    def _backend_apply_gradients(self, grads, trainable_variables):
        import tensorflow as tf

        replica = tf.distribute.get_replica_context()
        if (
            not self.gradient_accumulation_steps
            or replica is None
            or replica.num_replicas_in_sync == 1
        ):
            return super()._backend_apply_gradients(grads, trainable_variables)
        # Keras's accumulation puts merge_call (the cross-replica update) inside ops.cond, which
        # tf.distribute refuses. Instead: all-reduce every micro-batch's gradients in replica
        # context, then branch once in cross-replica context, where updates need no merge_call.
        if self.clipnorm or self.clipvalue or self.global_clipnorm:
            raise ValueError(
                "CaffeSGD does not clip gradients with gradient_accumulation_steps under a "
                f"tf.distribute strategy. Received: clipnorm={self.clipnorm}, "
                f"clipvalue={self.clipvalue}, global_clipnorm={self.global_clipnorm}"
            )
        variables = [v.value if hasattr(v, "value") else v for v in trainable_variables]
        accumulators = [
            self._accumulated_gradients[self._get_variable_index(v)].value
            for v in trainable_variables
        ]
        grads = replica.all_reduce(tf.distribute.ReduceOp.SUM, list(grads))
        steps = self.gradient_accumulation_steps

        def merge_fn(distribution, grads, variables, accumulators):
            is_update_step = (self._iterations + 1) % steps == 0
            learning_rate = self.learning_rate

            def update_var(var, grad, acc, lr):
                return self.update_step((grad + acc) / steps, var, lr)

            def apply_update():
                for grad, var, acc in zip(grads, variables, accumulators):
                    distribution.extended.update(
                        var, update_var, args=(grad, acc, learning_rate), group=False
                    )
                for acc in accumulators:
                    distribution.extended.update(
                        acc, lambda a: a.assign(tf.zeros_like(a)), group=False
                    )
                return tf.constant(True)

            def accumulate():
                for grad, acc in zip(grads, accumulators):
                    distribution.extended.update(
                        acc, lambda a, g: a.assign_add(g), args=(grad,), group=False
                    )
                return tf.constant(False)

            tf.cond(is_update_step, apply_update, accumulate)

        replica.merge_call(merge_fn, args=(grads, variables, accumulators))

    def _get_current_learning_rate(self):
        # Schedules count applied updates (Caffe iterations), not accumulated micro-batches.
        if isinstance(self._learning_rate, keras.optimizers.schedules.LearningRateSchedule):
            return self._learning_rate(self.iterations)
        return super()._get_current_learning_rate()

    def update_step(self, gradient, variable, learning_rate):
        index = self._get_variable_index(variable)
        lr_mult, decay_mult = self._multipliers[index]
        dtype = variable.dtype
        lr = ops.cast(learning_rate, dtype)
        g = ops.cast(gradient, dtype)
        if decay_mult and self.caffe_weight_decay:
            g = ops.add(
                g, ops.multiply(ops.cast(self.caffe_weight_decay * decay_mult, dtype), variable)
            )
        v = self.velocities[index]
        self.assign(
            v,
            ops.add(
                ops.multiply(v, ops.cast(self.momentum, dtype)),
                ops.multiply(ops.multiply(lr, ops.cast(lr_mult, dtype)), g),
            ),
        )
        self.assign_sub(variable, v)

    def get_config(self):
        config = super().get_config()
        config.pop("weight_decay", None)
        config.update(
            {
                "momentum": self.momentum,
                "weight_decay": self.caffe_weight_decay,
                "lr_mult": dict(self.lr_mult),
                "classifier_prefixes": list(self.classifier_prefixes),
                "classifier_layers": None
                if self.classifier_layers is None
                else list(self.classifier_layers),
            }
        )
        return config


@keras.saving.register_keras_serializable(package=PACKAGE)
class PolyDecay(keras.optimizers.schedules.LearningRateSchedule):
    """Caffe's ``poly`` policy: ``lr = base_lr * (1 - step / max_steps) ** power``.

    Reaches 0 at ``max_steps`` and stays there. ``keras.optimizers.schedules.PolynomialDecay(
    base_lr, max_steps, end_learning_rate=0.0, power=power)`` follows the same curve up to
    float32 rounding; this class computes ``(max_steps - step) / max_steps``, which stays exact
    in the last steps where ``1 - step / max_steps`` loses relative precision (1.5e-4 at step
    19,999 of 20,000), and keeps Caffe's names (``base_lr``, ``max_steps``, ``power``).

    Args:
        base_lr: initial learning rate.
        max_steps: Caffe ``max_iter`` (number of applied updates).
        power: 0.9 in the paper.
    """

    def __init__(self, base_lr: float, max_steps: int, power: float = 0.9, name: str = "poly"):
        if float(base_lr) <= 0:
            raise ValueError(f"base_lr must be > 0. Received: base_lr={base_lr!r}")
        if int(max_steps) < 1:
            raise ValueError(f"max_steps must be >= 1. Received: max_steps={max_steps!r}")
        self.base_lr = float(base_lr)
        self.max_steps = int(max_steps)
        self.power = float(power)
        self.name = name

    def __call__(self, step):
        step = ops.minimum(ops.cast(step, "float32"), float(self.max_steps))
        # (max - step) / max rather than 1 - step / max: exact near the end in float32.
        return self.base_lr * ops.power(
            (float(self.max_steps) - step) / float(self.max_steps), self.power
        )

    def get_config(self):
        return {
            "base_lr": self.base_lr,
            "max_steps": self.max_steps,
            "power": self.power,
            "name": self.name,
        }


def poly_schedule(base_lr: float, max_steps: int, power: float = 0.9) -> PolyDecay:
    """The paper's schedule (Sec. 4.1.2, Table 2: "poly", power 0.9): see :class:`PolyDecay`."""
    return PolyDecay(base_lr, max_steps, power)
