"""Offline CLI: ``train cracks`` (fine-tune the crack U-Net on a user's labelled slices).

``beamwatch train cracks --images IMG... --labels MASK... -o OUT.pt``
    Input: 2-D grey slices (TIFF/PNG, any bit depth; an RGB(A) file must be grey, R = G = B)
    and masks of the same shapes (TIFF/PNG, non-zero = crack, as exported by Fiji/ilastik).
    Pairs are made by the order of the arguments (``--pair order``, default) or by file stem
    (``--pair stem``: ``a.png`` with ``a.tif``; a mask stem may end in ``_mask`` or
    ``_labels``). Output: ``OUT.pt`` in the shipped checkpoint format (``cracks map --weights
    OUT.pt``) and ``OUT.json`` with the crack IoU / Dice of the initial and the fine-tuned
    weights on the held-out tiles: ``held_out`` the network's probabilities >= 0.5 (the
    keep-best score), ``held_out_cracks_map`` the crack mask of ``cracks map`` (network plus
    particle envelope and enclosed core voids), each slice mapped whole and scored inside the
    held-out tiles.
"""

from __future__ import annotations

import argparse
import json
import logging
from pathlib import Path
from typing import Any

import numpy as np

logger = logging.getLogger(__name__)

EXIT_OK = 0
EXIT_BAD_INPUT = 2
MASK_SUFFIXES = ("_mask", "_labels", "_label")


class TrainInputError(ValueError):
    """A training input that cannot be used (the message says what and where)."""


def register(subparsers: Any) -> None:
    """Add the ``train`` command to an argparse sub-parsers object.

    Parameters
    ----------
    subparsers : argparse._SubParsersAction
        Result of ``parser.add_subparsers(...)``.
    """
    train = subparsers.add_parser("train", help="fine-tune the shipped networks on your labels")
    train_sub = train.add_subparsers(dest="train_command", required=True)
    cracks = train_sub.add_parser(
        "cracks",
        help="fine-tune the crack U-Net on labelled 2-D slices (TIFF/PNG masks)",
        description="Fine-tune the crack U-Net on labelled slices, keep the best weights on "
        "held-out tiles, write OUT.pt and OUT.json.",
    )
    cracks.add_argument("--images", type=Path, nargs="+", required=True, help="grey slices")
    cracks.add_argument(
        "--labels", type=Path, nargs="+", required=True, help="masks, non-zero = crack"
    )
    cracks.add_argument(
        "--pair",
        choices=("order", "stem"),
        default="order",
        help="pair images and masks by argument order (default) or by file stem",
    )
    cracks.add_argument("--init", type=Path, default=None, help="start weights (default shipped)")
    cracks.add_argument("--minutes", type=float, default=3.0, help="wall-clock training budget")
    cracks.add_argument(
        "--val-fraction", type=float, default=0.25, help="share of tiles held out for keep-best"
    )
    cracks.add_argument("--tile", type=int, default=128, help="split tile size (px)")
    cracks.add_argument("--lr", type=float, default=3e-4, help="AdamW learning rate")
    cracks.add_argument("--threads", type=int, default=1, help="torch CPU threads")
    cracks.add_argument("--seed", type=int, default=0)
    cracks.add_argument("-o", "--output", type=Path, required=True, help="weights file (.pt)")
    cracks.set_defaults(func=train_cracks_command)


def read_grey(path: Path, what: str) -> np.ndarray:
    """A 2-D grey image from TIFF/PNG; an RGB(A) image must have equal colour channels."""
    from skimage import io

    if not path.is_file():
        raise TrainInputError(f"{what} not found: {path}")
    try:
        image = np.asarray(io.imread(path))
    except Exception as exc:  # noqa: BLE001 - any reader failure is bad input
        raise TrainInputError(f"{what} {path} cannot be read as TIFF/PNG: {exc}") from exc
    if image.ndim == 3 and image.shape[-1] in (3, 4):
        rgb = image[..., :3]
        if not (
            np.array_equal(rgb[..., 0], rgb[..., 1]) and np.array_equal(rgb[..., 0], rgb[..., 2])
        ):
            raise TrainInputError(f"{what} {path} is a colour image; expected grey (R = G = B)")
        image = rgb[..., 0]
    if image.ndim != 2:
        raise TrainInputError(f"{what} {path} has shape {image.shape}; expected a 2-D slice")
    return image


def _stem(path: Path) -> str:
    stem = path.stem
    for suffix in MASK_SUFFIXES:
        if stem.endswith(suffix):
            return stem[: -len(suffix)]
    return stem


def pair_files(images: list[Path], labels: list[Path], how: str) -> list[tuple[Path, Path]]:
    """Image/mask pairs by argument order or by file stem; a clear error when they differ."""
    if how == "order":
        if len(images) != len(labels):
            raise TrainInputError(
                f"{len(images)} images but {len(labels)} label masks: pairs are made by order, "
                "give one mask per image"
            )
        return list(zip(images, labels, strict=True))
    by_stem = {_stem(p): p for p in labels}
    missing = [str(p) for p in images if p.stem not in by_stem]
    extra = sorted(set(by_stem) - {p.stem for p in images})
    if missing or extra:
        raise TrainInputError(
            f"pairing by stem: no mask for {missing or 'none'}; masks without image: "
            f"{extra or 'none'}"
        )
    return [(p, by_stem[p.stem]) for p in images]


