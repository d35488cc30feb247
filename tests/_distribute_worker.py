"""One training process for tests/test_distribute.py (run as a script, never imported by pytest).

Trains a small zoo model (MobileNetV2 DeepLab, ASPP rates 1 and 2, frozen BatchNorm, 48 px) on
synthetic data with deeplab_tf.training.train and writes the final weights, the optimizer step
and the number of batches this process ran to ``--out`` (an .npz written atomically).

Modes:
    single        default strategy (the reference).
    mirrored      first a default-strategy run, then MirroredStrategy on two logical CPUs, in
                  one process (--out gets both: ``ref_*`` and ``dist_*`` arrays).
    multi_worker  MultiWorkerMirroredStrategy from TF_CONFIG (set by the test).
    drift         start weights whose BatchNorm statistics are fitted to the data (the whole
                  backbone learns; this random network is chaotic), then three runs recording
                  the weights after every update: default strategy (the reference), default
                  strategy with the two halves of every batch swapped (the same sums in another
                  float order) and MirroredStrategy on two logical CPUs. --out gets, per update,
                  the relative distance of the last two runs from the reference.
"""

import argparse
import os
import sys

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
os.environ.setdefault("CUDA_VISIBLE_DEVICES", "")


MODEL = {"name": "deeplabv2_mobilenetv2_aspp_l", "head": "aspp", "rates": [1, 2]}


def config(workdir, steps, every, accumulation, batch_size, weights=None, base_lr=0.02):
    return {
        "model": {**MODEL, "freeze_batchnorm": True, "weights": weights},
        "data": {
            "name": "synthetic",
            "size": 48,
            "num_classes": 3,
            "train": {"split": "train", "num_images": 16},
        },
        "train": {
            "steps": steps,
            "batch_size": batch_size,
            "accumulation_steps": accumulation,
            "crop_size": 40,
            "scales": [0.75, 1.0, 1.25],
            "msc": False,
            "optimizer": "caffe_sgd",
            "base_lr": base_lr,
            "seed": 3,
            "shuffle_buffer": 16,
            "validate_examples": 2,
            "verbose": 0,
        },
        "output": {"workdir": workdir, "checkpoint_every": every, "tensorboard": False},
    }


def main(argv=None):
    p = argparse.ArgumentParser()
    p.add_argument("--mode", choices=("single", "mirrored", "multi_worker", "drift"), required=True)
    p.add_argument("--workdir", required=True)
    p.add_argument("--out", required=True)
    p.add_argument("--steps", type=int, default=4)
    p.add_argument("--every", type=int, default=2)
    p.add_argument("--accumulation", type=int, default=2)
    p.add_argument("--batch-size", type=int, default=4)
    p.add_argument("--exit-after-batches", type=int, default=0)
    p.add_argument("--weights", help="start weights (.weights.h5) shared by all processes")
    args = p.parse_args(argv)

    import numpy as np
    import tensorflow as tf

    if args.mode in ("mirrored", "drift"):
        cpu = tf.config.list_physical_devices("CPU")[0]
        tf.config.set_logical_device_configuration(
            cpu, [tf.config.LogicalDeviceConfiguration()] * 2
        )
    strategy = None
    if args.mode == "multi_worker":
        from deeplab_tf.training.distribute import make_strategy

        strategy = make_strategy("multi_worker", communication="ring")

    import keras

    from deeplab_tf.training import train

    class Count(keras.callbacks.Callback):
        """Counts this process's batches (and can die like a killed worker); keeps the weights
        after every update (``record``)."""

        def __init__(self, record=False):
            super().__init__()
            self.n = 0
            self.start = None
            self.record = record
            self.updates = []

        def on_train_begin(self, logs=None):  # runs after the backup was restored
            self.start = [np.array(w) for w in self.model.get_weights()]

        def on_train_batch_end(self, batch, logs=None):
            self.n += 1
            step = int(keras.ops.convert_to_numpy(self.model.optimizer.iterations))
            if self.record and step > len(self.updates):
                self.updates.append([np.array(w) for w in self.model.get_weights()])
            if args.exit_after_batches and self.n == args.exit_after_batches:
                sys.stdout.flush()
                os._exit(3)  # like a killed process: no cleanup, no exception handling

    def run(workdir, strat):
        keras.utils.set_random_seed(0)
        counter = Count()
        cfg = config(
            workdir, args.steps, args.every, args.accumulation, args.batch_size, args.weights
        )
        model, history = train(cfg, callbacks=[counter], strategy=strat)
        weights = model.get_weights()
        step = int(keras.ops.convert_to_numpy(model.optimizer.iterations))
        loss = np.asarray(history.history["loss"], np.float64)
        moved = max(float(np.max(np.abs(a - b))) for a, b in zip(weights, counter.start))
        keras.backend.clear_session()
        return weights, step, counter.n, loss, moved

    out = {}
    if args.mode == "drift":
        out.update(drift(args, Count))
    elif args.mode == "mirrored":
        w, step, n, loss, moved = run(os.path.join(args.workdir, "ref"), "default")
        out.update({"ref_step": step, "ref_batches": n, "ref_loss": loss, "ref_moved": moved})
        out.update({f"ref_w{i}": v for i, v in enumerate(w)})
        from deeplab_tf.training.distribute import make_strategy

        mirrored = make_strategy("mirrored", devices=["/cpu:0", "/cpu:1"])
        out["dist_replicas"] = mirrored.num_replicas_in_sync
        w, step, n, loss, moved = run(os.path.join(args.workdir, "mirrored"), mirrored)
        out.update({"dist_step": step, "dist_batches": n, "dist_loss": loss, "dist_moved": moved})
        out.update({f"dist_w{i}": v for i, v in enumerate(w)})
        # A global batch that two replicas cannot share evenly is refused before training.
        bad = config(os.path.join(args.workdir, "bad"), 2, 2, 1, 3)
        try:
            train(bad, strategy=mirrored)
            out["batch_error"] = ""
        except ValueError as err:
            out["batch_error"] = str(err)
    else:
        w, step, n, loss, moved = run(args.workdir, strategy)
        out.update({"step": step, "batches": n, "loss": loss, "moved": moved})
        out.update({f"w{i}": v for i, v in enumerate(w)})
        if strategy is not None:
            out["replicas"] = strategy.num_replicas_in_sync
    tmp = args.out + f".tmp-{os.getpid()}.npz"
    np.savez(tmp, **out)
    os.replace(tmp, args.out)
    print("DONE", flush=True)


