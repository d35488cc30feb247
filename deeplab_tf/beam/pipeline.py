"""``predict_pipeline`` and ``evaluate_pipeline``: ``predict`` / ``evaluate`` on Apache Beam.

What the runners do about a failed worker, and what this module adds (docs/scale-out.md):

* Dataflow, Flink and Spark re-run the bundle (Dataflow: up to 4 times in batch jobs) or the
  task of a lost worker. The DirectRunner in ``multi_processing`` mode (Beam 2.77) does not:
  when a worker process dies, the job waits forever for the bundle that worker held. So a
  DirectRunner job in that mode runs in a child process supervised here: if one of its SDK
  worker processes disappears, the job is stopped and started again (``retries`` times) on
  the images whose outputs are not all there yet.
* Every output file is written temp-then-rename (:mod:`deeplab_tf.beam.filesystems`), under a
  name that depends on the input only: an output is either absent or complete, and an
  element run twice (a runner's retry, or ours) replaces its files with identical bytes. So
  outputs are complete and never duplicated, whichever attempt wrote them.
* Evaluation has no per-image files: a failed attempt is re-run whole (the confusion matrices
  of a lost attempt are never merged).
"""

from __future__ import annotations

import os
import pickle
import signal
import subprocess
import sys
import tempfile
import time

from deeplab_tf.beam._require import NAMESPACE, import_beam

DEAD_LETTER_FILE = "dead_letter.json"


# === Building and running one attempt ===
def _options(pipeline_args, runner):
    from apache_beam.options.pipeline_options import PipelineOptions

    args = list(pipeline_args or [])
    if runner and not any(a.startswith("--runner") for a in args):
        args = [f"--runner={runner}", *args]
    return PipelineOptions(args)


def _metrics(result) -> dict:
    """``{name: value}`` of this package's counters, and ``{name}_sum`` / ``_count`` /
    ``_mean`` of its distributions (committed values where the runner has them)."""
    from apache_beam.metrics.metric import MetricsFilter

    try:
        found = result.metrics().query(MetricsFilter().with_namespace(NAMESPACE))
    except Exception:  # noqa: BLE001 - a runner without metrics support
        return {}
    out: dict = {}

    def value(r):
        try:
            return r.committed if r.committed is not None else r.attempted
        except Exception:  # noqa: BLE001 - "committed metrics are not supported"
            return r.attempted

    for r in found.get("counters", []):
        name = r.key.metric.name
        out[name] = out.get(name, 0) + int(value(r) or 0)
    for r in found.get("distributions", []):
        v, name = value(r), r.key.metric.name
        if v is None:
            continue
        out[f"{name}_sum"] = out.get(f"{name}_sum", 0) + int(v.sum)
        out[f"{name}_count"] = out.get(f"{name}_count", 0) + int(v.count)
    for key in [k for k in out if k.endswith("_count")]:
        stem = key[: -len("_count")]
        if out[key]:
            out[f"{stem}_mean"] = round(out[f"{stem}_sum"] / out[key], 1)
    return out


def _dead_letters(beam, collections, path):
    from deeplab_tf.beam.filesystems import write_json

    return (
        collections
        | "AllDeadLetters" >> beam.Flatten()
        | "CollectDeadLetters" >> beam.combiners.ToList()
        | "WriteDeadLetters"
        >> beam.Map(lambda items: write_json(path, sorted(items, key=lambda d: d["input"])))
    )


