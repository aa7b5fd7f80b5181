"""The command line, and the one place a run's configuration is made (`make_config`).

Flag names are the original project's (single dash); new flags follow the same style. The flags are the fields
of the configuration's dataclasses (engine/config.py, interaction/mode.py), of every mode's options
(interaction/registry.py) and of every dataset's options (dataset.DATASETS), each declared once
(conf/options.py). Nothing is parsed at import.

`make_config(argv, purpose)` turns the parsed flags, a checkpoint's stored flags (`-weights` evaluated,
`-resume`d) and the architecture of the weights named into the run's `RunConfig`, reading each checkpoint file
once; everything else receives that config. Every rule about flags lives here: their values, which flags a
mode or a dataset uses, which flags a checkpoint sets, which a resume may change.
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from analysis.run_files import read_summary
from conf import global_settings as settings
from conf.options import add_flag, add_flags, declared, flag_names, flag_of, problems
from dataset import DATASETS
from engine.build import read_weights, weights_to_load
from engine.checkpoints import load_training_checkpoint
from engine.config import PARTS, DataConfig, RunConfig, config_from_flags, default_image_size
from engine.run_folder import LAST_CHECKPOINT
from interaction.registry import MODES
from models import CHECKPOINT_FORMAT, CheckpointError, encoder_of_shape, encoder_of_state
from models.lite_medsam import LITE_MEDSAM
from models.reference_format import is_reference_checkpoint, reference_model_config
from utils import InputError, OneLineParser, run_cli, unusable_folder

# Flags that define the architecture (and the protocol a model was trained for): a checkpoint sets them.
ARCHITECTURE_FLAGS = (
    "encoder",
    "image_size",
    "n_components",
    "fcomb",
    "pixel_branch",
    "memory",
    "multimask_output",
    "compat",
    "mode",
)
# Flags a resumed run may change (every other flag is the run's own): how long, how often, how it runs.
RESUME_MAY_CHANGE = ("epochs", "val_freq", "test_every_val", "w", "device")
# Flags that only a model with a session memory reads.
MEMORY_FLAGS = ("memory_context", "memory_switch", "session_memory", "memory_window")
# Flags of the original project that map onto others or are refused.
LEGACY_FLAGS = ("gpu", "gpu_device", "distributed")
PURPOSES = ("train", "evaluate", "demo", "bench")
INPUT_ERRORS = (InputError, CheckpointError)  # reported in one line by every command


def str2bool(text: str) -> bool:
    if text.lower() in ("1", "true", "yes", "on"):
        return True
    if text.lower() in ("0", "false", "no", "off"):
        return False
    raise argparse.ArgumentTypeError(f"expected a boolean, got '{text}'")


# --- which flags belong to whom ---------------------------------------------------------------------------


def owners(registry: Mapping[str, Any]) -> dict[str, list[str]]:
    """{flag: names of the registry entries (modes or datasets) whose options declare it}, in declaration order."""
    out: dict[str, list[str]] = {}
    for name, entry in registry.items():
        for flag in flag_names(entry.options):
            out.setdefault(flag, []).append(name)
    return out


def mode_default_notes() -> dict[str, str]:
    """{flag: 'under -mode X: value, ...'} for shared flags whose default a mode changes."""
    notes: dict[str, list[str]] = {}
    for name, mode in MODES.items():
        for flag, value in mode.defaults.items():
            notes.setdefault(flag, []).append(f"-mode {name}: {value}")
    return {flag: "default under " + ", ".join(parts) for flag, parts in notes.items()}


def build_parser(prog: str | None = None) -> OneLineParser:
    """Every flag of train.py / val.py / bench.py / the demo, grouped, with help and defaults."""
    p = OneLineParser(
        prog=prog, description="AESPA / SPA: preference-aware interactive segmentation with several raters."
    )
    notes = mode_default_notes()
    run = p.add_argument_group("run")
    run.add_argument(
        "-mode",
        choices=list(MODES),
        default=RunConfig.mode,
        help="interaction mode: " + "; ".join(f"{k}: {m.summary}" for k, m in MODES.items()),
    )
    add_flags(run, RunConfig, notes)
    add_flags(p.add_argument_group("model"), PARTS[1], notes)
    data = p.add_argument_group("data")
    data.add_argument(
        "-dataset",
        choices=list(DATASETS),
        default=DataConfig.dataset,
        help="dataset (synthetic is generated on first use); default folders: "
        + ", ".join(f"{k}: {v.default_path}" for k, v in DATASETS.items()),
    )
    add_flags(data, DataConfig, notes)
    _add_owned_flags(p.add_argument_group("dataset options (refused with a dataset that does not use them)"), DATASETS)
    add_flags(p.add_argument_group("interaction (every mode)"), PARTS[3], notes)
    _add_owned_flags(p.add_argument_group("mode options (refused under a mode that does not use them)"), MODES)
    system = p.add_argument_group("the original project's flags")
    system.add_argument("-gpu", type=str2bool, default=True, help="False forces the CPU")
    system.add_argument("-gpu_device", type=int, default=None, help="CUDA device index (same as -device cuda:N)")
    system.add_argument(
        "-distributed",
        default="none",
        help="refused: multi-GPU runs use torchrun instead (torchrun --nproc_per_node N train.py ...)",
    )
    return p


def _add_owned_flags(group: argparse._ArgumentGroup, registry: Mapping[str, Any]) -> None:
    """The flags of every registry entry's options, each once, its help naming the entries that use it."""
    users, seen = owners(registry), set()
    for entry in registry.values():
        for f, _ in declared(entry.options):
            if flag_of(f) not in seen:
                seen.add(flag_of(f))
                add_flag(group, f, "for " + ", ".join(users[flag_of(f)]))