def drift(args, count_callback):
    """The ``drift`` mode: per-update distances of swapped-halves and mirrored runs."""
    import keras
    import numpy as np
    import tensorflow as tf

    from benchmarks._common import calibrate_batchnorm
    from deeplab_tf.data.synthetic import synthetic_dataset
    from deeplab_tf.models.registry import create_model
    from deeplab_tf.training import pipeline, train
    from deeplab_tf.training.distribute import make_strategy

    os.makedirs(args.workdir, exist_ok=True)
    weights = os.path.join(args.workdir, "fitted.weights.h5")
    keras.utils.set_random_seed(0)
    net = create_model(**MODEL, num_classes=3, freeze_batchnorm=True)
    ds, _ = synthetic_dataset("train", num_images=16, size=48, num_classes=3)
    batches = pipeline.train_pipeline(ds, 40, 8, None, (127.5,) * 3, seed=1, repeat=False)
    images = np.concatenate([x.numpy() for x, _ in batches])
    calibrate_batchnorm(net, images)  # moving mean/variance = statistics of the data
    net.save_weights(weights)
    keras.backend.clear_session()

    def run(name, strategy, swap=False):
        keras.utils.set_random_seed(0)
        counter = count_callback(record=True)
        cfg = config(os.path.join(args.workdir, name), args.steps, args.steps, 2, 4, weights, 0.002)
        original = pipeline.train_pipeline
        if swap:  # the same examples in every batch, halves exchanged: only float order differs
            pipeline.train_pipeline = lambda *a, **k: original(*a, **k).map(
                lambda x, y: (tf.roll(x, 2, 0), tf.roll(y, 2, 0))
            )
        try:
            model, _ = train(cfg, callbacks=[counter], strategy=strategy)
        finally:
            pipeline.train_pipeline = original
        step = int(keras.ops.convert_to_numpy(model.optimizer.iterations))
        keras.backend.clear_session()
        assert step == len(counter.updates) == args.steps and counter.n == 2 * args.steps
        return counter.start, counter.updates

    def norm(arrays):
        return float(np.sqrt(sum(np.sum(np.square(a.astype(np.float64))) for a in arrays)))

    start, ref = run("ref", "default")
    out = {
        # how far the reference moved from the start, per update (all weights; first conv)
        "moved": [norm([a - b for a, b in zip(w, start)]) for w in ref],
        "stem_moved": [norm([w[0] - start[0]]) / norm([start[0]]) for w in ref],
    }
    mirrored = make_strategy("mirrored", devices=["/cpu:0", "/cpu:1"])
    for name, strategy, swap in (("swap", "default", True), ("dist", mirrored, False)):
        _, updates = run(name, strategy, swap)
        out[name] = [
            norm([a - b for a, b in zip(w, r)]) / m for w, r, m in zip(updates, ref, out["moved"])
        ]
        out[name + "_max"] = [
            max(float(np.max(np.abs(a - b))) for a, b in zip(w, r)) for w, r in zip(updates, ref)
        ]
    return {k: np.asarray(v) for k, v in out.items()}


if __name__ == "__main__":
    main()