def run_job(spec: dict) -> dict:
    """Builds and runs one pipeline attempt in this process; returns its metrics."""
    beam = import_beam()
    from apache_beam.ml.inference.base import RunInference

    from deeplab_tf.beam.filesystems import write_json
    from deeplab_tf.beam.handler import DeepLabModelHandler
    from deeplab_tf.beam.transforms import (
        DEAD_LETTER,
        ConfusionMatrixCombineFn,
        DecodeExample,
        DecodeImage,
        ToConfusion,
        WriteOutputs,
    )

    handler = DeepLabModelHandler(spec["settings"], spec.get("batch_size", 1))
    start = time.perf_counter()
    pipeline = beam.Pipeline(options=_options(spec.get("pipeline_args"), spec.get("runner")))
    items = pipeline | "Inputs" >> beam.Create(spec["items"], reshuffle=False)
    items = items | "Distribute" >> beam.Reshuffle()
    if spec["kind"] == "predict":
        decoded = items | "Decode" >> beam.ParDo(
            DecodeImage(spec["max_pixels"], spec["settings"].get("channels", 3))
        ).with_outputs(DEAD_LETTER, main="ok")
        results = decoded.ok | "RunInference" >> RunInference(handler)
        written = results | "Write" >> beam.ParDo(
            WriteOutputs(spec["palette"], spec["alpha"], spec["legend"], spec["probs"])
        ).with_outputs(DEAD_LETTER, main="ok")
    else:
        decoded = items | "Decode" >> beam.ParDo(
            DecodeExample(spec["label_map"], spec.get("rgb_palette"))
        ).with_outputs(DEAD_LETTER, main="ok")
        results = decoded.ok | "RunInference" >> RunInference(handler)
        written = results | "Confusion" >> beam.ParDo(
            ToConfusion(spec["num_classes"], spec["ignore_label"])
        ).with_outputs(DEAD_LETTER, main="ok")
        result_path = spec["result_path"]
        _ = (
            written.ok
            | "Combine" >> beam.CombineGlobally(ConfusionMatrixCombineFn(spec["num_classes"]))
            | "WriteResult" >> beam.Map(lambda r: write_json(result_path, r))
        )
    _dead_letters(beam, (decoded[DEAD_LETTER], written[DEAD_LETTER]), spec["dead_letter_path"])
    result = pipeline.run()
    result.wait_until_finish()
    return {"metrics": _metrics(result), "seconds": round(time.perf_counter() - start, 3)}


# === Supervising DirectRunner multi_processing jobs ===
def _direct_multiprocessing(spec) -> bool:
    runner = spec.get("runner") or "DirectRunner"
    args = list(spec.get("pipeline_args") or [])
    for a in args:
        if a.startswith("--runner="):
            runner = a.split("=", 1)[1]
    joined = " ".join(args).replace("=", " ")
    return runner in ("DirectRunner", "direct") and "multi_processing" in joined


def _children() -> dict[int, list[int]]:
    kids: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                with open(f"/proc/{entry}/stat") as f:
                    ppid = int(f.read().rsplit(")", 1)[1].split()[1])
            except (OSError, ValueError, IndexError):
                continue
            kids.setdefault(ppid, []).append(int(entry))
    return kids


def worker_pids(pid: int) -> list[int]:
    """The Beam SDK worker processes below process ``pid`` (DirectRunner multi_processing)."""
    kids, found, todo = _children(), [], [pid]
    while todo:
        for child in kids.get(todo.pop(), []):
            todo.append(child)
            try:
                with open(f"/proc/{child}/cmdline", "rb") as f:
                    cmd = f.read().split(b"\0")
            except OSError:
                continue
            if b"sdk_worker_main" in b" ".join(cmd) and not cmd[0].endswith(b"sh"):
                found.append(child)
    return found


def _alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


class WorkerLost(RuntimeError):
    """A DirectRunner worker process died while the job ran."""


def _run_child(spec, grace: float = 20.0) -> dict:
    """Runs one attempt in a child process; raises :class:`WorkerLost` if a worker dies."""
    folder = tempfile.mkdtemp(prefix="deeplab_tf_beam_job_")
    spec_path, result_path = os.path.join(folder, "spec.pkl"), os.path.join(folder, "result.pkl")
    with open(spec_path, "wb") as f:
        pickle.dump(spec, f)
    log_path = os.path.join(folder, "job.log")
    log = open(log_path, "wb")
    cmd = [sys.executable, "-m", "deeplab_tf.beam.job", spec_path, result_path]
    job = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    seen: set[int] = set()
    lost_at = None
    try:
        while job.poll() is None:
            time.sleep(0.5)
            seen.update(worker_pids(job.pid))
            dead = [p for p in seen if not _alive(p)]
            if dead and lost_at is None:
                lost_at = time.monotonic()
            if lost_at is not None and time.monotonic() - lost_at > grace:
                for p in seen:  # our own job's workers, by process id
                    try:
                        os.kill(p, signal.SIGKILL)
                    except OSError:
                        pass
                os.killpg(job.pid, signal.SIGKILL)
                job.wait()
                raise WorkerLost(f"Beam worker process(es) {sorted(dead)} died")
    finally:
        log.close()
        for p in seen:  # workers the job left behind (it failed or was stopped)
            if _alive(p):
                try:
                    os.kill(p, signal.SIGKILL)
                except OSError:
                    pass
    if job.returncode != 0 or not os.path.exists(result_path):
        with open(log_path, "rb") as f:
            tail = f.read()[-4000:].decode("utf-8", "replace")
        # Depending on what was in flight, the runner either waits forever (above) or fails
        # the job with "Channel closed prematurely" when a worker dies.
        if lost_at is not None or "Channel closed prematurely" in tail:
            dead = sorted(p for p in seen if not _alive(p))
            raise WorkerLost(f"Beam worker process(es) {dead} died; the job failed")
        raise RuntimeError(f"the Beam job failed (exit status {job.returncode}):\n{tail}")
    with open(result_path, "rb") as f:
        return pickle.load(f)