def map_scores(
    images: list[np.ndarray],
    masks: list[np.ndarray],
    boxes: list[tuple[int, int, int, int, int]],
    weights: Path | None,
) -> dict[str, float]:
    """Crack IoU / Dice of ``cracks map`` (network plus particle envelope and core voids) with
    ``weights`` on the held-out tiles: each slice mapped whole, scored inside its tiles."""
    import torch

    from models.crack_unet import load_crack_unet
    from pipelines.cracks.segment import map_cracks

    model = load_crack_unet(weights, device=torch.device("cpu"))
    inter = union = total = 0
    for i in sorted({b[0] for b in boxes}):
        pred = map_cracks(images[i][np.newaxis], model=model).crack_mask[0] > 0
        for _, y0, y1, x0, x1 in (b for b in boxes if b[0] == i):
            p, t = pred[y0:y1, x0:x1], masks[i][y0:y1, x0:x1] != 0
            inter += int((p & t).sum())
            union += int((p | t).sum())
            total += int(p.sum() + t.sum())
    return {
        "crack_iou": inter / union if union else 1.0,
        "crack_dice": 2 * inter / total if total else 1.0,
    }


def train_cracks_command(args: argparse.Namespace) -> int:
    """Run ``train cracks``; returns the exit code."""
    import torch
    from tqdm import tqdm

    try:
        pairs = pair_files(list(args.images), list(args.labels), args.pair)
        images, masks = [], []
        for image_path, mask_path in pairs:
            image = read_grey(image_path, "image")
            mask = read_grey(mask_path, "label mask")
            if image.shape != mask.shape:
                raise TrainInputError(
                    f"image {image_path} is {image.shape} but its mask {mask_path} is "
                    f"{mask.shape}; they must be the same size"
                )
            images.append(image)
            masks.append(mask)
        if args.init is not None and not args.init.is_file():
            raise TrainInputError(f"--init weights not found: {args.init}")
        if not 0 < args.val_fraction < 1:
            raise TrainInputError(f"--val-fraction must be in (0, 1), got {args.val_fraction}")
        if args.minutes <= 0:
            raise TrainInputError(f"--minutes must be > 0, got {args.minutes}")
    except TrainInputError as exc:
        logger.error("%s", exc)
        return EXIT_BAD_INPUT

    from models.crack_finetune import THRESHOLD, finetune_cracks, save_finetuned

    torch.set_num_threads(args.threads)
    n_crack = int(sum(int((m != 0).sum()) for m in masks))
    logger.info(
        "fine-tuning the crack U-Net on %d slices (%d crack pixels) for %.1f min",
        len(images),
        n_crack,
        args.minutes,
    )
    with tqdm(total=1000, desc="train cracks", unit="‰") as bar:

        def progress(share: float) -> None:
            bar.update(int(share * 1000) - bar.n)

        result = finetune_cracks(
            images,
            masks,
            init=args.init,
            minutes=args.minutes,
            val_fraction=args.val_fraction,
            tile=args.tile,
            lr=args.lr,
            seed=args.seed,
            progress=progress,
        )
    key_iou, key_dice = f"iou@{THRESHOLD:.2f}", f"dice@{THRESHOLD:.2f}"
    report = {
        "images": [str(p) for p, _ in pairs],
        "labels": [str(m) for _, m in pairs],
        "pairing": args.pair,
        "init": str(args.init) if args.init is not None else "shipped",
        "threshold": THRESHOLD,
        "held_out": {
            "n_tiles": result.n_val_tiles,
            "n_crack_pixels": sum(
                int((masks[i][y0:y1, x0:x1] != 0).sum()) for i, y0, y1, x0, x1 in result.val_boxes
            ),
            "initial": {
                "crack_iou": result.initial[key_iou],
                "crack_dice": result.initial[key_dice],
            },
            "finetuned": {"crack_iou": result.final[key_iou], "crack_dice": result.final[key_dice]},
        },
        "improved": result.best_step > 0,
        "n_train_tiles": result.n_train_tiles,
        "steps": result.steps,
        "best_step": result.best_step,
        "train_seconds": round(result.train_seconds, 1),
        "config": {
            "minutes": args.minutes,
            "val_fraction": args.val_fraction,
            "tile": args.tile,
            "lr": args.lr,
            "seed": args.seed,
            "threads": args.threads,
        },
        "normalization": "per slice: models.crack_unet.reference_levels, as cracks map",
        "history": result.history,
    }
    args.output.parent.mkdir(parents=True, exist_ok=True)
    save_finetuned(result, args.output, {"finetune": report})
    # the same held-out tiles through the whole `cracks map` pipeline (the particle envelope
    # adds enclosed core voids and keeps cracks inside particles)
    report["held_out_cracks_map"] = {
        "initial": map_scores(images, masks, result.val_boxes, args.init),
        "finetuned": map_scores(images, masks, result.val_boxes, args.output),
    }
    save_finetuned(result, args.output, {"finetune": report})
    json_path = args.output.with_suffix(".json")
    json_path.write_text(json.dumps(report, indent=2) + "\n")
    piped = report["held_out_cracks_map"]
    logger.info(
        "held-out crack IoU %.3f -> %.3f (Dice %.3f -> %.3f) of the network, %.3f -> %.3f "
        "(Dice %.3f -> %.3f) of cracks map, on %d tiles%s; wrote %s and %s",
        result.initial[key_iou],
        result.final[key_iou],
        result.initial[key_dice],
        result.final[key_dice],
        piped["initial"]["crack_iou"],
        piped["finetuned"]["crack_iou"],
        piped["initial"]["crack_dice"],
        piped["finetuned"]["crack_dice"],
        result.n_val_tiles,
        "" if result.best_step else " (no improvement: initial weights kept)",
        args.output,
        json_path,
    )
    return EXIT_OK
