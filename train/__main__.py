"""Training entry point: `cointeract train CONFIG`, `python -m comfyui_cointeract.train CONFIG`, and
`accelerate launch -m comfyui_cointeract.train CONFIG`.

Every field of the TOML config can be overridden: `--set stages.1.lr=2e-5 --set loss.preset=paper`.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import logging
import sys
from collections.abc import Sequence

from .errors import UserError, user_errors

log = logging.getLogger(__name__)


def build_parser() -> argparse.ArgumentParser:
    """The options of `cointeract train`."""
    parser = argparse.ArgumentParser(
        prog="cointeract train",
        description="Two-stage CoInteract training (stage 1 full attention, stage 2 asymmetric) from a TOML config. "
        "Multi-GPU: accelerate launch [--config_file train/accelerate_configs/ddp.yaml] -m comfyui_cointeract.train "
        "CONFIG. Re-running with the same runtime.output_dir resumes from the newest intact checkpoint; a config "
        "change that alters the run is refused unless --force.",
    )
    parser.add_argument("config", help="TOML training config (see train/example_config.toml)")
    parser.add_argument(
        "--set",
        dest="overrides",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="override a config field, e.g. --set stages.0.steps=100 (repeatable; values in TOML syntax)",
    )
    parser.add_argument("--print-config", action="store_true", help="print the resolved config as JSON and exit")
    parser.add_argument(
        "--force", action="store_true", help="resume even though the config changed in a way that alters the run"
    )
    parser.add_argument(
        "--cache-only",
        action="store_true",
        help="build the latent cache of [data.encode] (one process) and exit; then launch the training",
    )
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging; tracebacks with errors")
    return parser


@user_errors("cointeract train", "interrupted; run the same command again to resume from the newest checkpoint")
def main(argv: Sequence[str] | None = None) -> int:
    """Parse arguments, load and validate the config, train; returns the exit code."""
    args = build_parser().parse_args(list(sys.argv[1:] if argv is None else argv))
    if not logging.getLogger().handlers:
        logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    if args.verbose:
        logging.getLogger().setLevel(logging.DEBUG)
    from .config_load import load_config  # noqa: PLC0415 - keep `--help` fast

    cfg = load_config(args.config, args.overrides)
    if args.print_config:
        print(json.dumps(dataclasses.asdict(cfg), indent=2))
        return 0
    if args.cache_only:
        from .cache_build import build_configured_cache  # noqa: PLC0415

        if not cfg.data.encode.source:
            raise UserError("--cache-only needs data.encode.source (the data.csv of `cointeract prepare`)")
        build_configured_cache(cfg.data, cfg.model.preset)
        log.info("latent cache %s is ready", cfg.data.path)
        return 0
    from .loop import train  # noqa: PLC0415 - imports torch, accelerate and peft

    result = train(cfg, force=args.force)
    missing = [str(p) for p in result.exports if not p.is_file()]
    if missing:  # a finished stage's export was deleted and its checkpoint is gone (see the warning above)
        raise UserError(f"the run finished at step {result.steps}, but {', '.join(missing)} cannot be made again")
    log.info("done: %d steps; exports %s", result.steps, ", ".join(str(p) for p in result.exports))
    return 0


if __name__ == "__main__":
    sys.exit(main())
