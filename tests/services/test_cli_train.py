"""``beamwatch train cracks`` end to end on real labelled crops (tests/data/real_labels), and
``cracks map --weights`` on its result."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import h5py
import numpy as np
import pytest
import torch
from skimage import io

from models.crack_unet import load_crack_unet, normalize_slices, reference_levels
from services.cli.main import main
from tests.conftest import SHARED_DATA
from tests.data.real_labels.make_labels import CROPS, load_crop
from training.crack_finetune import REPLAY_SHAPE, load_trainable, replay_set, slice_stack

LABELS = Path(__file__).resolve().parents[1] / "data" / "real_labels"
#: two crops with cracks / core voids, cut to their 192 x 192 quarter (row, col) with the most
#: labelled crack / void pixels to keep the test fast
USED = (("nmc87_hollow", 0, 0), ("nmc87_voids", 192, 0))
SIZE = 192


@pytest.fixture(scope="module")
def crops(tmp_path_factory: pytest.TempPathFactory) -> dict[str, list[Path]]:
    """The crops written as an 8-bit PNG and a 16-bit TIFF (images), TIFF/PNG masks."""
    if not (SHARED_DATA / "nanoct_nmc_slices").is_dir():
        pytest.skip("real nano-CT slices not found (see ../shared/data/README.md)")
    out = tmp_path_factory.mktemp("train")
    images, masks = [], []
    by_name = {c.name: c for c in CROPS}
    for i, (name, row, col) in enumerate(USED):
        box = np.s_[row : row + SIZE, col : col + SIZE]
        grey = load_crop(by_name[name], SHARED_DATA)[box]
        cracks = io.imread(LABELS / f"{name}_cracks.png")[box]
        assert (cracks > 0).sum() > 50, f"{name}: the test needs labelled cracks in the crop"
        if i == 0:  # 8-bit PNG image, 0/255 TIFF mask (Fiji style)
            image, mask = out / f"{name}.png", out / f"{name}_mask.tif"
            io.imsave(image, grey, check_contrast=False)
            io.imsave(mask, ((cracks > 0) * 255).astype(np.uint8), check_contrast=False)
        else:  # 16-bit TIFF image, 0/1 PNG mask (ilastik style)
            image, mask = out / f"{name}.tif", out / f"{name}_mask.png"
            io.imsave(image, grey.astype(np.uint16) * 257, check_contrast=False)
            io.imsave(mask, (cracks > 0).astype(np.uint8), check_contrast=False)
        images.append(image)
        masks.append(mask)
    return {"images": images, "masks": masks, "dir": [out]}


def test_slice_input_matches_cracks_map_normalisation() -> None:
    """A lone slice: normalised on its own levels, repeated as its own neighbours."""
    rng = np.random.default_rng(0)
    image = rng.integers(0, 65535, (40, 48)).astype(np.uint16)
    stack = slice_stack(image)
    low, high = reference_levels(image[np.newaxis])
    expected = normalize_slices(image[np.newaxis], low, high)[0]
    assert stack.shape == (3, 40, 48)
    for channel in stack:
        np.testing.assert_array_equal(channel, expected)


def test_train_cracks_end_to_end_then_cracks_map(crops, tmp_path: Path) -> None:
    out = tmp_path / "tuned.pt"
    argv = ["train", "cracks", "--images", *map(str, crops["images"])]
    argv += ["--labels", *map(str, crops["masks"]), "--pair", "stem"]
    argv += ["--minutes", "0.05", "--tile", "64", "--val-fraction", "0.25", "-o", str(out)]
    assert main([*argv, "--replay", "1"]) == 0

    report = json.loads(out.with_suffix(".json").read_text())
    assert report["replay"] == {"volumes": 1, "share": 0.5}
    held = report["held_out"]
    # 2 x (3 x 3) tiles of 64 px, about a quarter held out
    assert held["n_tiles"] + report["n_train_tiles"] == 18
    assert 3 <= held["n_tiles"] <= 6
    assert held["n_crack_pixels"] > 0  # stratified: cracked tiles are held out too
    for which in ("initial", "finetuned"):
        for key in ("crack_iou", "crack_dice"):
            assert 0.0 <= held[which][key] <= 1.0
    # keep-best: never worse than the start on the held-out tiles, and the weights say so
    assert held["finetuned"]["crack_iou"] >= held["initial"]["crack_iou"]
    assert report["steps"] >= 1
    for which in ("initial", "finetuned"):
        for key in ("crack_iou", "crack_dice"):
            assert 0.0 <= report["held_out_cracks_map"][which][key] <= 1.0
    tuned = torch.load(out, map_location="cpu", weights_only=True)
    shipped = load_trainable(None).state_dict()
    same = all(torch.equal(tuned["state_dict"][k], v) for k, v in shipped.items())
    if report["improved"]:
        assert held["finetuned"]["crack_iou"] > held["initial"]["crack_iou"]
        assert not same
    else:
        assert same
        piped = report["held_out_cracks_map"]
        assert piped["finetuned"] == piped["initial"]
    assert tuned["kind"] == "crack_unet" and tuned["init"]["base_channels"] == 8
    assert tuned["metadata"]["finetune"]["held_out"] == held
    load_crack_unet(out, device=torch.device("cpu"))  # the loader of cracks map accepts it

    volume = crops["dir"][0] / "slice.tif"  # cracks map reads TIFF slices
    io.imsave(volume, io.imread(crops["images"][0]), check_contrast=False)
    mapped = tmp_path / "map.h5"
    argv = ["cracks", "map", str(volume), "--weights", str(out), "-o", str(mapped)]
    assert main([*argv, "--window", "16"]) == 0
    with h5py.File(mapped, "r") as h5:
        assert h5["cracks"].attrs["weights"] == str(out)
        assert h5["cracks/mask"].shape == (1, SIZE, SIZE)


def test_replay_slices_are_the_shipped_recipes_volumes_last_one_crack_free() -> None:
    """The replayed synthetic slices: labelled cracks in the cracked volume, none in the last
    (crack-free) one, normalised images, gaps marked, and the same slices for the same seed."""
    data = replay_set(2, seed=3)
    depth = REPLAY_SHAPE[0]
    assert data.images.shape[0] == 2 * depth and data.images.shape[1] == 3
    assert data.labels[:depth].sum() > 100  # the first volume is cracked
    assert data.labels[depth:].sum() == 0  # the last is crack-free
    assert np.isfinite(data.images).all() and 0.0 < data.images.std() < 10.0
    assert data.gaps.sum() > 0  # the gaps between touching particles are hard negatives
    np.testing.assert_array_equal(replay_set(2, seed=3).labels, data.labels)
    with pytest.raises(ValueError, match="volumes must be >= 1"):
        replay_set(0, seed=3)


@pytest.mark.parametrize(
    ("option", "expected"),
    [
        (["--replay", "-1"], "--replay must be >= 0 volumes, got -1"),
        (["--replay", "2", "--replay-share", "1.5"], "--replay-share must be in (0, 1), got 1.5"),
    ],
)
def test_bad_replay_options_exit_2(crops, tmp_path, caplog, option, expected) -> None:
    argv = ["train", "cracks", "--images", str(crops["images"][0])]
    argv += ["--labels", str(crops["masks"][0]), "--minutes", "0.01", "-o", str(tmp_path / "x.pt")]
    with caplog.at_level(logging.ERROR):
        assert main([*argv, *option]) == 2
    assert expected in caplog.text
    assert not (tmp_path / "x.pt").exists()


@pytest.mark.parametrize("case", ["count", "shape", "stem"])
def test_mismatched_inputs_exit_2_with_a_clear_error(crops, tmp_path, caplog, case) -> None:
    images, masks = crops["images"], crops["masks"]
    if case == "count":
        argv = ["--images", *map(str, images), "--labels", str(masks[0])]
        expected = "2 images but 1 label masks"
    elif case == "shape":
        small = tmp_path / "small_mask.png"
        io.imsave(small, np.zeros((50, 60), np.uint8), check_contrast=False)
        argv = ["--images", str(images[0]), "--labels", str(small)]
        expected = f"is ({SIZE}, {SIZE}) but its mask {small} is (50, 60)"
    else:
        other = tmp_path / "other_mask.png"
        io.imsave(other, np.zeros((SIZE, SIZE), np.uint8), check_contrast=False)
        argv = ["--images", str(images[0]), "--labels", str(other), "--pair", "stem"]
        expected = f"no mask for ['{images[0]}']"
    out = tmp_path / "x.pt"
    with caplog.at_level(logging.ERROR):
        assert main(["train", "cracks", *argv, "--minutes", "0.01", "-o", str(out)]) == 2
    assert expected in caplog.text
    assert not out.exists()
