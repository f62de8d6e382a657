"""``speechsq train [hydra overrides]``: compose the config, build the pieces, train.

    speechsq train experiment=mini quantizer=vq_ema data.feats_dir=feats/train exp_dir=exp/mini
    torchrun --nproc_per_node 2 -m speechsq.training.cli experiment=paper data.feats_dir=...
"""

from __future__ import annotations

import argparse
import logging
import sys

from omegaconf import OmegaConf

from speechsq.training.config import ConfigError, compose_config, help_text
from speechsq.training.run import run_training
from speechsq.training.trainer import NonFiniteLossError


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="speechsq train",
        description="Train a model with the shared trainer. Arguments are hydra overrides of speechsq/conf/train.yaml.",
        epilog=help_text(),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("overrides", nargs="*", help="hydra overrides, e.g. experiment=mini quantizer=sq_gauss1 data.feats_dir=feats/train")
    parser.add_argument("--print-config", action="store_true", help="print the composed config and exit")
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.DEBUG if args.verbose else logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    try:
        cfg = compose_config(args.overrides)
        if args.print_config:
            print(OmegaConf.to_yaml(cfg))
            return 0
        run_training(cfg)
    except ConfigError as err:
        print(f"speechsq train: error: {err}", file=sys.stderr)
        return 2
    except NonFiniteLossError as err:
        print(f"speechsq train: {err}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
