"""``deeplab-tf quickstart``: the whole pipeline on built-in data, in minutes, on a CPU.

1. trains a zoo DeepLabV2 (MobileNetV2 ASPP, the registry's phone-sized model) from scratch on
   the built-in synthetic scenes (no download) with a progress bar;
2. evaluates it on a held-out split (per-class IoU table, JSON);
3. segments sample images with multi-scale inference (scales 1, 0.75, 0.5) and the dense CRF,
   writing overlays before and after the CRF;
4. exports a TF Serving SavedModel (``serving/1``) and a TFLite file, and checks the TFLite
   file in LiteRT against the Keras model;
5. draws a one-page summary (training curve, IoU per class, before/after CRF).

Everything is written into a hidden temporary folder beside ``<out>`` and renamed to ``<out>``
only when complete (an existing ``<out>``, with ``--overwrite``, is swapped out atomically); an
interrupted run (Ctrl-C) removes its partial folder, and a killed run's is removed by the next
run.
"""

from __future__ import annotations

import dataclasses
import importlib.util
import os
import time

from deeplab_tf import atomic

QUICKSTART_CONFIG = "synthetic_tiny"
MSC_SCALES = (1.0, 0.75, 0.5)
#: Training length, chosen by held-out mIoU on these scenes against training time (steps, seconds
#: and mIoU measured: benchmarks/README.md, "Figures behind code comments").
QUICKSTART_STEPS = 480
CHECKPOINT_EVERY = 160


def _stage(title):
    print(f"\n== {title}", flush=True)


def check_output(out: str, overwrite: bool) -> None:
    """Refuses an existing output (unless ``overwrite``) or one that is a file, before any work."""
    if os.path.isfile(out):
        raise ValueError(f"The output path is a file. Received: {out!r}")
    if os.path.exists(out) and not overwrite:
        raise ValueError(f"{out!r} already exists; pass --overwrite or choose another --out.")


def run_quickstart(
    out: str = "deeplab_quickstart",
    steps: int | None = None,
    num_train: int | None = None,
    num_val: int = 32,
    num_samples: int = 4,
    sample_size: int = 96,
    crf_iterations: int = 10,
    overwrite: bool = False,
    verbose: int = 1,
) -> dict:
    """Runs the quickstart and returns its summary (also written to ``<out>/summary.json``).

    Args:
        out: output folder (created; must not exist unless ``overwrite``).
        steps: training steps (default :data:`QUICKSTART_STEPS`, 480); any positive number,
            rounded up to a multiple of the checkpoint interval (160).
        num_train: training images (default: the config's).
        num_val: held-out images for evaluation.
        num_samples: sample images segmented with MSC + CRF.
        sample_size: side of the sample images.
        crf_iterations: mean-field iterations of the CRF.
        overwrite: replace an existing ``out``.
        verbose: Keras progress bar verbosity (0 silent, 1 bar).

    Returns:
        A dict with the output path, the held-out metrics, CRF effect and file names.
    """
    out = os.path.abspath(out)
    check_output(out, overwrite)
    if steps is not None and (not isinstance(steps, int) or steps < 1):
        raise ValueError(f"steps must be a positive int. Received: steps={steps!r}")
    with atomic.atomic_dir(out, overwrite=overwrite) as work:
        summary = _run(
            work, steps, num_train, num_val, num_samples, sample_size, crf_iterations, verbose
        )
        summary["output"] = out
        atomic.write_json(os.path.join(work, "summary.json"), summary)
    return summary


