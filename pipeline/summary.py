"""What a run reports: a typed summary and the one line a run ends with."""
from __future__ import annotations

from typing import Any

from pydantic import BaseModel, ConfigDict


class RunSummary(BaseModel):
    """The summary of one pair's run (``changemap run --json`` prints it)."""

    model_config = ConfigDict(frozen=True)

    output: str
    tiles: int
    megapixels: float
    seconds: float
    megapixels_per_second: float
    threshold: float
    threshold_method: str = "weights"  # given (--threshold N), weights (the weights' own), otsu (the scene's)
    workers: int = 1
    device: str
    ray_cluster: str = ""
    warped_after: bool = False
    workdir: str | None = None
    statistics: str = "window"
    statistics_passes: int = 0
    tiles_predicted: int = 0  # tiles the model ran on in this attempt
    tiles_reused: int = 0  # tiles an earlier, interrupted attempt had finished
    tiles_retried: int = 0  # tiles predicted again after a lost model actor
    chunks_decoded: int = 0
    chunks_reused: int = 0
    # Seconds of the model actors' phases (windows, lane wait, to device, forward, results; warm-up on GPUs),
    # summed over actors and lanes: where a GPU's time goes (pipeline.engine.tile_engine.PhaseClock)
    model_seconds: dict[str, float] = {}
    # Set by ``changemap run``: seconds before the flow (the process up to the checks, the checks, then
    # Ray, the model actors and Prefect's API, the last started at the same time as the other two)
    startup_seconds: dict[str, float] = {}
    change: dict[str, Any] = {}  # areas, changed %, regions, size classes (pipeline.products.mapstats)
    # A scene-fitted model's fit (models.fitting.FitReport): method, samples, iterations, correlations,
    # dropped bands, threshold, and the fit step's seconds
    fit: dict[str, Any] = {}
    outputs: dict[str, str] = {}  # kind (data, polygons, statistics, thumbnail, stac) -> path or URL

    def __getitem__(self, key: str) -> Any:
        """Dict-style access (``summary["tiles"]``), as flows returned dicts before."""
        return getattr(self, key)

    def line(self) -> str:
        """The one-line summary a run ends with."""
        return (f"changemap: {self.tiles} tiles, {self.megapixels:.2f} MP in {self.seconds:.1f} s "
                f"({self.megapixels_per_second:.3f} MP/s) -> {self.output}")

    def lines(self) -> list[str]:
        """What the command prints at the end: how much changed, the other outputs, the summary line."""
        out = []
        c = self.change
        if c:
            regions = f", {c['regions']} regions" if c.get("regions") is not None else ""
            out.append(f"changed: {c['changed_area_km2']:.6f} km² = {c['changed_percent_of_valid']:.2f} % of "
                       f"{c['valid_area_km2']:.6f} km² valid{regions} (threshold {c['threshold']:.2f})")
        out += [f"{kind}: {url}" for kind, url in self.outputs.items() if kind != "data"]
        if self.tiles_reused or self.chunks_reused:
            out.append(f"resumed: {self.tiles_reused} tiles and {self.chunks_reused} chunks reused from an earlier "
                       f"attempt; {self.tiles_predicted} tiles predicted now")
        if self.tiles_retried:
            out.append(f"warning: {self.tiles_retried} tile(s) were predicted again after a lost model actor")
        return out + [self.line()]