def given_flags(
    argv: Sequence[str] | None = None, build: Callable[[], argparse.ArgumentParser] = build_parser
) -> set[str]:
    """Names of the flags written on the command line (not left at their defaults); `build` makes the parser."""
    parser = build()
    for action in parser._actions:
        action.default = argparse.SUPPRESS
    return set(vars(parser.parse_known_args(argv)[0]))


# --- making the config -------------------------------------------------------------------------------------


@dataclass
class Setup:
    """What `make_config` made: the run's configuration, the checkpoint files it read (name -> loaded object,
    each read once), the checkpoint a resume continues from and the flags it changes, the epochs of an evaluated
    model, notes for the log, and the entry point's own flags (the demo's -port, bench's -repeats)."""

    config: RunConfig | None = None
    files: dict[str, Any] = field(default_factory=dict)
    resume: dict | None = None
    changed: dict[str, tuple[Any, Any]] = field(default_factory=dict)
    epoch: int = 0
    notes: list[str] = field(default_factory=list)
    extra: argparse.Namespace = field(default_factory=argparse.Namespace)
    explicit: set[str] = field(default_factory=set)  # the flags written on the command line


def make_config(
    argv: Sequence[str] | None,
    purpose: str = "train",
    prog: str | None = None,
    extra_flags: Callable[[OneLineParser], list[str]] | None = None,
) -> Setup:
    """The run configuration of a command line, made once.

    purpose  train     (train.py: -resume continues a run as it was; -weights starts from trained weights)
             evaluate  (val.py: -weights' architecture, mode and data unless named)
             demo      (aespa_demo.py: -weights' architecture)
             bench     (bench.py)
    extra_flags(parser) adds an entry point's own flags and returns their names (kept in `Setup.extra`).
    A bad flag exits with one line (argparse); a bad file raises InputError / CheckpointError (one line).
    """
    if purpose not in PURPOSES:
        raise ValueError(f"purpose must be one of {PURPOSES}, got {purpose!r}")

    def parser_of() -> OneLineParser:
        parser = build_parser(prog or (sys.argv[0] if argv is None else None))
        own.extend(extra_flags(parser) if extra_flags else [])
        return parser

    own: list[str] = []
    parser = parser_of()
    args = parser.parse_args(argv)
    explicit = given_flags(argv, parser_of) - set(own)
    setup = Setup(extra=argparse.Namespace(**{k: getattr(args, k) for k in own}), explicit=explicit)
    flags = {k: v for k, v in vars(args).items() if k not in own}
    problem = value_problem(flags, writes_runs=purpose in ("train", "evaluate")) or weights_problem(flags, explicit)
    if problem:
        parser.error(problem)
    flags = device_of_legacy_flags(flags)
    flags = without_default_checkpoint(flags, explicit)
    if flags["resume"] and purpose == "train":
        flags = resumed_flags(flags, explicit, setup)  # the run's own flags, its mode defaults included
    else:
        if flags["weights"] and purpose in ("evaluate", "demo"):
            setup.files[flags["weights"]] = read_weights(flags["weights"])
            flags = adopt_checkpoint(flags, setup.files[flags["weights"]], explicit, purpose, setup)
        flags = with_mode_defaults(flags, explicit)
    problem = usage_problem(flags, explicit)
    if problem:
        parser.error(problem)
    setup.config = resolve_architecture(config_from_flags(flags), setup)
    return setup


