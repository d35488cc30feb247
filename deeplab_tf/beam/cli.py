"""``deeplab-tf predict|evaluate --runner RUNNER [-- BEAM OPTIONS]`` (docs/scale-out.md)."""

from __future__ import annotations

import sys


def _print_metrics(out):
    m = {"images_done": 0, "failures": 0, **out.get("metrics", {})}  # unset counters: 0
    keys = ("images_done", "failures", "crf_ms_sum", "crf_ms_mean", "model_ms_mean")
    shown = ", ".join(f"{k}={m[k]}" for k in keys if k in m)
    extra = f", attempts={out['attempts']}"
    if out.get("resumed"):
        extra += f", resumed={out['resumed']} (complete before the last attempt)"
    print(f"deeplab-tf: beam metrics: {shown}{extra}")


def _settings(args, settings):
    settings = dict(settings, preset=getattr(args, "preset", None))
    if settings["preset"]:
        settings["model"] = None
    return settings


def run_predict(args, settings):
    """The Beam path of ``predict``; ``settings``: from ``build_predictor`` (checked)."""
    from deeplab_tf.beam.pipeline import predict_pipeline
    from deeplab_tf.cli import dataset_kwargs
    from deeplab_tf.errors import CLIError

    if not 0.0 <= args.alpha <= 1.0:
        raise CLIError(f"--alpha must be in [0, 1]. Received: {args.alpha}")
    try:
        settings = _settings(args, settings)
        out = predict_pipeline(
            args.inputs or None, args.out, dataset=args.dataset, split=args.split,
            root=args.root, dataset_args=dataset_kwargs(args.dataset_arg), limit=args.limit,
            probs=args.probs, palette=args.palette, alpha=args.alpha,
            legend=args.legend, max_pixels=args.max_pixels, overwrite=args.overwrite,
            batch_size=args.batch_size, runner=args.runner, pipeline_args=args.pipeline_args,
            settings=settings, log=lambda m: print(f"deeplab-tf: {m}", file=sys.stderr),
        )  # fmt: skip
    except (ValueError, ImportError) as err:
        raise CLIError(str(err)) from None
    for dead in out["failed"]:
        print(f"deeplab-tf: error: {dead['input']}: {dead['error']}", file=sys.stderr)
    _print_metrics(out)
    print(f"deeplab-tf: wrote {out['done']} of {out['images']} image(s) to {args.out}", end="")
    print(f"; {len(out['failed'])} failed (see {out['dead_letter_path']})" if out["failed"] else "")
    return 1 if out["failed"] or out["done"] != out["images"] else 0


def run_evaluate(args, info, settings, dataset_args, report_scores):
    """The Beam path of ``evaluate``: ``report_scores`` prints and writes what it does."""
    from deeplab_tf.beam.pipeline import evaluate_pipeline
    from deeplab_tf.errors import CLIError

    if args.save_visuals:
        raise CLIError("--save-visuals is not available with --runner")
    try:
        settings = _settings(args, settings)
        out = evaluate_pipeline(
            args.dataset, args.split, args.root, dataset_args=dataset_args,
            limit=args.limit, batch_size=args.batch_size, runner=args.runner,
            pipeline_args=args.pipeline_args, settings=settings,
            log=lambda m: print(f"deeplab-tf: {m}", file=sys.stderr),
        )  # fmt: skip
    except (ValueError, ImportError) as err:
        raise CLIError(str(err)) from None
    for dead in out["failed"]:
        print(f"deeplab-tf: error: {dead['input']}: {dead['error']}", file=sys.stderr)
    _print_metrics(out)
    scores = dict(out["scores"], failed=out["failed"])
    rc = report_scores(args, info, scores, settings)
    return 1 if out["failed"] else rc
