"""Offline CLI: ``train cracks`` and ``train particles`` (fine-tune the crack / particle U-Net
on a user's labelled slices).

``beamwatch train cracks --images IMG... --labels MASK... -o OUT.pt``
    Input: 2-D grey slices (TIFF/PNG, any bit depth; an RGB(A) file must be grey, R = G = B)
    and masks of the same shapes (TIFF/PNG, non-zero = crack, as exported by Fiji/ilastik).
    Pairs are made by the order of the arguments (``--pair order``, default) or by file stem
    (``--pair stem``: ``a.png`` with ``a.tif``; a mask stem may end in ``_mask`` or
    ``_labels``). Output: ``OUT.pt`` in the one checkpoint format (``cracks map --weights
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
    cracks.add_argument(
        "--labels", type=Path, nargs="+", required=True, help="masks, non-zero = crack"
    )
    cracks.add_argument(
        "--replay",
        type=int,
        default=12,
        metavar="VOLUMES",
        help="also train on synthetic slices of this many volumes drawn as the shipped weights "
        "were trained (2-4 s each, before the budget), so the network keeps what it knew "
        "(default 12; 0: the user's slices only, which forgets the rest, see README)",
    )
    cracks.add_argument(
        "--replay-share",
        type=float,
        default=0.5,
        help="share of the training steps on the replayed synthetic slices (default 0.5)",
    )
    _add_common_arguments(cracks)
    cracks.set_defaults(func=train_cracks_command)
    particles = train_sub.add_parser(
        "particles",
        help="fine-tune the particle U-Net on instance-labelled 2-D slices (TIFF/PNG or COCO)",
        description="Fine-tune the particle U-Net on slices labelled with particle instances, "
        "keep the best weights on held-out tiles (instance F1 of the particles analyze "
        "instance step), write OUT.pt and OUT.json.",
    )
    source = particles.add_mutually_exclusive_group(required=True)
    source.add_argument(
        "--labels",
        type=Path,
        nargs="+",
        help="instance label images (TIFF/PNG, 0 = not particle, one value per particle)",
    )
    source.add_argument(
        "--coco", type=Path, help="COCO JSON (RLE or polygon masks), images matched by file name"
    )
    _add_common_arguments(particles)
    particles.set_defaults(func=train_particles_command)


def _add_common_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--images", type=Path, nargs="+", required=True, help="grey slices")
    parser.add_argument(
        "--pair",
        choices=("order", "stem"),
        default="order",
        help="pair images and label files by argument order (default) or by file stem",
    )
    parser.add_argument("--init", type=Path, default=None, help="start weights (default shipped)")
    parser.add_argument("--minutes", type=float, default=3.0, help="wall-clock training budget")
    parser.add_argument(
        "--val-fraction", type=float, default=0.25, help="share of tiles held out for keep-best"
    )
    parser.add_argument("--tile", type=int, default=128, help="split tile size (px)")
    parser.add_argument("--lr", type=float, default=3e-4, help="AdamW learning rate")
    parser.add_argument("--threads", type=int, default=1, help="torch CPU threads")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("-o", "--output", type=Path, required=True, help="weights file (.pt)")


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
        _check_common(args)
        if args.replay < 0:
            raise TrainInputError(f"--replay must be >= 0 volumes, got {args.replay}")
        if args.replay and not 0 < args.replay_share < 1:
            raise TrainInputError(f"--replay-share must be in (0, 1), got {args.replay_share}")
    except TrainInputError as exc:
        logger.error("%s", exc)
        return EXIT_BAD_INPUT

    from training.crack_finetune import THRESHOLD, finetune_cracks, save_finetuned

    torch.set_num_threads(args.threads)
    n_crack = int(sum(int((m != 0).sum()) for m in masks))
    logger.info(
        "fine-tuning the crack U-Net on %d slices (%d crack pixels) for %.1f min",
        len(images),
        n_crack,
        args.minutes,
    )
    if args.replay:
        logger.info(
            "drawing %d synthetic volumes to replay in %.0f %% of the steps (before the budget)",
            args.replay,
            100 * args.replay_share,
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
            replay_volumes=args.replay,
            replay_share=args.replay_share,
        )
    key_iou, key_dice = f"iou@{THRESHOLD:.2f}", f"dice@{THRESHOLD:.2f}"
    report = {
        "images": [str(p) for p, _ in pairs],
        "labels": [str(m) for _, m in pairs],
        "pairing": args.pair,
        "init": str(args.init) if args.init is not None else "shipped",
        "replay": {"volumes": args.replay, "share": args.replay_share if args.replay else 0.0},
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
        **_training_summary(result, args),
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


def read_instances(path: Path) -> np.ndarray:
    """2-D int instance labels from TIFF/PNG (0 = not particle, one value per particle).

    A two-valued image (a binary mask, as some tools export) becomes one instance per
    4-connected component, with a warning: touching particles then count as one.
    """
    from scipy import ndimage
    from skimage import io

    if not path.is_file():
        raise TrainInputError(f"label image not found: {path}")
    try:
        labels = np.asarray(io.imread(path))
    except Exception as exc:  # noqa: BLE001 - any reader failure is bad input
        raise TrainInputError(f"label image {path} cannot be read as TIFF/PNG: {exc}") from exc
    if labels.ndim != 2:
        raise TrainInputError(
            f"label image {path} has shape {labels.shape}; expected a 2-D image of instance "
            "numbers (a colour label render cannot be read as instances)"
        )
    if not (np.issubdtype(labels.dtype, np.integer) or labels.dtype == np.bool_):
        raise TrainInputError(f"label image {path} is {labels.dtype}; expected integers")
    if labels.min() < 0:
        raise TrainInputError(f"label image {path} has negative values")
    if np.unique(labels).size <= 2:
        logger.warning(
            "%s holds one value besides 0: each connected component is taken as one particle "
            "(touching particles count as one; export instance labels to keep them apart)",
            path,
        )
        labels, _ = ndimage.label(labels > 0)
    return labels.astype(np.int32)


def instances_from_coco(coco_path: Path, images: list[Path]) -> list[np.ndarray]:
    """Per image (matched by file name), the instance labels of its COCO annotations.

    Segmentations as uncompressed RLE (``particles export-coco``) or polygons (most labelling
    tools); each annotation is one instance, later annotations drawn over earlier ones.
    """
    from skimage.draw import polygon2mask

    from pipelines.particles.coco import rle_decode

    try:
        coco = json.loads(coco_path.read_text())
        entries = {Path(im["file_name"]).name: im for im in coco["images"]}
        annotations = coco["annotations"]
    except FileNotFoundError as exc:
        raise TrainInputError(f"COCO file not found: {coco_path}") from exc
    except (ValueError, KeyError, TypeError) as exc:
        raise TrainInputError(f"{coco_path} is not a COCO dataset: {exc}") from exc
    missing = [str(p) for p in images if p.name not in entries]
    if missing:
        raise TrainInputError(f"{coco_path} has no image entry for {missing}")
    by_image: dict[int, list[dict[str, Any]]] = {}
    for ann in annotations:
        by_image.setdefault(int(ann["image_id"]), []).append(ann)
    out = []
    for path in images:
        entry = entries[path.name]
        shape = (int(entry["height"]), int(entry["width"]))
        labels = np.zeros(shape, dtype=np.int32)
        for k, ann in enumerate(by_image.get(int(entry["id"]), []), start=1):
            seg = ann.get("segmentation")
            if isinstance(seg, dict) and isinstance(seg.get("counts"), list):
                mask = rle_decode(seg)
            elif isinstance(seg, list) and seg:
                mask = np.zeros(shape, dtype=bool)
                for poly in seg:
                    xy = np.asarray(poly, dtype=np.float64).reshape(-1, 2)
                    mask |= polygon2mask(shape, xy[:, ::-1])
            else:
                raise TrainInputError(
                    f"{coco_path}: annotation {ann.get('id')} has a segmentation this reader "
                    "does not take (uncompressed RLE or polygons; compressed RLE strings need "
                    "pycocotools: convert them first)"
                )
            if mask.shape != shape:
                raise TrainInputError(
                    f"{coco_path}: annotation {ann.get('id')} is {mask.shape}, its image {shape}"
                )
            labels[mask] = k
        out.append(labels)
    return out


def _read_slices(images: list[Path]) -> list[np.ndarray]:
    return [read_grey(p, "image") for p in images]


def _check_common(args: argparse.Namespace) -> None:
    if args.init is not None and not args.init.is_file():
        raise TrainInputError(f"--init weights not found: {args.init}")
    if not 0 < args.val_fraction < 1:
        raise TrainInputError(f"--val-fraction must be in (0, 1), got {args.val_fraction}")
    if args.minutes <= 0:
        raise TrainInputError(f"--minutes must be > 0, got {args.minutes}")


def train_particles_command(args: argparse.Namespace) -> int:
    """Run ``train particles``; returns the exit code."""
    import torch
    from tqdm import tqdm

    try:
        if args.coco is not None:
            image_paths = list(args.images)
            label_names = [f"{args.coco}:{p.name}" for p in image_paths]
            images = _read_slices(image_paths)
            labels = instances_from_coco(args.coco, image_paths)
        else:
            pairs = pair_files(list(args.images), list(args.labels), args.pair)
            image_paths = [p for p, _ in pairs]
            label_names = [str(m) for _, m in pairs]
            images = _read_slices(image_paths)
            labels = [read_instances(m) for _, m in pairs]
        for image, lab, path, name in zip(images, labels, image_paths, label_names, strict=True):
            if image.shape != lab.shape:
                raise TrainInputError(
                    f"image {path} is {image.shape} but its labels {name} are {lab.shape}; "
                    "they must be the same size"
                )
        _check_common(args)
    except TrainInputError as exc:
        logger.error("%s", exc)
        return EXIT_BAD_INPUT

    from pipelines.particles.instances import InstanceParams, tile_instance_scores
    from training.particle_finetune import finetune_particles, save_finetuned

    torch.set_num_threads(args.threads)
    params = InstanceParams()
    n_particles = sum(int(np.unique(lab[lab > 0]).size) for lab in labels)
    logger.info(
        "fine-tuning the particle U-Net on %d slices (%d labelled particles) for %.1f min",
        len(images),
        n_particles,
        args.minutes,
    )

    def score(maps: list[tuple[np.ndarray, np.ndarray]], truths: list[np.ndarray]) -> dict:
        return tile_instance_scores(maps, truths, params)

    with tqdm(total=1000, desc="train particles", unit="‰") as bar:

        def progress(share: float) -> None:
            bar.update(int(share * 1000) - bar.n)

        try:
            result = finetune_particles(
                images,
                labels,
                init=args.init,
                minutes=args.minutes,
                val_fraction=args.val_fraction,
                tile=args.tile,
                lr=args.lr,
                seed=args.seed,
                progress=progress,
                score=score,
                key="f1",
            )
        except ValueError as exc:  # too few or too small tiles
            logger.error("%s", exc)
            return EXIT_BAD_INPUT
    report = {
        "images": [str(p) for p in image_paths],
        "labels": label_names,
        "pairing": "coco file name" if args.coco is not None else args.pair,
        "init": str(args.init) if args.init is not None else "shipped",
        "held_out": {
            "n_tiles": result.n_val_tiles,
            "n_particles": sum(
                int(np.unique(labels[i][y0:y1, x0:x1]).size) - 1
                for i, y0, y1, x0, x1 in result.val_boxes
            ),
            "min_size_px": params.min_size,
            "initial": result.initial,
            "finetuned": result.final,
        },
        "keep_best_score": "f1 (IoU 0.5) of the particles analyze instance step on the tiles",
        **_training_summary(result, args),
        "normalization": "per slice: models.crack_unet.reference_levels, as particles analyze",
        "history": result.history,
    }
    args.output.parent.mkdir(parents=True, exist_ok=True)
    save_finetuned(result, args.output, {"finetune": report})
    json_path = args.output.with_suffix(".json")
    json_path.write_text(json.dumps(report, indent=2) + "\n")
    logger.info(
        "held-out particle F1 %.3f -> %.3f (split rate %.3f -> %.3f) on %d tiles%s; wrote %s "
        "and %s",
        result.initial["f1"],
        result.final["f1"],
        result.initial["split_rate"],
        result.final["split_rate"],
        result.n_val_tiles,
        "" if result.best_step else " (no improvement: initial weights kept)",
        args.output,
        json_path,
    )
    return EXIT_OK


def _training_summary(result: Any, args: argparse.Namespace) -> dict[str, Any]:
    """The report fields every fine-tuning command writes: steps, timing and its options."""
    return {
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
    }