def value_problem(flags: Mapping[str, Any], writes_runs: bool = True) -> str | None:
    """The first flag value that breaks a rule (`argument -flag: ...`), or None; -log_dir only for a command that
    writes run folders there (`writes_runs`: train.py, val.py)."""
    for cls in (*PARTS, *(m.options for m in MODES.values()), *(d.options for d in DATASETS.values())):
        problem = problems(cls, flags)
        if problem:
            return problem
    problem = run_name_problem(flags.get("exp_name")) or learning_rate_problem(flags.get("lr"))
    if problem:
        return problem
    if flags["distributed"] not in ("none", "", "0", "False", "false"):
        launch = "launch with torchrun --nproc_per_node N train.py ... instead"
        return f"argument -distributed {flags['distributed']}: {launch}"
    try:
        torch.device("cpu" if flags["device"] == "auto" else flags["device"])
    except (RuntimeError, ValueError):
        return f"argument -device: '{flags['device']}' is not a device (auto, cpu, cuda or cuda:N)"
    unusable = unusable_folder(Path(flags["log_dir"])) if writes_runs else None
    return f"argument -log_dir {flags['log_dir']}: {unusable}" if unusable else None


MAX_RUN_NAME = 200  # bytes: the run folder adds _<timestamp> (20) and maybe _<n>, file systems allow 255
MAX_LR = 1.0  # Adam moves every weight by up to about -lr per step: above 1 a step outweighs the weights themselves


def run_name_problem(name: str | None) -> str | None:
    """-exp_name names one folder inside -log_dir: no path separator (`../x` and `a/b` would leave -log_dir or nest
    runs; `..` alone is harmless, the folder is `.._<timestamp>`), not too long for a file name."""
    if not name:
        return None
    if any(sep and sep in name for sep in ("/", os.sep, os.altsep)):
        return f"argument -exp_name {name}: a run name is one folder name inside -log_dir, without '/'"
    if len(name.encode()) > MAX_RUN_NAME:
        return f"argument -exp_name: at most {MAX_RUN_NAME} bytes (a folder name), got {len(name.encode())}"
    return None


def learning_rate_problem(lr: float | None) -> str | None:
    """-lr above MAX_LR: every Adam step would move each weight by more than its own size (the tiny test
    configuration's loss is already NaN within the first epoch at 1)."""
    if lr is not None and lr > MAX_LR:
        return f"argument -lr: must be at most {MAX_LR:g} (Adam moves each weight by about lr per step), got {lr:g}"
    return None


def device_of_legacy_flags(flags: Mapping[str, Any]) -> dict[str, Any]:
    """The original's -gpu False / -gpu_device N as -device; the legacy flags themselves are dropped."""
    out = {k: v for k, v in flags.items() if k not in LEGACY_FLAGS}
    if flags.get("gpu_device") is not None and flags["device"] == "auto":
        out["device"] = f"cuda:{flags['gpu_device']}"
    if flags.get("gpu") is False:
        out["device"] = "cpu"
    return out


