"""``beamwatch train particles`` end to end on real labelled crops (tests/data/real_labels): from
instance label images and from the COCO file ``particles export-coco`` writes, then
``particles analyze --weights`` on its result."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import h5py
import numpy as np
import pytest
import torch
from skimage import io

from models.particle_unet import load_particle_unet, load_trainable_particle_unet
from services.cli.main import main
from services.cli.train import instances_from_coco
from tests.conftest import SHARED_DATA
from tests.data.real_labels.make_labels import CROPS, load_crop

LABELS = Path(__file__).resolve().parents[1] / "data" / "real_labels"
#: two crops, cut to a 192 x 192 quarter (row, col) with several labelled particles
USED = (("nmc87_hollow", 0, 0), ("nmc87_voids", 192, 0))
SIZE = 192


@pytest.fixture(scope="module")
def crops(tmp_path_factory: pytest.TempPathFactory) -> dict[str, list]:
    """The crops as an 8-bit PNG and a 16-bit TIFF, instance labels as 16-bit PNG and TIFF."""
    if not (SHARED_DATA / "nanoct_nmc_slices").is_dir():
        pytest.skip("real nano-CT slices not found (see ../shared/data/README.md)")
    out = tmp_path_factory.mktemp("train_particles")
    by_name = {c.name: c for c in CROPS}
    images, labels, greys, instances = [], [], [], []
    for i, (name, row, col) in enumerate(USED):
        box = np.s_[row : row + SIZE, col : col + SIZE]
        grey = load_crop(by_name[name], SHARED_DATA)[box]
        inst = io.imread(LABELS / f"{name}_instances.png")[box].astype(np.uint16)
        assert np.unique(inst).size > 3, f"{name}: the test needs several particles"
        if i == 0:  # 8-bit PNG image, 16-bit TIFF labels (Fiji label image)
            image, label = out / f"{name}.png", out / f"{name}_labels.tif"
            io.imsave(image, grey, check_contrast=False)
        else:  # 16-bit TIFF image, 16-bit PNG labels
            image, label = out / f"{name}.tif", out / f"{name}_labels.png"
            io.imsave(image, grey.astype(np.uint16) * 257, check_contrast=False)
        io.imsave(label, inst, check_contrast=False)
        images.append(image)
        labels.append(label)
        greys.append(grey)
        instances.append(inst)
    return {"images": images, "labels": labels, "dir": [out], "grey": greys, "inst": instances}


def test_train_particles_end_to_end_then_particles_analyze(crops, tmp_path: Path) -> None:
    out = tmp_path / "tuned.pt"
    argv = ["train", "particles", "--images", *map(str, crops["images"])]
    argv += ["--labels", *map(str, crops["labels"]), "--pair", "stem"]
    argv += ["--minutes", "0.05", "--tile", "64", "-o", str(out)]
    assert main(argv) == 0

    report = json.loads(out.with_suffix(".json").read_text())
    held = report["held_out"]
    # 2 x (3 x 3) tiles of 64 px, about a quarter held out, tiles with particles among them
    assert held["n_tiles"] + report["n_train_tiles"] == 18
    assert 3 <= held["n_tiles"] <= 6
    assert held["n_particles"] > 0
    for which in ("initial", "finetuned"):
        for key in ("f1", "precision", "recall", "split_rate", "foreground_iou"):
            assert 0.0 <= held[which][key] <= 1.0
        assert held[which]["n_true"] > 0
    # keep-best on the instance F1: never worse than the start, and the weights say so
    assert held["finetuned"]["f1"] >= held["initial"]["f1"]
    assert report["steps"] >= 1
    tuned = torch.load(out, map_location="cpu", weights_only=True)
    shipped = load_trainable_particle_unet(None).state_dict()
    same = all(torch.equal(tuned["state_dict"][k], v) for k, v in shipped.items())
    if report["improved"]:
        assert held["finetuned"]["f1"] > held["initial"]["f1"]
        assert not same
    else:
        assert same
    assert tuned["metadata"]["finetune"]["held_out"] == held
    load_particle_unet(out, device=torch.device("cpu"))  # the loader of particles analyze

    volume = tmp_path / "slice.tif"
    io.imsave(volume, crops["grey"][0], check_contrast=False)
    analysed = tmp_path / "particles.h5"
    argv = ["particles", "analyze", str(volume), "--weights", str(out), "-o", str(analysed)]
    assert main(argv) == 0
    with h5py.File(analysed, "r") as h5:
        assert h5["particles"].attrs["particle_weights"] == str(out)
        assert h5["particles/labels"].shape == (1, SIZE, SIZE)
        assert h5["particles"].attrs["n_particles"] > 0


def test_train_particles_from_export_coco(crops, tmp_path: Path) -> None:
    """The COCO file and slices of ``particles export-coco`` train the network; the labels read
    back are the exported instances (renumbered)."""
    labels_h5, volume_h5, coco_dir = tmp_path / "labels.h5", tmp_path / "vol.h5", tmp_path / "c"
    with h5py.File(labels_h5, "w") as h5:
        h5["particles/labels"] = np.stack(crops["inst"]).astype(np.int32)
    with h5py.File(volume_h5, "w") as h5:
        h5["entry/data/data"] = np.stack(crops["grey"])
    assert (
        main(
            ["particles", "export-coco", str(labels_h5), "--volume", str(volume_h5)]
            + ["-o", str(coco_dir)]
        )
        == 0
    )
    slices = sorted(coco_dir.glob("slice_*.tif"))
    assert len(slices) == 2
    coco = coco_dir / "annotations.json"

    read = instances_from_coco(coco, slices)
    for got, want in zip(read, crops["inst"], strict=True):
        assert np.array_equal(got > 0, want > 0)
        pairs = np.unique(np.stack([got[want > 0], want[want > 0]]), axis=1)
        assert pairs.shape[1] == np.unique(want[want > 0]).size  # one-to-one
        assert np.unique(pairs[0]).size == pairs.shape[1]

    out = tmp_path / "coco.pt"
    argv = ["train", "particles", "--images", *map(str, slices), "--coco", str(coco)]
    assert main([*argv, "--minutes", "0.02", "--tile", "96", "-o", str(out)]) == 0
    report = json.loads(out.with_suffix(".json").read_text())
    assert report["pairing"] == "coco file name"
    assert report["held_out"]["n_tiles"] + report["n_train_tiles"] == 8


def test_coco_polygons_are_read(tmp_path: Path) -> None:
    coco = {
        "images": [{"id": 7, "file_name": "dir/a.png", "height": 20, "width": 30}],
        "annotations": [
            # a 10 x 6 rectangle (x 2..12, y 4..10) and a triangle drawn over its corner
            {"id": 1, "image_id": 7, "segmentation": [[2, 4, 12, 4, 12, 10, 2, 10]]},
            {"id": 2, "image_id": 7, "segmentation": [[20, 2, 28, 2, 20, 18]]},
        ],
        "categories": [{"id": 1, "name": "particle"}],
    }
    path = tmp_path / "c.json"
    path.write_text(json.dumps(coco))
    (labels,) = instances_from_coco(path, [tmp_path / "a.png"])
    assert labels.shape == (20, 30)
    assert set(np.unique(labels).tolist()) == {0, 1, 2}
    ys, xs = np.nonzero(labels == 1)
    assert (ys.min(), ys.max(), xs.min(), xs.max()) == (4, 10, 2, 12)
    assert labels[3, 21] == 2 and labels[17, 27] == 0


@pytest.mark.parametrize("case", ["count", "shape", "coco", "colour"])
def test_bad_particle_inputs_exit_2_with_a_clear_error(crops, tmp_path, caplog, case) -> None:
    images, labels = crops["images"], crops["labels"]
    if case == "count":
        argv = ["--images", *map(str, images), "--labels", str(labels[0])]
        expected = "2 images but 1 label masks"
    elif case == "shape":
        small = tmp_path / "small.png"
        io.imsave(small, np.arange(3000, dtype=np.uint16).reshape(50, 60), check_contrast=False)
        argv = ["--images", str(images[0]), "--labels", str(small)]
        expected = f"is ({SIZE}, {SIZE}) but its labels {small} are (50, 60)"
    elif case == "coco":
        coco = tmp_path / "c.json"
        coco.write_text(json.dumps({"images": [], "annotations": [], "categories": []}))
        argv = ["--images", str(images[0]), "--coco", str(coco)]
        expected = f"has no image entry for ['{images[0]}']"
    else:
        colour = tmp_path / "colour.png"
        io.imsave(colour, np.zeros((SIZE, SIZE, 3), np.uint8), check_contrast=False)
        argv = ["--images", str(images[0]), "--labels", str(colour)]
        expected = "a colour label render cannot be read as instances"
    out = tmp_path / "x.pt"
    with caplog.at_level(logging.ERROR):
        assert main(["train", "particles", *argv, "--minutes", "0.01", "-o", str(out)]) == 2
    assert expected in caplog.text
    assert not out.exists()
