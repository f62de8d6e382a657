"""``speechsq train [hydra overrides]``: compose the config, build the pieces, train.

    speechsq train experiment=mini quantizer=vq_ema data.feats_dir=feats/train exp_dir=exp/mini
    torchrun --nproc_per_node 2 -m speechsq.training.cli experiment=paper data.feats_dir=...

Errors the user can fix (a bad config, a locked or mismatched exp_dir, a full disk, an
unsafe checkpoint) reach ``speechsq.cli`` and are printed as one line with exit status 2
(1 for a full disk); a non-finite loss exits with status 1.
"""

from __future__ import annotations

import argparse
import logging
import sys

from omegaconf import OmegaConf

from speechsq.training.config import compose_config, help_text, validate_config
from speechsq.training.run import run_training
from speechsq.training.trainer import NonFiniteLossError


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="speechsq train",
        description="Train a model with the shared trainer. Arguments are hydra overrides of speechsq/conf/train.yaml. "
                    "Re-running the same command continues the run from its newest checkpoint.",
        epilog=help_text(),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("overrides", nargs="*", help="hydra overrides, e.g. experiment=mini quantizer=sq_gauss1 data.feats_dir=feats/train")
    parser.add_argument("--print-config", action="store_true", help="print the composed, checked config and exit")
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.DEBUG if args.verbose else logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    cfg = compose_config(args.overrides)
    if args.print_config:
        validate_config(cfg)
        print(OmegaConf.to_yaml(cfg))
        return 0
    try:
        run_training(cfg)
    except NonFiniteLossError as err:
        print(f"speechsq train: {err}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":  # torchrun -m speechsq.training.cli: the same one-line error policy as `speechsq train`
    from speechsq.cli import debug_enabled, run_command

    sys.exit(run_command("train", sys.argv[1:], debug_enabled()))