def without_default_checkpoint(flags: Mapping[str, Any], explicit: set[str]) -> dict[str, Any]:
    """`-sam_ckpt none`: no pretrained weights (the small vit_t from scratch). The default -sam_ckpt (conf/) is not
    read when -weights is given without -sam_ckpt (a trained checkpoint brings its own weights), for a baseline (no
    network), nor when another -encoder is named."""
    out = dict(flags)
    if out["sam_ckpt"] in ("none", ""):
        out["sam_ckpt"] = None
    if "sam_ckpt" not in explicit and (
        out["weights"] or not MODES[out["mode"]].learns or out["encoder"] not in ("auto", LITE_MEDSAM)
    ):  # the default is the default model's weights: not for another encoder named (-encoder vit_b: random ViT-B)
        out["sam_ckpt"] = None
    return out


def with_mode_defaults(flags: Mapping[str, Any], explicit: set[str]) -> dict[str, Any]:
    """Shared flags whose default the mode changes (`Mode.defaults`), unless named."""
    mode = MODES[flags["mode"]]
    return {**flags, **{k: v for k, v in mode.defaults.items() if k not in explicit}}


def usage_problem(flags: Mapping[str, Any], explicit: set[str]) -> str | None:
    """A flag named that the run's mode or dataset does not use, or the mode's own cross-flag rule."""
    mode, dataset = flags["mode"], flags["dataset"]
    problem = weights_problem(flags, explicit)
    if problem:
        return problem
    if flags.get("memory", "none") == "none":
        for flag in MEMORY_FLAGS:
            if flag in explicit:
                return f"argument -{flag}: only used by a model with a session memory (-memory style)"
    for registry, chosen, what in ((MODES, mode, "-mode"), (DATASETS, dataset, "-dataset")):
        used = set(flag_names(registry[chosen].options))
        for flag, users in owners(registry).items():
            if flag in explicit and flag not in used:
                return f"argument -{flag}: not used by {what} {chosen} (only by {', '.join(users)})"
    options = config_from_flags(flags).options
    return options.check() if hasattr(options, "check") else None


def weights_problem(flags: Mapping[str, Any], explicit: set[str]) -> str | None:
    """Weights named for a baseline, which has no network (before any file is read)."""
    mode = flags["mode"]
    named = [f for f in ("weights", "sam_ckpt") if f in explicit and flags[f] not in (None, "none", "")]
    if named and not MODES[mode].learns:
        return f"argument -{named[0]}: -mode {mode} is a baseline without a network: it uses no weights"
    return None


