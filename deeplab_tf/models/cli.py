"""``deeplab-tf models``: list the registered variants."""

from __future__ import annotations

import json


def register(sub):
    p = sub.add_parser("models", help="list the registered DeepLab v2 variants")
    p.add_argument("--json", action="store_true", help="print the full registry as JSON")
    p.set_defaults(func=run)


def run(args):
    from deeplab_tf.models.registry import get_model_config, list_models

    if args.json:
        print(json.dumps({n: get_model_config(n) for n in list_models()}, indent=2))
        return 0
    print(f"{'name':32s} {'params (C=21)':>14s} {'VOC val mIoU (CRF)':>20s}  description")
    for name in list_models():
        cfg = get_model_config(name)
        params = f"{cfg['params_voc']:,}" if cfg["params_voc"] else "-"
        miou = cfg["paper_voc12_val_miou"]
        miou = f"{miou['no_crf']:.2f} ({miou['crf']:.2f})" if miou else "-"
        print(f"{name:32s} {params:>14s} {miou:>20s}  {cfg['description']}")
    return 0
