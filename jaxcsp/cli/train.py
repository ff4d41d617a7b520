"""``jaxcsp train``: train the conditional VAE (or the plain VAE baseline) on a crystal table."""

from __future__ import annotations

import argparse

from jaxcsp.cli._common import add_progress_flag
from jaxcsp.datasets import load_carbon_sp2, read_table
from jaxcsp.models.cvae import save_cvae, train_cvae

NAME = "train"
HELP = "train the symmetry-conditioned VAE on tabular crystals (CSV from `jaxcsp dataset`)"
DESCRIPTION = """\
Fit the GMM transform of the continuous columns and train the CVAE (condition: space group and
Wyckoff sites; 128-d condition embedding) or, with --vae, the plain VAE baseline, with optax
AdamW. Deterministic given --seed; --out is also the checkpoint: a killed run resumes from it.

examples:
  jaxcsp train --out cvae.msgpack
  jaxcsp --precision 32 train --out ck.msgpack --export cvae.msgpack   (the shipped model)
  jaxcsp train --data mine.csv --vae --epochs 500 --out vae.msgpack"""


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--data", default=None, help="CSV table (default: the shipped sp2 carbon set)")
    p.add_argument("--out", required=True, help="model checkpoint to write (msgpack)")
    p.add_argument(
        "--export", default=None, help="also write the trained model alone (no optimizer state)"
    )
    p.add_argument("--vae", action="store_true", help="the plain (unconditional) VAE baseline")
    p.add_argument("--epochs", type=int, default=300, help="epochs (300)")
    p.add_argument("--batch-size", type=int, default=256, help="minibatch size (256)")
    p.add_argument("--latent-dim", type=int, default=32, help="latent dimension (32)")
    p.add_argument("--seed", type=int, default=0, help="random seed (0)")
    add_progress_flag(p)


def run(args: argparse.Namespace) -> int:
    wc = load_carbon_sp2() if args.data is None else read_table(args.data)
    model = train_cvae(
        wc,
        conditional=not args.vae,
        epochs=args.epochs,
        batch_size=args.batch_size,
        latent_dim=args.latent_dim,
        seed=args.seed,
        checkpoint=args.out,
        progress=not args.no_progress,
    )
    if args.export:
        save_cvae(args.export, model)
    h = model.history
    assert h is not None  # train_cvae always records the run's history
    print(
        f"trained on {wc.batch_size} rows: best validation loss {h.val_loss[h.best_epoch]:.3f} "
        f"at epoch {h.best_epoch + 1} of {len(h.val_loss)}; wrote {args.out}"
    )
    return 0
