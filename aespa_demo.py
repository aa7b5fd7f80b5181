"""Interactive gradio demo: click on a scan and watch the prediction move toward the rater you agree with.

    python aespa_demo.py                    # the newest checkpoint_best.pth under logs_new/ (python train.py)
    python aespa_demo.py -weights logs_new/<run>/Model/checkpoint_best.pth -port 7861
    python aespa_demo.py -sam_ckpt ./checkpoint/medsam_vit_b.pth -weights ./checkpoint/checkpoint_aespa_lidc.pth

Serves on 127.0.0.1 (loopback) unless -host says otherwise; a public link only with -share. Architecture
flags come from the checkpoint, as in val.py; the original's published checkpoint runs under -compat reference.
"""

from __future__ import annotations

import sys

from cfg import Setup, build_parser, given_flags, make_config, run_command
from demo.predictor import Predictor
from demo.sample import load_series
from engine.build import build_model_from_config, default_run_checkpoint
from engine.distributed import choose_device
from utils import InputError, OneLineParser

NO_CHECKPOINT = (
    "no checkpoint to show: pass -weights CKPT, or train one first with `python train.py` "
    "(a few minutes on a CPU; the demo then finds logs_new/<run>/Model/checkpoint_best.pth), "
    "or show pretrained weights untrained with -sam_ckpt lite_medsam"
)


def demo_flags(parser: OneLineParser) -> list[str]:
    """The demo's server flags (on top of the project's)."""
    demo = parser.add_argument_group("demo")
    demo.add_argument(
        "-host", default="127.0.0.1", help="address to serve on (default loopback only; 0.0.0.0 for every interface)"
    )
    demo.add_argument("-port", type=int, default=7860, help="port to serve on (default 7860)")
    demo.add_argument("-share", action="store_true", help="also open a public gradio.live link (off by default)")
    return ["host", "port", "share"]


def demo_parser() -> OneLineParser:
    parser = build_parser("aespa_demo.py")
    demo_flags(parser)
    return parser


def demo_setup(argv: list[str] | None) -> Setup:
    """The demo's configuration: -weights, or -sam_ckpt alone (pretrained weights, untrained), or else the newest
    default run's checkpoint under -log_dir (found before any weights are read)."""
    argv = list(argv) if argv is not None else sys.argv[1:]
    if not {"weights", "sam_ckpt"} & given_flags(argv, demo_parser):
        bare = make_config([*argv, "-sam_ckpt", "none"], "demo", prog="aespa_demo.py", extra_flags=demo_flags)
        found = default_run_checkpoint(bare.config.log_dir)
        if found is None:
            raise InputError(NO_CHECKPOINT)
        argv = [*argv, "-weights", str(found)]
    setup = make_config(argv, "demo", prog="aespa_demo.py", extra_flags=demo_flags)
    if not 1 <= setup.extra.port <= 65535:
        raise InputError(f"-port: must be in 1..65535, got {setup.extra.port}")
    m = setup.config.model
    if not m.weights:
        setup.notes.append(f"{m.sam_ckpt}: pretrained weights, untrained (draw a box: the prompt it was trained with)")
    return setup


def load_predictor(setup: Setup) -> tuple[Predictor, list[str]]:
    """The model of the demo's configuration on the chosen device -> (Predictor, notes to print)."""
    model, reports = build_model_from_config(setup.config, setup.files)
    predictor = Predictor(model, choose_device(setup.config.device), memory_window=setup.config.loop.memory_window)
    return predictor, setup.notes + [r.summary() for r in reports]


def main(argv: list[str] | None = None) -> None:
    setup = demo_setup(argv)
    cfg, args = setup.config, setup.extra
    predictor, notes = load_predictor(setup)
    from demo.app import build_app  # gradio is slow to import: after the checkpoint is known to be good

    app = build_app(predictor, load_series())
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
            show_error=True,  # a refused value's one-line message reaches the page and API clients
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
    run_command(main)
