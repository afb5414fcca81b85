"""ESTIMATED energy and emissions from measured time: joules = busy seconds x watts.

A CPU does not report its power draw to a notebook, so every figure here is an estimate from
stated assumptions (:data:`ENERGY_ASSUMPTIONS`, each one a parameter): good for comparing
variants on one machine, never a measurement.

Example:
    >>> from labkit import measure
    >>> measure.footprint(3600.0, watts=10.0, grid_g_per_kwh=500.0)["co2_g"]
    5.0
"""

from __future__ import annotations

from types import MappingProxyType

from labkit.utils import check_int, check_number

__all__ = ["ENERGY_ASSUMPTIONS", "energy_estimate_j", "footprint", "inference_footprint"]

ENERGY_ASSUMPTIONS = MappingProxyType({"watts": 15.0, "grid_g_per_kwh": 400.0, "pue": 1.0})
"""The default assumptions of :func:`footprint`: a laptop CPU package drawing 15 W whenever it
computes, electricity at 400 g CO2e per kWh (a mid-range grid mix), no data-centre overhead
(PUE 1)."""


def footprint(
    cpu_seconds: float,
    *,
    watts: float = ENERGY_ASSUMPTIONS["watts"],
    grid_g_per_kwh: float = ENERGY_ASSUMPTIONS["grid_g_per_kwh"],
    pue: float = ENERGY_ASSUMPTIONS["pue"],
) -> dict[str, float]:
    """ESTIMATED energy and emissions of ``cpu_seconds`` of computing.

    ``energy_j = seconds x watts x pue`` (:func:`energy_estimate_j`: constant power while busy, none
    when idle), ``energy_wh = energy_j / 3600``, ``co2_g = energy_j / 3.6e6 x grid_g_per_kwh``. A
    comparison of variants on one machine, never a measurement.
    Example: ``footprint(12.0)["co2_g"]``
    """
    seconds = check_number("cpu_seconds", cpu_seconds, minimum=0.0)
    grid = check_number("grid_g_per_kwh", grid_g_per_kwh, minimum=0.0)
    pue = check_number("pue", pue, minimum=1.0)
    energy_j = energy_estimate_j(seconds * 1000.0, watts) * pue
    return {
        "cpu_seconds": seconds,
        "energy_j": energy_j,
        "energy_wh": energy_j / 3600.0,
        "co2_g": energy_j / 3.6e6 * grid,
    }


def inference_footprint(
    latency_ms: float, batch_size: int = 1, inferences: int = 1000, **assumptions: float
) -> dict[str, float]:
    """:func:`footprint` of ``inferences`` predictions at a measured ``latency_ms`` per batch.

    Batches are of ``batch_size``: ``latency_ms / 1000 x inferences / batch_size`` busy seconds.
    Example: ``inference_footprint(2.5, batch_size=256)["energy_j"]  # per 1,000 predictions``
    """
    latency_ms = check_number("latency_ms", latency_ms, minimum=0.0)
    batch_size = check_int("batch_size", batch_size, minimum=1)
    inferences = check_int("inferences", inferences, minimum=1)
    busy = latency_ms / 1000.0 * inferences / batch_size
    return {**footprint(busy, **assumptions), "inferences": inferences}


def energy_estimate_j(latency_ms: float, watts: float = 15.0) -> float:
    """ESTIMATED energy per call in joules: ``latency_ms / 1000 × watts``.

    Assumes the device draws a constant ``watts`` for the whole call (15 W ≈ a laptop CPU package
    under load) and nothing when idle. Real power depends on the chip, the clock and the work; use
    this to compare variants on one machine, never as a measurement.

    Example: ``energy_estimate_j(2.0)  # 0.03 J``
    """
    latency_ms = check_number("latency_ms", latency_ms, minimum=0)
    return latency_ms / 1000.0 * check_number("watts", watts, minimum=0)