def _run(work, steps, num_train, num_val, num_samples, sample_size, crf_iterations, verbose):
    """The five stages into ``work``; returns the summary (``run_quickstart`` writes it)."""
    t0 = time.perf_counter()
    config = quickstart_config(work, steps, num_train, verbose)
    net, curve = train_stage(work, config)
    heldout = evaluate_stage(work, net, config["data"], num_val)
    samples = segment_stage(work, net, heldout, num_samples, sample_size, crf_iterations)
    exported = export_stage(work, net, samples.crf, heldout.dataset, config["data"]["size"])
    _stage("5/5 Drawing the summary figure")
    figure = os.path.join(work, "summary.png")
    info = heldout.info
    draw_summary(
        figure,
        curve,
        heldout.scores,
        info.class_names,
        samples.images[0],
        samples.before[0],
        samples.after[0],
        info,
    )
    scores, msc_scores = heldout.scores, heldout.msc_scores
    return {
        "model": net.name,
        "steps": config["train"]["steps"],
        "seconds": round(time.perf_counter() - t0, 1),
        "heldout": {
            **{
                k: scores[k] for k in ("mean_iou", "pixel_accuracy", "mean_accuracy") if k in scores
            },
            "mean_iou_msc": msc_scores["mean_iou"],
        },
        "per_class_iou": scores.get("per_class_iou"),
        "crf": {
            "pixel_accuracy_before": samples.acc_before,
            "pixel_accuracy_after": samples.acc_after,
        },
        "tflite_label_agreement": exported["tflite_agreement"],
        "files": {
            "model": "model.keras",
            "metrics": "metrics.json",
            "summary_figure": "summary.png",
            "samples": samples.files,
            "saved_model": exported["saved_model"],
            "tflite": exported["tflite"],
        },
        "training_curve": curve,
    }