def run_with_retries(spec, retries: int = 2, pending=None, log=None) -> dict:
    """Runs ``spec`` (supervised and retried for DirectRunner multi_processing, else once
    in-process: the other runners retry failed work themselves)."""
    if not _direct_multiprocessing(spec):
        out = run_job(spec)
        out["attempts"] = 1
        return out
    lost = []
    for attempt in range(retries + 1):
        todo = dict(spec)
        if attempt and pending is not None:
            todo["items"] = pending(spec["items"])
        try:
            out = _run_child(todo)
        except WorkerLost as err:
            lost.append(str(err))
            if log:
                log(f"attempt {attempt + 1}: {err}; retrying")
            continue
        out["attempts"], out["lost_workers"] = attempt + 1, lost
        out["resumed"] = len(spec["items"]) - len(todo["items"])
        return out
    raise RuntimeError(f"the Beam job lost a worker in each of {retries + 1} attempts: {lost}")


# === Public entry points ===
def _build_settings(model, weights, preset, num_classes, scales, fusion, flip, upsample,
                    fuse_at, tile_size, overlap, crf):  # fmt: skip
    """Settings for :func:`~deeplab_tf.beam.handler.predictor_from_settings`, checked by
    building the predictor once here (before any work)."""
    from deeplab_tf.beam.handler import predictor_from_settings

    settings = {
        "model": None if model is None else os.fspath(model), "weights": weights,
        "preset": preset, "num_classes": num_classes, "scales": [float(s) for s in scales],
        "fusion": fusion, "flip": bool(flip), "upsample": upsample, "fuse_at": fuse_at,
        "tile_size": tile_size or None, "overlap": float(overlap), "crf": None,
    }  # fmt: skip
    if (model is None) == (preset is None):
        raise ValueError(f"Give model or preset. Received: model={model!r}, preset={preset!r}")
    predictor = predictor_from_settings(settings)
    settings["num_classes"] = int(predictor.model.num_classes)
    settings["channels"] = int(predictor.channels)
    if crf:
        from deeplab_tf.crf import DenseCRF
        from deeplab_tf.models.deeplab import find_deeplab

        if isinstance(crf, dict):
            config = dict(crf)
        else:
            name = crf if isinstance(crf, str) else None
            if name is None:
                deeplab = find_deeplab(getattr(predictor.model, "model", None))
                if deeplab is None:
                    raise ValueError("The model does not say its backbone: pass crf='vgg16'|...")
                name = deeplab.backbone
            config = {
                "preset": name,
                **DenseCRF.from_preset(name, overflow="downsample").get_config(),
            }
        if predictor.channels != 3 and not config.get("bi_feature_std"):
            raise ValueError(
                f"The model takes {predictor.channels}-channel images: the CRF needs one "
                "bilateral standard deviation per channel. Pass crf={'preset': ..., "
                "'bi_feature_std': [...]} (deeplab-tf predict: --crf-feature-std)."
            )
        settings["crf"] = config
    return settings


