"""Parameters of the XANES particle-tracking pipeline (pydantic models, unknown keys rejected)."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, PositiveFloat, PositiveInt, model_validator

__all__ = [
    "PrepareParams",
    "DetectParams",
    "MatchParams",
    "TrackParams",
    "SpectraParams",
    "XanesParams",
]


class _Params(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class PrepareParams(_Params):
    """Flat/dark correction and background removal."""

    min_counts: PositiveFloat = Field(default=1.0, description="floor of dark-subtracted counts")
    background_scale: float = Field(
        default=0.3,
        gt=0,
        description="background length scale; <= 1: fraction of the frame size, else px",
    )
    background_percentile: float = Field(default=10.0, ge=0, le=50)


class DetectParams(_Params):
    """Particle detection in frame 0: classical (threshold + watershed) or learned (U-Net).

    Both detectors share the size filter, the border rule and the watershed split of touching
    particles; the threshold fields are the classical detector's; ``probability_threshold``
    and ``average_transforms`` the learned one's (its network is passed as ``model``)
    (:func:`pipelines.xanes.detect_learned.detect_particles_learned`).
    """

    method: Literal["classical", "learned"] = Field(
        default="classical",
        description="classical: threshold + watershed; learned: U-Net (models.txm_particle_net)",
    )
    probability_threshold: float = Field(
        default=0.5, gt=0, lt=1, description="learned: particle probability threshold"
    )
    average_transforms: bool = Field(
        default=True, description="learned: average the network over 8 rotations and flips"
    )
    smooth_sigma_px: float = Field(
        default=3.0,
        ge=0,
        description=(
            "smoothing sd before the threshold (px); 3 px bridges the zone-plate rings that cut "
            "faint particles into stripes; the mask is then eroded by sd - 1.5 px"
        ),
    )
    threshold_factor: float = Field(
        default=0.5, gt=0, description="multiplies the Otsu threshold of the background-free OD"
    )
    min_noise_sigmas: float = Field(
        default=3.0, ge=0, description="threshold at least this many noise sd"
    )
    faint_noise_sigmas: float | None = Field(
        default=None,
        gt=0,
        description=(
            "objects dimmer than the frame's (Otsu) threshold but above this many noise sd are "
            "kept where they are above threshold_factor of the highest value within "
            "local_contrast_px (a small or faint particle beside bright ones); None: the "
            "frame's threshold only (default: off; on hold-out seeds 5200-5205 it found no more "
            "particles, see README)"
        ),
    )
    own_peak_noise_sigmas: float | None = Field(
        default=None,
        gt=0,
        description=(
            "per-object threshold (noise sd of the smoothed background, beam structure "
            "included): candidate objects are the smoothed OD above this many sd; each "
            "intensity maximum that stands own_peak_min_dip_fraction of its height (and "
            "min_noise_sigmas) above the saddle to a brighter one is an object of its own, cut "
            "at threshold_factor of its OWN peak over the background (its half-maximum "
            "outline), not of the frame's Otsu level; added to the frame's threshold mask. "
            "None: the frame's threshold only. The tracker uses it at frame 0 only (default: "
            "off; at 4 it finds 71 of 89 hold-out diagnosis particles against 61, the same on "
            "fresh seeds, and changes the SSRL touching cluster's frame-0 label, see README)"
        ),
    )
    own_peak_min_dip_fraction: float = Field(
        default=0.25,
        gt=0,
        lt=1,
        description=(
            "own_peak_noise_sigmas: a maximum whose dip to the saddle toward a brighter one is "
            "below this fraction of its height over the background is a bump on that one "
            "(a bright particle's blurred rim, texture) and is cut at the brighter one's level"
        ),
    )
    local_contrast_px: PositiveFloat = Field(
        default=8.0,
        description=(
            "faint objects: reach of the local maximum (px); about the radius of the smallest "
            "particle sought (15 px across)"
        ),
    )
    min_area_fraction: float = Field(
        default=0.0005,
        ge=0,
        lt=1,
        description="objects smaller than this fraction of the frame are dropped",
    )
    learned_min_area_fraction: float = Field(
        default=0.0005,
        ge=0,
        lt=1,
        description=(
            "learned: objects smaller than this fraction of the frame are dropped (0.05 %, as "
            "the classical detector: 0.2 % dropped every particle under ~26 px at 512 x 512)"
        ),
    )
    min_area_px: float = Field(
        default=100.0,
        ge=0,
        description="objects smaller than this many pixels are dropped (a 15 px particle is 177)",
    )
    min_contrast_fraction: float = Field(
        default=0.05,
        ge=0,
        le=1,
        description="objects dimmer than this fraction of the brightest are dropped",
    )
    split_touching: bool = True
    split_min_distance_fraction: float = Field(
        default=0.5,
        gt=0,
        description=(
            "watershed seeds closer than this fraction of a diameter are merged (which "
            "diameter: split_seeds)"
        ),
    )
    split_seeds: Literal["typical_spacing", "size_scaled", "small_beside_large"] = Field(
        default="typical_spacing",
        description=(
            "watershed seed spacing: typical_spacing, split_min_distance_fraction x the diameter "
            "of a disc of 0.2 % of the frame; size_scaled, that fraction x the inscribed "
            "diameter of the higher seed (a small particle touching a large one keeps its seed; "
            "a ragged faint mask is cut into more fragments); small_beside_large, the "
            "typical_spacing seeds plus those size_scaled ones that are much lower than their "
            "neighbour's (split_small_height_ratio)"
        ),
    )
    split_small_height_ratio: float = Field(
        default=0.5,
        gt=0,
        le=1,
        description=(
            "split_seeds='small_beside_large': an extra (size-scaled) seed keeps its own region "
            "only when its inscribed radius is at most this fraction of the neighbour's it "
            "touches (a small particle beside a large one, not a lobe of a ragged one)"
        ),
    )
    exclude_border: bool = Field(
        default=False,
        description="drop objects touching the frame border (else kept and flagged partial)",
    )


class MatchParams(_Params):
    """Optimal assignment of particles between frames or scans."""

    max_distance_px: PositiveFloat = Field(
        default=6.0, description="gate: farther pairs (from the prediction) never match"
    )
    ssim_weight: float = Field(default=1.0, ge=0, description="cost weight of (1 - SSIM)")
    max_area_ratio: float = Field(default=2.5, gt=1, description="gate on the ratio of areas")


class TrackParams(_Params):
    """Per-frame tracking of the reference particles."""

    pad_fraction: float = Field(
        default=0.04, ge=0, description="ROI/support padding as a fraction of particle diameter"
    )
    search_px: PositiveInt = Field(
        default=8, description="search margin around the predicted position"
    )
    roi_margin_px: PositiveInt = Field(
        default=6, description="margin around a particle's bounding box"
    )
    refine_method: Literal["gradient", "correlation"] = Field(
        default="gradient", description="sub-pixel refinement of the moment estimate"
    )
    registration: Literal["edge", "silhouette"] = Field(
        default="edge",
        description=(
            "edge: Gauss-Newton on the normalised gradient magnitude of the particle's outline "
            "(contrast-invariant, frame border masked); silhouette: moments + soft-mask "
            "refinement (the previous method)"
        ),
    )
    edge_frame_px: PositiveInt = Field(
        default=512,
        description=(
            "edge: frames are binned by round(min(H, W) / this) for the edge images (1024 px "
            "frames by 2: same particle size in pixels as at 512, a quarter of the cost)"
        ),
    )
    edge_sigma_px: PositiveFloat = Field(
        default=1.5, description="edge: smallest smoothing sd of the edge images (px)"
    )
    edge_sigma_fraction: float = Field(
        default=0.03, ge=0, description="edge: smoothing sd as a fraction of the diameter"
    )
    edge_sigma_max_px: PositiveFloat = Field(
        default=4.0, description="edge: largest smoothing sd of the edge images (px)"
    )
    edge_band_px: int = Field(
        default=0,
        ge=0,
        description="edge: use only the band this wide inside the outline (0: whole footprint)",
    )
    min_edge_ncc: float = Field(
        default=0.5, ge=-1, le=1, description="edge: lower normalised correlation = not found"
    )
    template_update_ratio: float = Field(
        default=1.5, gt=1, description="edge: new template when the outline is this much stronger"
    )
    redetect_contrast_ratio: float = Field(
        default=1.3,
        gt=1,
        description=(
            "edge: detect again when the frame's contrast reaches this times the best so far; "
            "particles not tracked yet join with this frame as their reference"
        ),
    )
    retemplate_iou: float = Field(
        default=0.6,
        ge=0,
        le=1,
        description=(
            "edge: a re-detected object covering one tracked particle whose frame-0 footprint "
            "it overlaps by less IoU than this gives that particle a new outline template"
        ),
    )
    max_redetections: int = Field(default=4, ge=0, description="edge: at most this many")
    redetect_late_frames: PositiveInt | None = Field(
        default=8,
        description=(
            "edge: one more re-detection this many frames after the last one while the "
            "contrast holds (redetect_hold_ratio): particles whose own edge comes later are "
            "found (one only: a re-detection of a 1024 px frame costs about 0.5 s); None: "
            "only on a contrast rise"
        ),
    )
    redetect_hold_ratio: float = Field(
        default=0.8, gt=0, le=1, description="edge: see redetect_late_frames"
    )
    post_edge_template: Literal["last", "mean"] = Field(
        default="mean",
        description=(
            "edge: the post-edge pass's template: the outline of the particle's last registered "
            "frame, or the mean of its clear outlines (>= 0.6 of the strongest) aligned on the "
            "particle, which blurs a pattern that stays in the detector frame by the drift"
        ),
    )
    post_edge_anchor: Literal["frame0", "faint_frames"] = Field(
        default="faint_frames",
        description=(
            "edge: the post-edge pass places each particle's frame 0 by its frame-0 "
            "registration alone, or by the median over its faint frames of their registration "
            "minus the frame's drift (median of the particles): one noisy faint frame's error "
            "no longer stays in every frame of the particle; a particle whose frame 0 does not "
            "register is then placed by its clear frames minus the drift (when they vary by at "
            "most post_edge_rigid_px about it)"
        ),
    )
    post_edge_support: Literal["live", "outline"] = Field(
        default="outline",
        description=(
            "edge: the support the post-edge pass registers a whole particle on: the live one "
            "(around its frame-0 mask, which lies inside a faint particle's outline), or its "
            "clear outline: the particle re-segmented on the mean of its clear frames aligned "
            "on it (closer to its own mask than to a neighbour's), grown by "
            "post_edge_outline_grow_px into the background only; border-cut particles keep "
            "the live support"
        ),
    )
    post_edge_outline_level: float = Field(
        default=0.3,
        gt=0,
        lt=1,
        description=(
            "edge: outline support: the particle is where the mean clear OD is above the "
            "background by this fraction of its contrast"
        ),
    )
    post_edge_outline_grow_px: int = Field(
        default=4,
        ge=0,
        description="edge: outline support: growth of the re-segmented particle (px)",
    )
    post_edge_partial: bool = Field(
        default=True,
        description=(
            "edge: the post-edge pass also re-registers particles cut by the border (then, as "
            "live, one farther than max_partial_deviation_px from the global shift is NaN)"
        ),
    )
    post_edge_rigid_px: PositiveFloat = Field(
        default=0.5,
        description=(
            "edge: faint_frames anchor only when the particles move with the drift: their "
            "offsets from it on their clear frames vary by at most this (RMS, median over "
            "the particles); else frame 0"
        ),
    )
    redetect_split_refused: bool = Field(
        default=True,
        description=(
            "edge: a re-detected object refused for overlapping tracked particles is segmented "
            "again with size-scaled watershed seeds (detect.split_seeds); a region of it at most "
            "10 % on tracked particles joins (an untracked particle touching a tracked one)"
        ),
    )
    redetect_by_both_overlaps: bool = Field(
        default=True,
        description=(
            "edge: a re-detected object overlapping tracked particles by more than 10 % of itself "
            "is classified by the overlap as a fraction of it and of each tracked footprint: "
            "holding most of 2+ tracked particles, they are fragments (each lost one gets its "
            "outline); mostly on free pixels, it joins; False: it only ever re-templates"
        ),
    )
    absorb_fragment_fraction: float | None = Field(
        default=0.1,
        gt=0,
        le=1,
        description=(
            "edge: a re-detected object holding most of 2+ tracked particles that the watershed "
            "cut from one frame-0 component: the largest stays, each other one under this "
            "fraction of the object's area is a fragment of it, dropped at finalize (NaN, no "
            "label); None: kept"
        ),
    )
    reacquire_lost_frames: PositiveInt | None = Field(
        default=3,
        description=(
            "edge: a tracked particle not registered in a re-detection frame nor in the frames "
            "before it, this many in all, gets a new outline template from the re-detected "
            "object covering it (whatever its IoU), anchored at the frame's global shift plus "
            "its usual offset: a particle whose faint frame-0 outline stopped matching is "
            "re-acquired with its own new reference; None: never"
        ),
    )
    post_edge_backfill: bool = Field(
        default=True,
        description=(
            "edge: the post-edge pass also registers a particle in the frames it was lost in "
            "(predicted by the frame's global shift plus its usual offset; the same correlation "
            "and jump gates), so a particle re-acquired later gets its earlier frames back"
        ),
    )
    static_refine: bool = Field(
        default=False,
        description=(
            "edge: at finalize, refine every particle's shifts with the pattern that stays still "
            "in the detector frame fitted out (:mod:`pipelines.xanes.static_fit`; keeps the "
            "scan's binned OD frames in memory); the live per-frame results are unchanged"
        ),
    )
    post_edge_pass: Literal["auto", "on", "off"] = Field(
        default="auto",
        description=(
            "edge: at finalize, register every frame of each whole particle again against its "
            "outline in its last registered frame (the clearest, past the absorption edge) and "
            "re-anchor the shifts at frame 0 (:mod:`pipelines.xanes.post_edge`). auto: only "
            "when the background stays still in the detector frame while the sample drifts "
            "(zone-plate rings that pull faint particles towards zero shift); keeps the scan's "
            "binned OD frames in memory (float16); the live per-frame results are unchanged"
        ),
    )
    reanchor_renewal: Literal["auto", "on", "off"] = Field(
        default="auto",
        description=(
            "edge, live: when a whole particle's outline template is renewed (the outline got "
            "clearer past the edge), place the new template by registering frame 0 against it "
            "instead of by the shift just measured against the old one (a faint particle under "
            "still rings is pulled towards zero shift, and that error would stay). auto: once "
            "the background is seen to stay still in the detector frame (as post_edge_pass)"
        ),
    )
    max_partial_deviation_px: PositiveFloat | None = Field(
        default=2.0,
        description=(
            "a particle cut by the frame border is not found (NaN) in a frame where its shift "
            "is farther than this from the global shift of at least 3 whole particles (its "
            "outline is incomplete; such a departure is a registration held by the border or "
            "the rings, not deformation); None: never"
        ),
    )
    partial_shift: Literal["own", "drift_when_rigid"] = Field(
        default="drift_when_rigid",
        description=(
            "a border-cut particle's shift at finalize: its own registration (own), or, when "
            "the whole particles move rigidly (their offsets from the global shift vary by at "
            "most post_edge_rigid_px), the global shift of each frame with >= 3 whole "
            "particles where it was registered (consensus.partials_from_drift; its outline "
            "changes as it drifts across the border and biases its own registration)"
        ),
    )
    drop_still_particles: bool = Field(
        default=True,
        description=(
            "at finalize, a tracked object that stays in the detector frame while the sample "
            "drifts (median distance from 0 at most half that from the global shift over the "
            "frames drifted post_edge_min_drift_px; consensus.still_particles) is not part of "
            "the sample: its shifts are NaN and its label is removed"
        ),
    )
    max_whole_deviation_px: PositiveFloat | None = Field(
        default=2.0,
        description=(
            "at finalize, when the whole particles move rigidly (their offsets from the global "
            "shift vary by at most post_edge_rigid_px), a whole particle farther than this "
            "from the global shift of a frame with >= 3 whole particles is NaN there (in a "
            "rigid sample such a departure is a registration gone wrong, e.g. a template "
            "re-anchored at the wrong place; consensus.far_wholes); None: never"
        ),
    )
    smooth_deviation_frames: PositiveInt | None = Field(
        default=5,
        description=(
            "at finalize, when the whole particles move rigidly (as max_whole_deviation_px), "
            "each whole particle's deviation from the global shift is replaced by its running "
            "median over this many frames on either side (its per-frame registration on faint "
            "frames is noisier than its slow deformation; consensus.smoothed_deviations, "
            "flagged in XanesResult.smoothed); None: never"
        ),
    )
    post_edge_static_corr: float = Field(
        default=0.4,
        ge=-1,
        le=1,
        description=(
            "edge: auto post-edge pass when the band-passed background of frame 0 and of the "
            "most drifted frame correlate at least this much where they are (detector frame) "
            "and more than where the sample took them"
        ),
    )
    post_edge_min_drift_px: PositiveFloat = Field(
        default=1.0,
        description="edge: auto post-edge pass only when the drift reached this many px",
    )
    static_refine_rounds: PositiveInt = Field(
        default=3, description="edge: alternations of the static-pattern fit and registration"
    )
    static_refine_ridge: float = Field(
        default=0.05,
        gt=0,
        description=(
            "edge: ridge on the static pattern, relative (what the drift cannot separate); "
            "> 0: without it the fit is singular at the zero frequency"
        ),
    )
    max_jump_px: PositiveFloat = Field(
        default=3.0,
        description=(
            "edge: a particle found farther than this from its predicted place (its last shift "
            "plus the frame's coarse step) is not found in that frame (a neighbour's outline)"
        ),
    )
    min_particles_trusted: PositiveInt = Field(
        default=1, description="particles needed for a trusted global shift (drift feedback)"
    )
    max_spread_px: PositiveFloat | None = Field(
        default=None,
        description=(
            "particle-shift spread above which the global shift is untrusted; None: no gate "
            "(a deforming electrode spreads the particle shifts by design)"
        ),
    )
    refine_iterations: PositiveInt = Field(default=2, description="Gauss-Newton iterations")
    support_px: PositiveInt = Field(
        default=4, description="refinement support: reference footprint dilated by this"
    )
    upsample: PositiveInt = Field(
        default=1, description="sub-pixel DFT factor of the correlation; 1 = parabolic peak fit"
    )
    smooth_fraction: float = Field(
        default=0.01, ge=0, description="smoothing sd as a fraction of the particle diameter"
    )
    smooth_sigma_px: float = Field(
        default=1.0, ge=0, description="noise smoothing before correlation"
    )
    threshold_fraction: float = Field(
        default=0.3,
        gt=0,
        lt=1,
        description="particle mask threshold between background and particle level",
    )
    whitening: float = Field(
        default=0.0,
        ge=0,
        le=1,
        description="spectral whitening of the correlation (1 = phase, 0 = cross)",
    )
    max_refine_disagreement_px: PositiveFloat = Field(
        default=3.0,
        description="phase correlation farther than this from the moment estimate is rejected",
    )
    refine_weight: float = Field(
        default=1.0, ge=0, le=1, description="weight of the correlation vs the moment estimate"
    )
    coarse_binning: PositiveInt = Field(
        default=4, description="binning of the whole-frame coarse shift"
    )
    workers: PositiveInt = Field(
        default=1,
        description=(
            "threads over particles per frame; the per-particle work is many small numpy "
            "calls that hold the GIL: 2 threads measured slower than 1 on a 2-core VM"
        ),
    )
    template_update: bool = Field(
        default=False, description="template: running mean of aligned silhouettes, else frame 0"
    )


class SpectraParams(_Params):
    """Normalisation and edge analysis of XANES spectra."""

    pre_edge_ev: tuple[float, float] = (8249.0, 8320.0)
    post_edge_ev: tuple[float, float] = (8380.0, 8500.0)
    pre_edge_order: int = Field(default=0, ge=0, le=1)
    post_edge_order: int = Field(default=0, ge=0, le=1)
    edge_search_ev: tuple[float, float] = (8325.0, 8370.0)
    min_edge_jump: float = Field(
        default=0.05, ge=0, description="pixels with a smaller OD jump are masked"
    )
    min_jump_to_noise: float = Field(
        default=3.0, ge=0, description="jump / pre-edge sd below this is masked"
    )

    @model_validator(mode="after")
    def _ranges_ordered(self) -> SpectraParams:
        for name in ("pre_edge_ev", "post_edge_ev", "edge_search_ev"):
            lo, hi = getattr(self, name)
            if not lo < hi:
                raise ValueError(f"{name} must be (low, high) with low < high, got {(lo, hi)}")
        if not self.pre_edge_ev[1] <= self.post_edge_ev[0]:
            raise ValueError("pre_edge_ev must end before post_edge_ev starts")
        return self


class XanesParams(_Params):
    """All parameters of the XANES alignment pipeline."""

    prepare: PrepareParams = PrepareParams()
    detect: DetectParams = DetectParams()
    match: MatchParams = MatchParams()
    track: TrackParams = TrackParams()
    spectra: SpectraParams = SpectraParams()
    keep_aligned_stacks: bool = Field(
        default=True, description="keep aligned per-particle ROI stacks"
    )