def quickstart_config(work, steps, num_train, verbose) -> dict:
    """The shipped ``synthetic_tiny`` config, set up for the quickstart.

    Trains into ``work/train`` without TensorBoard, for ``steps`` (default
    :data:`QUICKSTART_STEPS`) rounded up to a multiple of the checkpoint interval.
    """
    from deeplab_tf.training.config_files import load_config

    config = load_config(QUICKSTART_CONFIG)
    config["output"]["workdir"] = os.path.join(work, "train")
    config["output"]["tensorboard"] = False
    steps = QUICKSTART_STEPS if steps is None else steps
    every = min(CHECKPOINT_EVERY, steps)
    config["output"]["checkpoint_every"] = every
    config["train"]["steps"] = -(-steps // every) * every
    if num_train is not None:
        config["data"]["train"]["num_images"] = int(num_train)
    config["train"]["verbose"] = verbose
    return config


def train_stage(work, config):
    """Stage 1: trains, saves ``work/model.keras`` for inference; returns ``(net, curve)``.

    ``net`` is the trained network (unwrapped from MSC training) with its BatchNorm layers in
    inference mode; ``curve`` holds the epoch history and every step's running loss and IoU.
    """
    import keras

    from deeplab_tf.training.trainer import train

    data = config["data"]
    _stage(
        f"1/5 Training {config['model']['name']} on synthetic scenes "
        f"({config['train']['steps']} steps, {data['size']}x{data['size']} crops)"
    )
    recorder = _StepRecorder()
    model, history = train(config, callbacks=[recorder])
    net = getattr(model, "model", model)  # the wrapped network of an MSC training model
    for layer in net.layers:  # deployed models run BatchNorm in inference mode
        if isinstance(layer, keras.layers.BatchNormalization):
            layer.trainable = False
    net.save(os.path.join(work, "model.keras"))
    curve = {k: [float(v) for v in vals] for k, vals in history.history.items()}
    curve["step_loss"] = recorder.losses
    curve["step_mean_iou"] = recorder.ious
    return net, curve


@dataclasses.dataclass
class HeldOut:
    """What :func:`evaluate_stage` measured, and what the later stages reuse."""

    scores: dict  #: single-scale metrics, with ``multi_scale`` (the MSC metrics) inside
    msc_scores: dict
    predictor: object  #: the MSC :class:`~deeplab_tf.inference.predict.Predictor`
    dataset: object  #: the held-out ``tf.data.Dataset``
    info: object  #: its :class:`~deeplab_tf.data.info.DatasetInfo`


def evaluate_stage(work, net, data: dict, num_val: int) -> HeldOut:
    """Stage 2: scores ``num_val`` held-out scenes single-scale and with MSC; ``metrics.json``."""
    from deeplab_tf.data.synthetic import synthetic_dataset
    from deeplab_tf.evaluation.evaluate import evaluate
    from deeplab_tf.evaluation.metrics import format_table
    from deeplab_tf.inference.multiscale import MultiScaleInference
    from deeplab_tf.inference.predict import Predictor

    num_classes = data["num_classes"]
    _stage(f"2/5 Evaluating on {num_val} held-out images (single-scale and MSC {MSC_SCALES})")
    val_ds, info = synthetic_dataset("val", num_val, data["size"], num_classes, seed=1)
    scores = evaluate(
        Predictor(MultiScaleInference(net, scales=(1.0,))), val_ds.as_numpy_iterator(), num_classes
    )
    scores.pop("confusion_matrix", None)
    predictor = Predictor(MultiScaleInference(net, scales=MSC_SCALES))
    msc_scores = evaluate(predictor, val_ds.as_numpy_iterator(), num_classes)
    msc_scores.pop("confusion_matrix", None)
    print(format_table(scores, info.class_names))
    print(
        f"held-out mIoU {scores['mean_iou']:.3f} single-scale, {msc_scores['mean_iou']:.3f} with "
        f"MSC {MSC_SCALES} (the 0.5 scale of a {data['size']}-px scene is too coarse to help)"
    )
    scores["multi_scale"] = {"scales": list(MSC_SCALES), **msc_scores}
    atomic.write_json(os.path.join(work, "metrics.json"), scores)
    return HeldOut(scores, msc_scores, predictor, val_ds, info)


@dataclasses.dataclass
class Samples:
    """The sample scenes of :func:`segment_stage`, before and after the CRF."""

    images: object  #: ``(N, H, W, 3)`` uint8
    before: object  #: ``(N, H, W)`` MSC labels
    after: object  #: ``(N, H, W)`` labels after the dense CRF
    acc_before: float
    acc_after: float
    files: list  #: the panels written, relative to the output folder
    crf: object  #: the :class:`~deeplab_tf.crf.DenseCRF` used (exported with the model)


def segment_stage(work, net, heldout: HeldOut, num_samples, sample_size, crf_iterations):
    """Stage 3: segments sample scenes with MSC + dense CRF; writes ``work/samples/*.png``."""
    import numpy as np

    from deeplab_tf.crf import DenseCRF
    from deeplab_tf.data.synthetic import synthetic_arrays
    from deeplab_tf.models.deeplab import find_deeplab
    from deeplab_tf.visualize import overlay, save_rgb_png, side_by_side

    info = heldout.info
    _stage(f"3/5 Segmenting {num_samples} sample images with MSC + dense CRF")
    images, labels, ids = synthetic_arrays(
        "samples", num_samples, sample_size, info.num_classes, seed=2
    )
    crf = DenseCRF.from_preset(find_deeplab(net).backbone, iterations=crf_iterations)
    probs = np.stack([heldout.predictor(im) for im in images])
    refined = crf(images, probs).numpy()
    before, after = probs.argmax(-1), refined.argmax(-1)
    valid = labels != info.ignore_label
    acc_before = float((before == labels)[valid].mean())
    acc_after = float((after == labels)[valid].mean())
    os.makedirs(os.path.join(work, "samples"))
    sample_files = []
    for i, name in enumerate(ids):
        panel = side_by_side(
            images[i],
            before[i],
            labels[i],
            palette=info.palette,
            class_names=info.class_names,
            titles=["image", "prediction (MSC)", "ground truth"],
        )
        crf_panel = side_by_side(
            overlay(images[i], before[i], info.palette),
            after[i],
            before[i],
            palette=info.palette,
            class_names=info.class_names,
            titles=["overlay (MSC)", "after CRF", "before CRF"],
        )
        for suffix, pic in (("", panel), ("_crf", crf_panel)):
            path = os.path.join(work, "samples", f"{name}{suffix}.png")
            save_rgb_png(path, pic)
            sample_files.append(os.path.relpath(path, work))
    print(f"pixel accuracy on samples: {acc_before:.4f} before CRF, {acc_after:.4f} after")
    return Samples(images, before, after, acc_before, acc_after, sample_files, crf)


def export_stage(work, net, crf, val_ds, size: int) -> dict:
    """Stage 4: a TF Serving SavedModel (``serving/1``, with the CRF) and a TFLite file.

    The TFLite file is run in LiteRT on four held-out scenes against the Keras labels when
    ``ai_edge_litert`` is installed.

    Returns:
        ``{"saved_model", "tflite"}`` (paths relative to ``work``) and ``"tflite_agreement"``
        (the fraction of equal labels, ``None`` when LiteRT is missing).
    """
    import numpy as np

    from deeplab_tf.export.savedmodel import export_saved_model
    from deeplab_tf.export.tflite import export_tflite, run_tflite
    from deeplab_tf.inference.multiscale import MultiScaleInference

    _stage("4/5 Exporting a TF Serving SavedModel and a TFLite file")
    serving = export_saved_model(
        net, os.path.join(work, "serving"), version=1, scales=(1.0,), crf=crf
    )
    tflite_path = export_tflite(
        net, os.path.join(work, "tflite", "model_fp32.tflite"), (size, size)
    )
    print(f"SavedModel: {os.path.relpath(serving, work)}  (signatures: serving_default, ")
    print("  serving_uint8, serving_bytes, serving_crf; TF Serving warm-up requests)")
    if importlib.util.find_spec("ai_edge_litert") is None:
        tflite_agreement = None
        print(f"TFLite: {os.path.relpath(tflite_path, work)}  (not run: LiteRT is not installed")
        print("  here; pip install ai-edge-litert)")
    else:
        val_images = np.stack([e["image"] for e in val_ds.take(4).as_numpy_iterator()])
        keras_labels = MultiScaleInference(net, scales=(1.0,))(val_images).numpy().argmax(-1)
        lite = np.concatenate([run_tflite(tflite_path, im)["labels"] for im in val_images])
        tflite_agreement = float((lite == keras_labels).mean())
        print(f"TFLite: {os.path.relpath(tflite_path, work)}  (LiteRT vs Keras labels: ")
        print(f"  {tflite_agreement:.4%} equal)")
    return {
        "saved_model": os.path.relpath(serving, work),
        "tflite": os.path.relpath(tflite_path, work),
        "tflite_agreement": tflite_agreement,
    }


def _step_recorder_class():
    import keras

    class StepRecorder(keras.callbacks.Callback):
        """Keeps the running loss / mean IoU of every training step for the summary plot."""

        def __init__(self):
            super().__init__()
            self.losses, self.ious = [], []

        def on_train_batch_end(self, batch, logs=None):
            logs = logs or {}
            if "loss" in logs:
                self.losses.append(float(logs["loss"]))
            if "mean_iou" in logs:
                self.ious.append(float(logs["mean_iou"]))

    return StepRecorder


def _StepRecorder():
    return _step_recorder_class()()


def draw_summary(path, curve, scores, class_names, image, before, after, info):
    """One page: loss / mIoU curves, per-class IoU bars, and an image before/after the CRF."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from deeplab_tf.visualize import overlay

    fig = plt.figure(figsize=(12, 7.5), dpi=100)
    grid = fig.add_gridspec(2, 3)
    for col, (step_key, epoch_key, title) in enumerate(
        (("step_loss", "val_loss", "training loss"), ("step_mean_iou", "val_mean_iou", "mean IoU"))
    ):
        ax = fig.add_subplot(grid[0, col])
        steps = curve.get(step_key) or []
        ax.plot(range(1, len(steps) + 1), steps, label=f"train ({step_key[5:]}, running)")
        val = curve.get(epoch_key) or []
        if val and steps:
            every = len(steps) / len(val)
            xs = [round(every * (i + 1)) for i in range(len(val))]
            ax.plot(xs, val, marker="o", label=f"held-out ({epoch_key})")
        if "iou" in step_key:
            ax.set_ylim(0, 1)
        ax.set_xlabel("training step")
        ax.set_title(title)
        ax.legend()
    ax = fig.add_subplot(grid[0, 2])
    ious = scores.get("per_class_iou") or []
    values = [0.0 if v is None or v != v else v for v in ious]  # NaN: class absent
    colors = [tuple(c / 255 for c in info.palette[i]) for i in range(len(values))]
    ax.barh(list(class_names[: len(values)]), values, color=colors, edgecolor="black")
    ax.set_xlim(0, 1)
    ax.invert_yaxis()
    ax.set_title(f"held-out IoU per class (mIoU {scores.get('mean_iou', 0):.3f})")
    for col, (title, pic) in enumerate(
        (
            ("sample image", image),
            ("before CRF (MSC)", overlay(image, before, info.palette)),
            ("after dense CRF", overlay(image, after, info.palette)),
        )
    ):
        ax = fig.add_subplot(grid[1, col])
        ax.imshow(pic, interpolation="nearest")
        ax.set_title(title)
        ax.axis("off")
    fig.suptitle("deeplab-tf quickstart: DeepLabV2 (MobileNetV2 ASPP) on synthetic scenes")
    fig.tight_layout()
    try:
        atomic.atomic_write(path, lambda tmp: fig.savefig(tmp, format="png"))
    finally:
        plt.close(fig)


def register(sub):
    p = sub.add_parser(
        "quickstart",
        help="train, evaluate, segment (MSC + CRF) and export on built-in data, in minutes",
        description="Runs the whole pipeline on the built-in synthetic scenes (no download): "
        "training, held-out evaluation, multi-scale + dense-CRF segmentation of samples, "
        "SavedModel and TFLite export, and a summary figure. Takes a few minutes on 2 cores.",
    )
    p.add_argument("--out", default="deeplab_quickstart", help="output folder")
    p.add_argument("--steps", type=int, help="training steps (default 480)")
    p.add_argument("--num-train", type=int, help="training images (default 256)")
    p.add_argument("--num-val", type=int, default=32, help="held-out images (default 32)")
    p.add_argument("--num-samples", type=int, default=4, help="sample images (default 4)")
    p.add_argument("--crf-iterations", type=int, default=10)
    p.add_argument("--overwrite", action="store_true", help="replace an existing output folder")
    p.add_argument("--quiet", action="store_true", help="no training progress bar")
    p.set_defaults(func=_cli)


def _cli(args):
    from deeplab_tf.errors import CLIError

    try:
        check_output(os.path.abspath(args.out), args.overwrite)
        for name in ("steps", "num_train", "num_val", "num_samples", "crf_iterations"):
            value = getattr(args, name)
            if value is not None and value < 1:
                raise ValueError(f"--{name.replace('_', '-')} must be >= 1. Received: {value}")
    except ValueError as err:
        raise CLIError(str(err)) from None
    try:
        summary = run_quickstart(
            args.out,
            steps=args.steps,
            num_train=args.num_train,
            num_val=args.num_val,
            num_samples=args.num_samples,
            crf_iterations=args.crf_iterations,
            overwrite=args.overwrite,
            verbose=0 if args.quiet else 1,
        )
    except KeyboardInterrupt:
        print(
            "\ndeeplab-tf quickstart: interrupted; the partial output folder was removed "
            f"and {os.path.abspath(args.out)!r} was left as it was.",
            flush=True,
        )
        return 130
    held = summary["heldout"]
    print(
        f"\nDone in {summary['seconds']:.0f} s. Held-out mIoU {held.get('mean_iou', 0):.3f}, "
        f"pixel accuracy {held.get('pixel_accuracy', 0):.3f}."
    )
    print(f"Outputs in {summary['output']}")
    print(f"  summary figure: {os.path.join(summary['output'], 'summary.png')}")
    return 0
