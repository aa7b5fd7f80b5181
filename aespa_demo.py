"""Interactive gradio demo: click on a scan and watch the prediction move toward the rater you agree with.

    python aespa_demo.py                    # the newest checkpoint_best.pth under logs_new/ (python train.py)
    python aespa_demo.py -weights logs_new/<run>/Model/checkpoint_best.pth -port 7861
    python aespa_demo.py -sam_ckpt ./checkpoint/medsam_vit_b.pth -weights ./checkpoint/checkpoint_aespa_lidc.pth

Serves on 127.0.0.1 (loopback) unless -host says otherwise; a public link only with -share. Architecture
flags come from the checkpoint, as in val.py; the original's published checkpoint runs under -compat reference.
"""

from __future__ import annotations

import argparse

from cfg import OneLineParser, build_parser, checked_config, given_flags
from demo.predictor import Predictor
from demo.sample import load_sample
from engine.build import adopt_checkpoint_settings, build_model_from_config, default_run_checkpoint
from engine.config import RunConfig
from models import read_checkpoint
from utils import InputError, choose_device, run_cli

NO_CHECKPOINT = (
    "no checkpoint to show: pass -weights CKPT, or train one first with `python train.py` "
    "(a few minutes on a CPU; the demo then finds logs_new/<run>/Model/checkpoint_best.pth), "
    "or show pretrained weights untrained with -sam_ckpt lite_medsam"
)


def build_demo_parser(prog: str | None = None) -> OneLineParser:
    """The project's parser plus the demo's server flags."""
    parser = build_parser(prog)
    demo = parser.add_argument_group("demo")
    demo.add_argument(
        "-host", default="127.0.0.1", help="address to serve on (default loopback only; 0.0.0.0 for every interface)"
    )
    demo.add_argument("-port", type=int, default=7860, help="port to serve on (default 7860)")
    demo.add_argument("-share", action="store_true", help="also open a public gradio.live link (off by default)")
    return parser


def parse_demo_args(argv: list[str] | None) -> tuple[argparse.Namespace, RunConfig]:
    """-> (the server flags, the run configuration)."""
    parser = build_demo_parser("aespa_demo.py")
    args = parser.parse_args(argv)
    cfg = checked_config(args, parser)
    if not 1 <= args.port <= 65535:
        parser.error(f"argument -port: must be in 1..65535, got {args.port}")
    return args, cfg


def load_predictor(cfg: RunConfig, explicit: set[str]) -> tuple[Predictor, RunConfig, list[str]]:
    """-weights (or -sam_ckpt alone: pretrained weights, untrained; or the newest default run's checkpoint) ->
    (Predictor on the chosen device, the resolved configuration, notes to print)."""
    if not cfg.model.weights and not cfg.model.sam_ckpt:
        found = default_run_checkpoint(cfg.log_dir)
        if found is None:
            raise InputError(NO_CHECKPOINT)
        cfg = cfg.with_flags(weights=str(found))
    preloaded, notes = {}, []
    if cfg.model.weights:
        preloaded = {cfg.model.weights: read_checkpoint(cfg.model.weights)}
        cfg, notes = adopt_checkpoint_settings(cfg, preloaded[cfg.model.weights], explicit)
    else:
        notes = [f"{cfg.model.sam_ckpt}: pretrained weights, untrained (draw a box: the prompt it was trained with)"]
    model, reports, cfg = build_model_from_config(cfg, preloaded=preloaded)
    predictor = Predictor(model, choose_device(cfg.device))
    return predictor, cfg, notes + [r.summary() for r in reports]


def main(argv: list[str] | None = None) -> None:
    args, cfg = parse_demo_args(argv)
    predictor, cfg, notes = load_predictor(cfg, given_flags(argv))
    from demo.app import build_app  # gradio is slow to import: after the checkpoint is known to be good

    app = build_app(predictor, load_sample())
    for line in notes:
        print(line)
    try:
        _, local_url, share_url = app.launch(
            server_name=args.host,
            server_port=args.port,
            share=args.share,
            ssr_mode=False,
            inbrowser=False,
            prevent_thread_lock=True,
            quiet=True,
        )
    except OSError:  # gradio found the port taken (or the address cannot be bound)
        raise InputError(
            f"-port {args.port}: cannot serve on {args.host}:{args.port} (in use? choose another -port)"
        ) from None
    compat = ", -compat reference" if cfg.model.compat == "reference" else ""
    print(
        f"AESPA demo: {cfg.model.weights} ({cfg.model.encoder} at {cfg.model.image_size} px{compat}) "
        f"on {predictor.device}"
    )
    print(f"open {local_url}" + (f" or the public link {share_url}" if share_url else ""), flush=True)
    app.block_thread()  # until Ctrl-C


if __name__ == "__main__":
    run_cli(main)