def predict_pipeline(
    inputs=None,
    out=None,
    model=None,
    *,
    dataset=None,
    split="val",
    root=None,
    dataset_args=None,
    limit=None,
    weights=None,
    preset=None,
    num_classes=None,
    scales=(1.0,),
    fusion="max",
    flip=False,
    upsample="caffe",
    fuse_at="logits",
    tile_size=1025,
    overlap=1 / 3,
    crf=False,
    probs=False,
    palette=None,
    alpha=0.55,
    legend=False,
    max_pixels=None,
    overwrite=False,
    batch_size=1,
    runner="DirectRunner",
    pipeline_args=(),
    retries=2,
    settings=None,
    log=None,
) -> dict:
    """``deeplab-tf predict`` as a Beam pipeline: the same files, written by Beam workers.

    Args:
        inputs: image files, folders and globs (local), or ``gs://``-style globs and files.
        out: output folder (local or on a Beam file system).
        dataset, split, root, dataset_args, limit: instead of ``inputs``, the images of a
            file dataset's split (``deeplab_tf.data.list_dataset``, as ``evaluate_pipeline``;
            labels not needed), the first ``limit`` only; each output is named after its
            example id (:func:`deeplab_tf.inference.io.dataset_inputs`).
        model, weights, preset, num_classes, scales, fusion, flip, upsample, fuse_at,
            tile_size, overlap: as for ``deeplab-tf predict``.
        crf: False, True (the model backbone's preset), a preset name, or a DenseCRF config.
        probs, palette, alpha, legend, max_pixels, overwrite: as for ``deeplab-tf predict``.
        batch_size: images of one size per model call (1: bit-identical to ``predict``).
        runner: a Beam runner name; ``pipeline_args``: further Beam pipeline options.
        retries: attempts after a lost DirectRunner worker (see the module docstring).
        settings: predictor settings made already (the CLI's), instead of the model options.
        log: optional ``print``-like callable for progress notes.

    Returns:
        ``{"images", "done", "failed" (dead letters: {"input", "error"}), "metrics",
        "attempts", "dead_letter_path", "seconds"}``.

    Raises:
        ValueError: bad options, no inputs, or outputs that collide or exist (without
            ``overwrite``), before any work.
    """
    import_beam()
    from deeplab_tf.beam.filesystems import exists, is_remote, join, match, read_json
    from deeplab_tf.data.palettes import label_set
    from deeplab_tf.inference.io import DEFAULT_MAX_PIXELS, dataset_inputs, expand_inputs
    from deeplab_tf.inference.outputs import OUTPUT_SUFFIXES, PROBS_SUFFIX, plan_outputs

    if (inputs is None) == (dataset is None) or out is None:
        raise ValueError(
            "give inputs (images, folders, globs) or dataset=..., and out. Received: "
            f"inputs={inputs!r}, dataset={dataset!r}, out={out!r}"
        )
    names = None
    if dataset is not None:
        paths, names = dataset_inputs(dataset, split, root, dataset_args, limit)
    else:
        inputs = [inputs] if isinstance(inputs, str | os.PathLike) else list(inputs)
        local = [os.fspath(p) for p in inputs if not is_remote(p)]
        paths, errors = expand_inputs(local)
        for p in inputs:
            if is_remote(p):
                found = match(p)
                paths += found
                if not found:
                    errors.append(f"{p}: pattern matched no files")
        if errors:
            raise ValueError("; ".join(errors))
        if not paths:
            raise ValueError(f"no input images found. Received: inputs={inputs!r}")
    if settings is None:
        settings = _build_settings(model, weights, preset, num_classes, scales, fusion, flip,
                                   upsample, fuse_at, tile_size, overlap, crf)  # fmt: skip
    remote_out = is_remote(out)
    protected = [
        p for p in (settings.get("model"), settings.get("weights")) if p and os.path.isfile(p)
    ]
    plan = plan_outputs(paths, out, probs, protected, overwrite, not remote_out, names)
    suffixes = OUTPUT_SUFFIXES + ((PROBS_SUFFIX,) if probs else ())
    dead_letter_path = join(out, DEAD_LETTER_FILE)
    if not overwrite:
        taken = [b + s for _, b in plan for s in suffixes if remote_out and exists(b + s)]
        if exists(dead_letter_path):
            taken.append(dead_letter_path)
        if taken:
            raise ValueError(
                f"outputs exist already ({taken[0]}, {len(taken)} in all); pass overwrite=True"
            )
    if not remote_out:
        os.makedirs(out, exist_ok=True)
    nc = int(settings["num_classes"])
    palette_name = palette or settings.get("classes") or ("cityscapes" if nc == 19 else "voc")
    label_set(palette_name)  # an unknown name fails here
    spec = {
        "kind": "predict", "items": [list(i) for i in plan], "settings": settings,
        "batch_size": int(batch_size), "palette": palette_name, "alpha": float(alpha),
        "legend": bool(legend), "probs": bool(probs),
        "max_pixels": int(max_pixels or DEFAULT_MAX_PIXELS), "runner": runner,
        "pipeline_args": list(pipeline_args), "dead_letter_path": dead_letter_path,
    }  # fmt: skip

    def pending(items):
        return [i for i in items if not all(exists(i[1] + s) for s in suffixes)]

    out_ = run_with_retries(spec, retries, pending, log)
    if not remote_out:
        from deeplab_tf.atomic import remove_stale_temps

        remove_stale_temps(out)  # a killed worker's unfinished temporaries
    failed = read_json(dead_letter_path)
    done = sum(1 for i in plan if all(exists(i[1] + s) for s in suffixes))
    return {
        "images": len(plan), "done": done, "failed": failed, "dead_letter_path": dead_letter_path,
        "settings": settings, **out_,
    }  # fmt: skip