def resumed_flags(flags: Mapping[str, Any], explicit: set[str], setup: Setup) -> dict[str, Any]:
    """-resume: every flag of the run as it was (its checkpoint's), except those named again that may change
    (`RESUME_MAY_CHANGE`). A named flag that would change the data, the method or the architecture is refused in
    one line; so is a run with nothing left to do."""
    source = flags["resume"]
    if (Path(source) / "args.json").is_file():  # the run folder itself: its last checkpoint
        source = str(Path(source) / "Model" / LAST_CHECKPOINT)
    run = Path(source).resolve().parent.parent
    if not (run / "args.json").is_file():
        raise InputError(f"-resume {source}: not inside a run folder (expected <run>/Model/checkpoint_last.pth)")
    if Path(source).name != LAST_CHECKPOINT:
        raise InputError(
            f"-resume {source}: a run continues from its last checkpoint, {run / 'Model' / LAST_CHECKPOINT} "
            "(any other would rewind the run and drop the epochs after it)"
        )
    checkpoint = load_training_checkpoint(source)
    old = config_from_flags(checkpoint["args"]).flags()
    named = {"device" if f in LEGACY_FLAGS else f for f in explicit} - {"resume"}
    changed = {f: (old.get(f), flags[f]) for f in sorted(named) if f in flags and flags[f] != old.get(f)}
    refused = [f for f in changed if f not in RESUME_MAY_CHANGE]
    if refused:
        f = refused[0]
        raise InputError(
            f"-resume {source}: -{f} {flags[f]} differs from the run's {old.get(f)}: a resumed run keeps its data, "
            f"method and architecture (only {', '.join('-' + k for k in RESUME_MAY_CHANGE)} may change); "
            "start a new run to change it"
        )
    resumed = {**old, **{f: new for f, (_, new) in changed.items()}, "resume": source, "sam_ckpt": None}
    resumed["weights"] = None  # the checkpoint holds the weights; the file the run started from may be gone
    if resumed["epochs"] <= checkpoint["epoch"]:
        if final_test_done(run, checkpoint):
            raise InputError(
                f"-resume {source}: nothing left to do, the run has trained {checkpoint['epoch']} of "
                f"{resumed['epochs']} epochs and has its final test (pass -epochs N > {checkpoint['epoch']} to train "
                "longer)"
            )
        resumed["epochs"] = checkpoint["epoch"]
        setup.notes.append("every epoch is trained but the final test is missing or stale: running it")
    setup.resume, setup.changed = checkpoint, changed
    return resumed


def final_test_done(run: Path, checkpoint: Mapping[str, Any]) -> bool:
    """Whether a run folder holds the final test of its checkpoint's best epoch after all its epochs (summary.json,
    written last); a checkpoint without a best epoch (stopped before it was validated) has no test to run."""
    if checkpoint.get("best_epoch") is None:
        return True
    summary = read_summary(run)
    trained = summary.get("trained_epochs", checkpoint["epoch"])  # runs of earlier versions: not recorded
    return summary.get("test_epoch") == checkpoint["best_epoch"] and trained == checkpoint["epoch"]


def adopt_checkpoint(
    flags: Mapping[str, Any], obj: Any, explicit: set[str], purpose: str, setup: Setup
) -> dict[str, Any]:
    """-weights evaluated or shown: the checkpoint's architecture (a flag named that disagrees is noted and
    overridden); under `evaluate` also the data the model was trained on unless named, and its epochs. `-mode`
    is the training mode's protocol unless an evaluation names another explicitly, e.g. an SPA-trained model
    under the AESPA protocol (the network is the same in both modes). The original's published checkpoint runs
    under its own conventions (`-compat reference`)."""
    out, notes = dict(flags), setup.notes
    evaluating = purpose == "evaluate"
    budget = None  # the epochs the checkpoint's run was trained for
    if isinstance(obj, Mapping) and obj.get("format") == CHECKPOINT_FORMAT:
        saved = config_from_flags(obj.get("args", {})).flags()
        if evaluating:  # the data the model was trained on, unless named
            data_flags = ["dataset", "data_path", "valid_raters", *flag_names(DATASETS[saved["dataset"]].options)]
            taken = {f: saved[f] for f in data_flags if f not in explicit and flags.get(f) != saved[f]}
            if taken:
                out.update(taken)
                notes.append("from the checkpoint's run: " + ", ".join(f"-{k} {v}" for k, v in taken.items()))
            setup.epoch = int(obj.get("epoch", 0) or 0)
            budget = saved["epochs"]
        for flag in ARCHITECTURE_FLAGS:
            if flags[flag] != saved[flag]:
                if flag == "mode" and evaluating and flag in explicit:
                    notes.append(
                        f"-mode {flags['mode']}: evaluating a model trained with -mode {saved['mode']} "
                        f"under the {flags['mode']} protocol"
                    )
                    continue
                if flag in explicit:
                    notes.append(f"-{flag} {flags[flag]} ignored: the checkpoint was trained with {saved[flag]}")
                out[flag] = saved[flag]
    elif is_reference_checkpoint(obj):
        if "compat" in explicit and flags["compat"] != "reference":
            raise InputError(
                f"-compat {flags['compat']}: {flags['weights']} is the original project's checkpoint, "
                "which runs only under -compat reference (its decoder block and round protocol)"
            )
        if flags["compat"] != "reference":
            notes.append("the original project's checkpoint: running its conventions (-compat reference)")
        out.update(compat="reference", fcomb="reference", n_components=len(obj["EM_weights"]))
    else:
        notes.append("plain SAM weights: the preference heads start untrained")
    if evaluating:
        # val.py trains nothing: args.json records the training budget of the model's run (the configuration; a
        # best checkpoint's epoch differs by seed as any result does, and the rows carry it in their `epoch`)
        out["epochs"] = budget or setup.epoch or out["epochs"]
    return out


