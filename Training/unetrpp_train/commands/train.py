"""`unetrpp-train train CONFIG_OR_DATASET --data DST -o RUNDIR [...]`: train UNETR++ with a recipe.

One process: `unetrpp-train train synapse --data DST -o runs/synapse`.
Several GPUs: `torchrun --nproc_per_node=N $(which unetrpp-train) train synapse --data DST -o runs/synapse`
(or `torchrun --nproc_per_node=N -m unetrpp_train.commands.train ...`).
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from typing import Any

from ..config import ConfigError, TrainConfig, load_config

log = logging.getLogger("unetrpp_train")


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("config", metavar="CONFIG_OR_DATASET",
                   help="recipe JSON file, or a dataset name using its shipped recipe: synapse, btcv, acdc, brats, lung")
    p.add_argument("--data", required=True, metavar="DST", help="converted dataset folder (dataset.json, cases/, plan.json)")
    p.add_argument("-o", "--output", required=True, metavar="RUNDIR", help="run folder (checkpoints, logs)")
    p.add_argument("--resume", action="store_true", help="continue the run in RUNDIR from its last checkpoint")
    p.add_argument("--device", default="auto", help="auto (CUDA when available), cpu, cuda, cuda:N")
    p.add_argument("--epochs", type=int, help="number of epochs (recipe: 1000)")
    p.add_argument("--iterations", type=int, help="iterations per epoch (recipe: 250)")
    p.add_argument("--batch-size", type=int, help="patches per step and process")
    p.add_argument("--patch", type=int, nargs=3, metavar=("D", "H", "W"), help="patch size (array order z y x)")
    p.add_argument("--stem", type=int, nargs=3, metavar=("D", "H", "W"), help="stem kernel = stride")
    p.add_argument("--feature-size", type=int, help="network width (official: 16)")
    p.add_argument("--depths", type=int, nargs=4, metavar="N", help="transformer blocks per encoder stage (official: 3 3 3 3)")
    p.add_argument("--lr", type=float, help="initial learning rate (recipe: 0.01)")
    p.add_argument("--workers", type=int, help="data loader worker processes")
    p.add_argument("--seed", type=int)
    p.add_argument("--checkpoint-every", type=int, metavar="EPOCHS")
    p.add_argument("--checkpoint-every-iterations", type=int, metavar="STEPS")
    p.add_argument("--val-iterations", type=int, help="patch-validation batches after each epoch (0: none)")
    amp = p.add_mutually_exclusive_group()
    amp.add_argument("--amp", action="store_true",
                     help="mixed precision (float16 autocast + GradScaler) on CUDA; the official trainers train in "
                          "float32 (run_training.py:69), which is the default")
    amp.add_argument("--no-amp", action="store_true", help="float32 (the default; kept for older scripts)")
    p.add_argument("--custom-split", action="store_true",
                   help="allow a benchmark recipe on a dataset whose train/test cases differ from the official lists")
    p.add_argument("--no-augment", action="store_true", help="disable data augmentation")
    p.add_argument("--tensorboard", action="store_true", help="write TensorBoard logs to RUNDIR/tensorboard")
    p.add_argument("--init-from", metavar="CHECKPOINT", help="start from the model weights of this checkpoint (fine-tuning)")
    p.add_argument("--cache-dir", help="where preprocessed arrays are cached (default DST/preprocessed/<plan hash>)")
    p.add_argument("--set", action="append", default=[], metavar="KEY=JSON",
                   help="override any recipe setting, e.g. --set oversample_foreground=0.5 --set augment.gamma_prob=0")


def apply_overrides(cfg: TrainConfig, args: argparse.Namespace) -> TrainConfig:
    data: dict[str, Any] = cfg.to_dict()
    simple = {
        "epochs": args.epochs, "iterations_per_epoch": args.iterations, "batch_size": args.batch_size,
        "lr": args.lr, "num_workers": args.workers, "seed": args.seed, "checkpoint_every": args.checkpoint_every,
        "checkpoint_every_iterations": args.checkpoint_every_iterations, "val_iterations": args.val_iterations,
    }
    data.update({k: v for k, v in simple.items() if v is not None})
    net = dict(data.get("network", {}))
    for key, value in (("patch_size", args.patch), ("stem_kernel", args.stem),
                       ("feature_size", args.feature_size), ("depths", args.depths)):
        if value is not None:
            net[key] = list(value) if isinstance(value, (list, tuple)) else value
    data["network"] = net
    if args.amp:
        data["amp"] = True
    if args.no_amp:
        data["amp"] = False
    if args.custom_split:
        data["custom_split"] = True
    if args.no_augment:
        data["augment"]["enabled"] = False
    if args.tensorboard:
        data["tensorboard"] = True
    for item in args.set:
        key, sep, raw = item.partition("=")
        if not sep:
            raise ConfigError(f"--set expects KEY=VALUE, got {item!r}")
        try:
            value = json.loads(raw)
        except json.JSONDecodeError:
            value = raw
        target = data
        *parents, last = key.split(".")
        for part in parents:
            target = target.setdefault(part, {})
        target[last] = value
    return TrainConfig.from_dict(data)


def run(args: argparse.Namespace) -> int:
    from ..trainer import train

    if logging.getLogger().level > logging.INFO or not logging.getLogger().handlers:
        if not logging.getLogger().handlers:
            logging.basicConfig(format="%(asctime)s %(levelname)s %(name)s: %(message)s")
        log.setLevel(logging.INFO)  # progress with ETA is the point of this command
    cfg = apply_overrides(load_config(args.config), args)
    result = train(cfg, args.data, args.output, resume=args.resume, device=args.device, cache_dir=args.cache_dir,
                   init_from=args.init_from)
    log.info("done: %d steps, %.2f it/s, data wait %.0f%% of the step time, peak memory %.0f MB; run folder %s",
             result.steps, result.iterations_per_s, 100 * result.data_wait_share, result.peak_memory_mb, result.run_dir)
    return 0


def add_parser(subparsers: Any) -> argparse.ArgumentParser:
    p = subparsers.add_parser("train", help="train UNETR++ on a converted dataset (one GPU, CPU, or torchrun)",
                              description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_arguments(p)
    p.set_defaults(func=run)
    return p


def main(argv: list[str] | None = None) -> int:
    """Stand-alone entry (`python -m unetrpp_train.commands.train`, e.g. for torchrun -m): the package CLI's `train`, with
    its logging and error handling."""
    from ..cli import main as cli_main

    return cli_main(["train", *(sys.argv[1:] if argv is None else argv)])


if __name__ == "__main__":
    sys.exit(main())