def evaluate_pipeline(
    dataset,
    split="val",
    root=None,
    model=None,
    *,
    dataset_args=None,
    limit=None,
    weights=None,
    preset=None,
    scales=(1.0,),
    fusion="max",
    flip=False,
    upsample="caffe",
    fuse_at="logits",
    tile_size=1025,
    overlap=1 / 3,
    crf=False,
    batch_size=1,
    runner="DirectRunner",
    pipeline_args=(),
    retries=2,
    work_dir=None,
    settings=None,
    log=None,
) -> dict:
    """``deeplab-tf evaluate`` as a Beam pipeline: per-image confusion matrices summed by
    :class:`~deeplab_tf.beam.transforms.ConfusionMatrixCombineFn`.

    Args:
        dataset, split, root, dataset_args: a file dataset (``deeplab_tf.data.list_dataset``).
        limit: the first N examples only.
        work_dir: where the job leaves its result and dead letters (a folder every worker
            can write: local for the DirectRunner, ``gs://...`` for Dataflow); default: a new
            local temporary folder.
        The other arguments: as :func:`predict_pipeline`.

    Returns:
        The scores of ``evaluate`` (:func:`~deeplab_tf.evaluation.metrics.scores_from_confusion`
        plus ``num_images``, ``seconds``, ``confusion_matrix``), with ``failed`` (dead
        letters), ``metrics``, ``attempts`` and ``info`` (the DatasetInfo).
    """
    import_beam()
    from deeplab_tf.beam.filesystems import join, read_json
    from deeplab_tf.data.catalog import list_split_examples
    from deeplab_tf.evaluation.metrics import scores_from_confusion

    listing, examples = list_split_examples(dataset, split, root, limit, **(dataset_args or {}))
    info = listing.info
    if settings is None:
        settings = _build_settings(model, weights, preset, info.num_classes, scales, fusion,
                                   flip, upsample, fuse_at, tile_size, overlap, crf)  # fmt: skip
    work_dir = work_dir or tempfile.mkdtemp(prefix="deeplab_tf_beam_eval_")
    spec = {
        "kind": "evaluate",
        "items": [[e.id, e.image_path, e.label_path, e.label_format] for e in examples],
        "settings": settings, "batch_size": int(batch_size), "label_map": listing.label_map,
        "rgb_palette": listing.rgb_palette, "num_classes": int(info.num_classes),
        "ignore_label": listing.label_map.ignore_label, "runner": runner,
        "pipeline_args": list(pipeline_args), "result_path": join(work_dir, "confusion.json"),
        "dead_letter_path": join(work_dir, DEAD_LETTER_FILE),
    }  # fmt: skip
    out = run_with_retries(spec, retries, None, log)
    combined = read_json(spec["result_path"])
    scores = scores_from_confusion(combined["confusion_matrix"])
    scores["num_images"] = combined["num_images"]
    scores["seconds"] = out["seconds"]
    scores["confusion_matrix"] = combined["confusion_matrix"]
    failed = read_json(spec["dead_letter_path"])
    return {"scores": scores, "failed": failed, "info": info, "settings": settings, **out}
