"""XANES chemistry in the live analysis (issue 16, part 4): a run's start document names
reference spectra (``lcf_references``: a file under the data dir, or inline
``[[E, mu], ...]``) and the analysis consumer writes LCF fractions, the R-factor map, PCA +
k-means clusters and, across an operando series, each particle's state-of-charge trajectory.

The simulated particles (``synthetic.txm``) each have their own edge energy between
8333 and 8350 eV, and charge between the scans (the edge rises by up to 3 eV). The references
are the simulation's own edge model at both ends of that range, so the fitted "charged"
fraction must rank the particles like their true edge energies and must rise from scan 0 to
scan 1 for every particle.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from bluesky import RunEngine

from bluesky_plans.devices import SimTXM
from bluesky_plans.plans import operando_xanes_plan, xanes_scan_plan
from pipelines.xanes.params import SpectraParams
from services.analysis.registry import default_registry
from services.analysis.router import AnalysisRunRouter
from services.analysis.xanes_chemistry import ChemistryRequestError, chemistry_request
from services.core.metrics import Metrics
from services.runs.routing import RunDispatcher
from services.runtime.consumer import Consumer
from services.tiled.records import Container, Metadata
from synthetic.txm import _CROSSING_OFFSET, TxmScene, default_energies, normalised_edge_model
from tests.conftest import wait_until
from tests.services.test_ingest_e2e import live_publisher, start_consumers

N = 12
GRID = np.arange(8240.0, 8520.0, 1.0)
LOW_EV, HIGH_EV = 8333.0, 8350.0  # the simulation's range of edge energies (50 % crossing)


def reference(edge_ev: float, offset: float = 0.0, scale: float = 1.0) -> np.ndarray:
    """``[[E, mu], ...]`` of the simulation's edge model with its 50 % crossing at ``edge_ev``
    (raw: an offset and a scale, which the normalisation removes)."""
    mu = normalised_edge_model(GRID, np.array(edge_ev - _CROSSING_OFFSET))
    return np.c_[GRID, offset + scale * mu]


def write_reference(data_dir: Path, name: str, rows: np.ndarray) -> str:
    (data_dir / "references").mkdir(parents=True, exist_ok=True)
    np.savetxt(data_dir / "references" / name, rows, header="energy_eV absorbance")
    return f"references/{name}"


def test_start_document_options_are_checked(tmp_path: Path) -> None:
    params = SpectraParams()
    inline = reference(HIGH_EV).tolist()
    good = write_reference(tmp_path, "low.txt", reference(LOW_EV, 0.3, 0.8))
    (tmp_path.parent / "outside.txt").write_text("8300 1\n")

    def request(**start):
        return chemistry_request(start, references_dir=tmp_path, spectra_params=params)

    assert request() is None
    got = request(lcf_references={"discharged": good, "charged": inline})
    assert [r.name for r in got.references] == ["discharged", "charged"]
    assert [r.source for r in got.references] == [good, "inline"]
    assert got.n_clusters == 3 and not got.sum_to_one  # clusters by default with references
    # the file's raw spectrum (offset 0.3, scale 0.8) is normalised like the inline one
    low = got.references[0]
    assert low.normalised[low.energies < 8300].mean() == pytest.approx(0.0, abs=0.01)
    assert request(xanes_clusters=4).n_clusters == 4
    bad = {
        "lcf_references": [
            ({"a": good}, "2 to 8 references"),
            ([good, good], "expected a mapping"),
            ({"a": good, "b": "references/none.txt"}, "no file 'references/none.txt'"),
            ({"a": good, "b": "../outside.txt"}, "not under the data dir"),
            ({"a": good, "b": "/etc/hostname"}, "not under the data dir"),
            ({"a": good, "b": [[8300, 1.0]] * 3}, "at least 5"),
            ({"a": good, "b": [[8300, "x"]] * 6}, "row 0: expected [energy eV, absorbance]"),
            ({"a": good, "b": (reference(HIGH_EV) / [1000, 1]).tolist()}, "convert keV"),
            ({"a": good, "b": reference(HIGH_EV)[GRID < 8330].tolist()}, "cannot be normalised"),
            ({"a": good, "b": np.c_[GRID, np.ones_like(GRID)].tolist()}, "no edge jump"),
            ({"a": good, "b c": inline}, "reference name 'b c'"),
        ],
        "xanes_clusters": [(1, "2 to 16"), (99, "2 to 16"), ("3", "expected an integer")],
    }
    for option, cases in bad.items():
        for value, message in cases:
            start = {option: value}
            if option == "xanes_clusters":
                start["lcf_references"] = {"a": good, "b": inline}
            with pytest.raises(ChemistryRequestError) as info:
                request(**start)
            assert info.value.option == option
            assert message in str(info.value), (value, str(info.value))
            # the reason names files as given, never the data dir's own (absolute) path: it
            # reaches the run's metadata and the live page
            assert str(tmp_path.resolve()) not in str(info.value), str(info.value)
    with pytest.raises(ChemistryRequestError, match="no data dir"):
        chemistry_request(
            {"lcf_references": {"a": good, "b": inline}}, references_dir=None, spectra_params=params
        )


class RecordingSpool:
    def __init__(self) -> None:
        self.records: list[object] = []

    def put(self, record: object) -> None:
        self.records.append(record)


def test_refused_references_leave_the_analysis_running_and_say_why(tmp_path: Path) -> None:
    """A run naming a reference file that is not there: the XANES analysis completes, its
    metadata carries the chemistry error from the first frame on, and the refusal is counted."""
    scene = TxmScene.random(2, shape=(128, 128), n_particles=3, n_frames=8)
    txm = SimTXM(scene, tmp_path / "detector", frame_source="event", seed=2)
    docs: list[tuple[str, dict]] = []
    RE = RunEngine({})
    RE.subscribe(lambda name, doc: docs.append((name, doc)))
    md = {"lcf_references": {"pristine": "missing.csv", "charged": reference(HIGH_EV).tolist()}}
    (uid,) = RE(xanes_scan_plan(txm, default_energies(8), n_flats=2, md=md))
    spool, metrics = RecordingSpool(), Metrics("analysis")
    registry = default_registry(
        tmp_path / "figures", None, references_dir=tmp_path / "data", metrics=metrics
    )
    dispatcher = RunDispatcher(
        [lambda start: AnalysisRunRouter(start, registry.select(start), spool, metrics)], metrics
    )
    for name, doc in docs:
        dispatcher(name, doc)
    updates = [
        r.metadata
        for r in spool.records
        if isinstance(r, Container | Metadata) and tuple(r.path) == ("analysis", uid, "xanes")
    ]
    first_chemistry = next(i for i, m in enumerate(updates) if "chemistry" in m)
    assert "status" not in updates[first_chemistry] or updates[first_chemistry]["status"] != (
        "complete"
    )  # reported while the scan runs, before the end
    final: dict = {}
    for m in updates:
        final.update(m)
    assert final["status"] == "complete"
    assert final["chemistry"]["status"] == "failed"
    assert final["chemistry"]["option"] == "lcf_references"
    assert "pristine: no file 'missing.csv'" in final["chemistry"]["error"]
    # the data dir's own path is nowhere in the run's metadata (the page shows the error)
    assert str((tmp_path / "data").resolve()) not in json.dumps(final, default=str)
    assert final["chemistry"]["request"]["lcf_references"] == {
        "pristine": "missing.csv",
        "charged": f"inline ({GRID.size} rows)",
    }
    counted = metrics.start_options_rejected.labels("analysis", "lcf_references")._value.get()
    assert counted == 1


# two full scans through a real Tiled server, both consumers and the chemistry after each scan:
# about 2.5 min on an idle 2-core machine; 5 to 10 min when other jobs load it (load 19)
@pytest.mark.timeout(2000)
def test_live_lcf_clusters_and_soc_trajectory_in_tiled(consumer_settings, tiled_client):
    settings, detector = consumer_settings
    data_dir = Path(settings.data_dir)
    low_file = write_reference(data_dir, "discharged.txt", reference(LOW_EV, 0.3, 0.8))
    raw, ana = start_consumers(settings)
    pub = live_publisher(settings, (raw, ana))
    try:
        scene = TxmScene.random(5, shape=(160, 160), n_particles=4, n_scans=2, n_frames=N)
        txm = SimTXM(scene, detector, seed=3)
        RE = RunEngine({})
        RE.subscribe(pub)
        md = {
            "lcf_references": {
                "discharged": low_file,
                "charged": reference(HIGH_EV).tolist(),
            },
            "xanes_clusters": 2,
        }
        uids = RE(operando_xanes_plan(txm, default_energies(N), 2, n_flats=2, md=md))

        def status(uid):
            return tiled_client["analysis"][uid]["xanes"].metadata.get("status")

        for uid in uids:
            wait_until(lambda u=uid: status(u) in ("complete", "failed"), timeout=900)
            assert status(uid) == "complete", tiled_client["analysis"][uid]["xanes"].metadata
        per_scan = []
        for s, uid in enumerate(uids):
            node = tiled_client["analysis"][uid]["xanes"]
            chemistry = node.metadata["chemistry"]
            assert chemistry["status"] == "complete"
            assert chemistry["references"] == {"discharged": low_file, "charged": "inline"}
            labels = node["labels"].read()
            p = int(labels.max())
            fractions = node["lcf_fraction_map"].read()
            r_map = node["lcf_r_factor_map"].read()
            assert fractions.shape == (2, *labels.shape) and fractions.dtype == np.float32
            # unknown outside the particles (NaN, never 0); fitted on nearly every particle pixel
            assert np.isnan(fractions[:, labels == 0]).all() and np.isnan(r_map[labels == 0]).all()
            assert np.isfinite(fractions[1][labels > 0]).mean() > 0.95
            assert chemistry["lcf"]["fitted_pixels"] == int(np.isfinite(r_map).sum())
            table = node["lcf_particles"].read().sort_values("particle")
            assert list(table["particle"]) == list(range(1, p + 1))
            assert (table["r_factor"] < 0.2).all(), table
            # the charged fraction ranks the particles as their true mean edge energies do
            truth_edge, truth_labels = scene.truth_edge_energy(s), scene.truth_labels()
            centres = scene.truth_centres(s, 0)
            com = node["particle_com"].read()[:, 0, :]
            edge = []
            for k in range(p):
                j = int(np.argmin(np.linalg.norm(centres - com[k], axis=1)))
                edge.append(float(np.nanmean(truth_edge[truth_labels == j + 1])))
            charged = table["fraction_charged"].to_numpy()
            assert np.corrcoef(edge, charged)[0, 1] > 0.9, (edge, charged)
            # and the pixel map says the same as the per-particle fit
            for k in range(p):
                assert np.nanmean(fractions[1][labels == k + 1]) == pytest.approx(
                    charged[k], abs=0.08
                )
            clusters = node["cluster_labels"].read()
            assert (clusters[labels == 0] == -1).all()
            sizes = node["clusters"].read().sort_values("cluster")["pixels"].to_numpy()
            assert sizes.sum() == int((clusters >= 0).sum()) and (sizes > 0).all()
            assert node["cluster_spectra"].read().shape == (2, N)
            # the pixels of cluster 1 are more charged than those of cluster 0 (cluster order
            # follows the first principal score; either sign is fine, they must differ)
            by_cluster = [np.nanmean(fractions[1][clusters == c]) for c in (0, 1)]
            assert abs(by_cluster[1] - by_cluster[0]) > 0.1, by_cluster
            assert {"lcf_fractions", "clusters", "soc_trajectory"} <= set(node["figures"])
            per_scan.append((node, labels))

        # the second scan's table: every particle over both scans with the scans' time stamps
        node = tiled_client["analysis"][uids[1]]["xanes"]
        traj = node["soc_trajectory"].read()
        starts = [tiled_client["raw"][u].metadata["start"]["time"] for u in uids]
        assert sorted(set(traj["scan"])) == [0, 1]
        for s, uid in enumerate(uids):
            rows = traj[traj["scan"] == s]
            assert set(rows["run_uid"]) == {uid}
            assert rows["scan_time"].to_numpy() == pytest.approx(starts[s])
            assert rows["elapsed_s"].to_numpy() == pytest.approx(starts[s] - starts[0])
            # each scan's statistics are those of its own maps, particle by particle
            scan_node, labels = per_scan[s]
            edge_map = scan_node["edge_energy"].read()
            fraction_map = scan_node["lcf_fraction_map"].read()[1]
            for _, row in rows[rows["found"]].iterrows():
                mine = labels == row["label"]
                assert row["edge_energy_eV_mean"] == pytest.approx(np.nanmean(edge_map[mine]))
                assert row["fraction_charged_mean"] == pytest.approx(
                    np.nanmean(fraction_map[mine]), rel=1e-5
                )
        first_scan = traj[traj["scan"] == 0].set_index("particle")
        second_scan = traj[traj["scan"] == 1].set_index("particle")
        both = first_scan.index[first_scan["found"] & second_scan.loc[first_scan.index, "found"]]
        assert len(both) >= 3
        # the cell charges between the scans: every particle's charged fraction rises
        rise = (
            second_scan.loc[both, "fraction_charged_mean"]
            - first_scan.loc[both, "fraction_charged_mean"]
        )
        assert (rise > 0.02).all(), rise
        assert node.metadata["soc_trajectory_maps"] == [
            "edge_energy_eV",
            "fraction_charged",
            "fraction_discharged",
        ]
    finally:
        pub.close()
        for consumer in (raw, ana):
            Consumer.stop(consumer)