def resolve_architecture(cfg: RunConfig, setup: Setup) -> RunConfig:
    """`-encoder auto` -> the size of the checkpoint loaded last (-weights, else -sam_ckpt; vit_t without one),
    `-image_size` -> the encoder's default, and the original project's checkpoint -> its own architecture. Reads
    the checkpoint files the model will load, once (kept in `setup.files`)."""
    m, changes = cfg.model, {}
    if m.weights and m.weights not in setup.files:
        setup.files[m.weights] = read_weights(m.weights)
    if m.weights and is_reference_checkpoint(setup.files[m.weights]):
        c = reference_model_config(setup.files[m.weights], m.image_size, str(m.weights))
        named = encoder_of_shape(c["embed_dim"], c["depth"]) or m.encoder
        changes = dict(encoder=named, image_size=c["img_size"], fcomb="reference", compat="reference")
        if m.memory != "none":
            raise InputError(f"-memory {m.memory}: {m.weights} is an original-project checkpoint, which has no memory")
        return with_default_lr(cfg.with_flags(**changes, n_components=c["n_components"], pixel_branch="none"))
    sources, _ = weights_to_load(m, setup.files)  # reads -sam_ckpt unless -weights holds every tensor
    if m.encoder == "auto":
        changes["encoder"] = encoder_of_state(sources[-1][1], sources[-1][0]) if sources else "vit_t"
    for source, state, _ in sources if m.encoder != "auto" else ():
        found = recognised_encoder(state, source)
        if found not in (None, m.encoder):
            raise InputError(
                f"-encoder {m.encoder}: {source} holds a {found} model (its keys say so); "
                f"use -encoder {found} or -encoder auto"
            )
    if m.image_size is None:
        changes["image_size"] = default_image_size(changes.get("encoder", m.encoder))
    if m.compat == "reference" and m.memory != "none":
        raise InputError(f"-memory {m.memory}: -compat reference runs the original project's model, which has none")
    if m.compat == "reference" and m.fcomb != "reference":
        setup.notes.append("-compat reference: using the reference Fcomb")
        changes["fcomb"] = "reference"
    cfg = cfg.with_flags(**changes) if changes else cfg
    if cfg.model.pixel_branch == "auto":  # the trainable path to the pixels a frozen encoder lacks
        cfg = cfg.with_flags(pixel_branch="unet" if cfg.model.frozen and m.compat != "reference" else "none")
    return with_default_lr(cfg)


def with_default_lr(cfg: RunConfig) -> RunConfig:
    """-lr when not given: higher with a frozen encoder (only the decoder and the heads learn)."""
    if cfg.lr is not None:
        return cfg
    return cfg.with_flags(lr=settings.LR_FROZEN if cfg.model.frozen else settings.LR)


def recognised_encoder(state: Mapping[str, Any], source: str) -> str | None:
    """The named encoder a state dict's keys and shapes say it holds, or None for a layout none matches."""
    try:
        return encoder_of_state(state, source)
    except CheckpointError:
        return None


def run_command(main: Callable[[list[str] | None], Any]) -> None:
    """Run a command's main(argv): bad input (a flag, a file, a checkpoint) ends in one line and exit status 2."""
    run_cli(main, input_errors=INPUT_ERRORS)
