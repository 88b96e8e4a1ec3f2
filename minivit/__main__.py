"""The command line: ``python -m minivit {train,evaluate,list,bench,convert,exercises} ...``.

Every mistake a user can make on the command line (unknown model, missing
data, bad hyper-parameters, unreadable checkpoint) ends in a one-line message
and a non-zero exit status, never a traceback, and never overwrites a file.
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np


def _positive_int(s):
    try:
        v = int(s)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {s!r}") from None
    if v < 1:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {s}")
    return v


def _positive_float(s):
    try:
        v = float(s)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a positive number, got {s!r}") from None
    if not v > 0:
        raise argparse.ArgumentTypeError(f"expected a positive number, got {s}")
    return v


def _fresh_dir(base: Path) -> Path:
    """``base``, or ``base-2``, ``base-3`` ... whichever does not exist yet."""
    if not base.exists():
        return base
    i = 2
    while Path(f"{base}-{i}").exists():
        i += 1
    return Path(f"{base}-{i}")


def cmd_train(args) -> int:
    from minivit.train import TrainConfig, cli_defaults, create_model, fit
    if args.resume:
        run = Path(args.resume)
        cfg_file = run / "config.json"
        if not cfg_file.is_file():
            raise FileNotFoundError(f"--resume {run}: no config.json there (is it a run folder made by `train`?)")
        cfg = TrainConfig.from_dict(json.loads(cfg_file.read_text()))
        if args.epochs is not None:
            cfg.epochs = args.epochs
        out, resume = run, True
    else:
        from minivit import models
        if args.model not in models.list_models():
            models.create(args.model)  # raises the "unknown model ... did you mean" error
        cfg = TrainConfig(model=args.model, seed=args.seed, data=args.data, **cli_defaults(args.model))
        for name in ("epochs", "batch_size", "lr", "weight_decay", "warmup", "label_smoothing", "patch_drop",
                     "clip_grad", "augment", "mixup", "cutmix", "train_subset",
                     "teacher", "distill", "distill_alpha", "distill_tau", "diverse_patch"):
            v = getattr(args, name)
            if v is not None:
                setattr(cfg, name, v)
        if cfg.teacher and args.distill is None:
            cfg.distill = "hard"                     # DeiT's best variant
        if cfg.teacher:
            from minivit.models.deit import load_teacher
            load_teacher(cfg.teacher)                # a bad teacher fails now, before a run folder exists
        cfg.validate()
        if cfg.patch_drop:
            create_model(cfg)                        # a model without patch dropout fails now, too
        out = _fresh_dir(Path(args.out) if args.out else Path("runs") / f"{cfg.model}-seed{cfg.seed}")
        resume = False
    print(f"training {cfg.model} -> {out}")
    t0 = time.perf_counter()
    result = fit(cfg, out_dir=out, resume=resume, progress=not args.no_progress)
    final = result["final"]
    score = (f"test pixel accuracy {final['pixel_acc']:.4f}, mIoU {final['miou']:.4f}" if "miou" in final
             else f"test accuracy {final['acc']:.4f}")
    print(f"done in {time.perf_counter() - t0:.0f} s: {score} (run folder {out})")
    return 0


def cmd_evaluate(args) -> int:
    from minivit import io, models
    from minivit.train import evaluate, load_task_dataset, task_of
    path = Path(args.checkpoint)
    if path.is_dir():
        path = path / "checkpoint.npz"
    ckpt = io.read_checkpoint(path)
    cfg = ckpt["meta"].get("config", {})
    name = args.model or cfg.get("model")
    if not name:
        raise ValueError(f"{path} does not record its model; pass --model")
    model = models.create(name, **cfg.get("model_kwargs", {}))
    model.load_state_dict(ckpt["model"])
    test = load_task_dataset(model, args.data if args.data else cfg.get("data"), "test")
    res = evaluate(model, test, num_classes=getattr(model, "num_classes", None))
    if task_of(model) == "segmentation":
        print(f"{name}: test pixel accuracy {res['pixel_acc']:.4f}, mIoU {res['miou']:.4f}, "
              f"loss {res['loss']:.4f} on {len(test)} canvases")
    else:
        print(f"{name}: test accuracy {res['acc']:.4f}, loss {res['loss']:.4f} on {len(test)} images")
    return 0


def cmd_list(args) -> int:
    from minivit import models
    for name in models.list_models(args.pattern):
        if args.params:
            print(f"{name:32s} {models.create(name).num_params():>12,d}")
        else:
            print(name)
    return 0


def cmd_bench(args) -> int:
    """Time training steps (forward, backward, AdamW) of a model on random data."""
    import minivit
    from minivit import models, optim
    from minivit._allocator import tune_allocator
    from minivit.train import TrainConfig, create_model, cross_entropy_criterion, task_of
    tune_allocator()
    cfg = TrainConfig(model=args.model, label_smoothing=0.0, patch_drop=args.patch_drop)
    cfg.validate()
    minivit.manual_seed(0)
    model = create_model(cfg)
    pe = getattr(model, "patch_embed", None)                # the input size: from the patch embedding,
    size = getattr(pe, "img_size", getattr(model, "img_size", 28))     # else the model, else Fashion-MNIST's
    chans = getattr(pe, "in_chans", getattr(model, "in_chans", 1))
    size = (size, size) if isinstance(size, int) else tuple(size)
    rng = np.random.default_rng(0)
    x = rng.standard_normal((args.batch_size, chans, *size)).astype(np.float32)
    labels = (args.batch_size, *size) if task_of(model) == "segmentation" else (args.batch_size,)
    y = rng.integers(0, getattr(model, "num_classes", 10), labels)    # segmenters: one label map per image
    opt = optim.AdamW(model.parameters(), lr=1e-3)
    times = []
    for i in range(args.warmup + args.steps):
        t0 = time.perf_counter()
        loss, _ = cross_entropy_criterion(model, (x, y), cfg)   # two-headed models too
        opt.zero_grad()
        loss.backward()
        opt.step()
        if i >= args.warmup:
            times.append(time.perf_counter() - t0)
    ms = 1000 * float(np.median(times))
    drop = f", patch dropout {args.patch_drop:g}" if args.patch_drop else ""
    print(f"{args.model}: batch {args.batch_size}{drop}, median of {args.steps} steps: {ms:.1f} ms/step, "
          f"{args.batch_size / ms * 1000:.0f} images/s")
    return 0


def build_parser() -> argparse.ArgumentParser:
    from minivit.train import CLI_DEFAULTS as D, CLI_DEFAULTS_WITHOUT_PATCH_DROP as D0
    p = argparse.ArgumentParser(prog="python -m minivit", description="minivit: vision transformers in pure NumPy")
    sub = p.add_subparsers(dest="command", required=True)

    t = sub.add_parser("train", help="train a model and write a run folder",
                       description="Train a model on Fashion-MNIST (the bundled 10k/2k subset by default) "
                                   "and write a run folder with config.json, metrics.csv, checkpoint.npz, "
                                   "curves.png and confusion.png (masks.png for segmentation models).")
    t.add_argument("--model", default="vit_fmnist", help="registered model name (see `list`; default vit_fmnist)")
    t.add_argument("--epochs", type=_positive_int,
                   help=f"number of epochs (default {D['epochs']} with patch dropout, {D0['epochs']} for a model "
                        f"without it: about the same compute)")
    t.add_argument("--batch-size", type=_positive_int, help=f"images per step (default {D['batch_size']})")
    t.add_argument("--lr", type=_positive_float, help=f"peak AdamW learning rate (default {D['lr']:g})")
    t.add_argument("--weight-decay", type=float, help="AdamW decoupled weight decay (default 0.05)")
    t.add_argument("--warmup", type=float, help="fraction of steps for linear warm-up (default 0.1)")
    t.add_argument("--label-smoothing", type=float, help=f"label smoothing (default {D['label_smoothing']:g})")
    t.add_argument("--patch-drop", type=float, metavar="RATE",
                   help=f"ViT family: drop this fraction of each image's patch tokens in training, which makes "
                        f"a step about 1/(1-RATE) times cheaper (default {D['patch_drop']:g} for models that "
                        f"support it: vit_fmnist, deit_fmnist; 0 = off)")
    t.add_argument("--clip-grad", type=float, help="clip the gradient norm to this value (0 = off)")
    t.add_argument("--augment", help="comma list of flip, crop, erase, or none (default none)")
    t.add_argument("--mixup", type=float, help="mixup Beta alpha (0 = off)")
    t.add_argument("--cutmix", type=float, help="cutmix Beta alpha (0 = off)")
    t.add_argument("--train-subset", type=_positive_int, help="use only the first N training images")
    t.add_argument("--teacher", metavar="RUN", help="DeiT: distil from this trained run folder or checkpoint "
                                                    "(e.g. runs/cnn_fmnist-seed0); needs a distilled student "
                                                    "such as deit_fmnist")
    t.add_argument("--distill", choices=("hard", "soft"), help="DeiT distillation kind (default hard with --teacher)")
    t.add_argument("--distill-alpha", type=float, help="weight of the distillation term (default 0.5)")
    t.add_argument("--distill-tau", type=_positive_float, help="soft distillation temperature (default 1.0)")
    t.add_argument("--diverse-patch", metavar="LOSSES",
                   help="patch diversification (diverse_vit_fmnist): comma list of cos, contrastive, mixing, "
                        "each optionally =weight, e.g. cos,contrastive,mixing (mixing adds patch-aligned CutMix)")
    t.add_argument("--data", help="directory with Fashion-MNIST IDX files (default: bundled subset, "
                                  "or $MINIVIT_DATA); the full set: /usr/share/datasets/fashion-mnist")
    t.add_argument("--out", help="run folder (default runs/<model>-seed<seed>; never overwritten)")
    t.add_argument("--resume", metavar="RUN", help="continue the run in folder RUN from its checkpoint")
    t.add_argument("--seed", type=int, default=0, help="random seed: same seed, same numbers (default 0)")
    t.add_argument("--no-progress", action="store_true", help="no progress bar")
    t.set_defaults(func=cmd_train)

    e = sub.add_parser("evaluate", help="test accuracy of a checkpoint",
                       description="Evaluate a run folder or checkpoint.npz on the test split.")
    e.add_argument("checkpoint", metavar="RUN_OR_CHECKPOINT", help="run folder or .npz checkpoint")
    e.add_argument("--data", help="directory with Fashion-MNIST IDX files (default: what the run used)")
    e.add_argument("--model", help="model name, if the checkpoint does not record it")
    e.set_defaults(func=cmd_evaluate)

    ls = sub.add_parser("list", help="list registered models", description="List registered models.")
    ls.add_argument("pattern", nargs="?", help="shell-style filter, e.g. 'vit_*'")
    ls.add_argument("--params", action="store_true", help="also print each model's parameter count")
    ls.set_defaults(func=cmd_list)

    b = sub.add_parser("bench", help="time training steps of a model",
                       description="Time training steps (forward, backward, AdamW) on random data.")
    b.add_argument("--model", default="vit_fmnist", help="registered model name (default vit_fmnist)")
    b.add_argument("--batch-size", type=_positive_int, default=128, help="batch size (default 128)")
    b.add_argument("--steps", type=_positive_int, default=10, help="timed steps (default 10)")
    b.add_argument("--warmup", type=int, default=2, help="untimed steps first (default 2)")
    b.add_argument("--patch-drop", type=float, default=0.0, metavar="RATE",
                   help="ViT family: train on a random (1-RATE) of each image's patches, as `train` does (default 0)")
    b.set_defaults(func=cmd_bench)

    from minivit import convert, exercises
    convert.add_parser(sub)                  # convert --from-timm / --to-torch (minivit/convert.py)
    exercises.add_parser(sub)                # exercises make-student / check (minivit/exercises.py)
    return p


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return args.func(args)
    except (ValueError, FileNotFoundError, KeyError, NotADirectoryError, PermissionError) as e:
        msg = e.args[0] if isinstance(e, KeyError) and e.args else e
        print(f"error: {msg}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
