"""Observers: the range a quantized input calibrates to (min-max, percentile or least MSE)."""

from __future__ import annotations

import torch
from torch import Tensor

from labkit.quant.affine import fake_quantize_affine, qparams_from_range
from labkit.utils import check_choice, check_int

__all__ = ["CALIBRATIONS", "Observer"]
CALIBRATIONS = ("minmax", "percentile", "mse")


# --------------------------------------------------------------------------- observers


class Observer:
    """Collects the range of the tensors it sees; turns it into (scale, zero_point).

    ``method``: "minmax" (the extreme values), "percentile" (the ``percentile`` / ``100 -
    percentile`` quantiles: rare outliers get clipped), "mse" (the clipping range, among ``grid``
    shrunk copies of the min-max range, whose fake-quant has the least mean squared error).
    Percentile and MSE work on a seeded random sample of at most ``max_samples`` values.
    Example: ``obs = Observer("percentile"); obs.update(x); scale, zp = obs.qparams()``
    """

    def __init__(
        self,
        method: str = "minmax",
        bits: int = 8,
        symmetric: bool = False,
        *,
        percentile: float = 99.99,
        grid: int = 64,
        max_samples: int = 2**17,
        seed: int = 0,
    ) -> None:
        self.method = check_choice("method", method, CALIBRATIONS)
        self.bits = check_int("bits", bits, minimum=2, maximum=8)
        self.symmetric = check_choice("symmetric", symmetric, (True, False))
        self.percentile = float(percentile)
        self.grid = check_int("grid", grid, minimum=1)
        self.max_samples = check_int("max_samples", max_samples, minimum=1)
        self.min_val = torch.tensor(float("inf"))
        self.max_val = torch.tensor(float("-inf"))
        self.samples: list[Tensor] = []
        self._generator = torch.Generator().manual_seed(seed)

    def update(self, x: Tensor) -> None:
        """Record one batch (any shape)."""
        x = x.detach().float().flatten()  # (N,)
        if x.numel() == 0:
            return
        self.min_val = torch.minimum(self.min_val, x.min())
        self.max_val = torch.maximum(self.max_val, x.max())
        if self.method != "minmax":
            if x.numel() > self.max_samples:
                idx = torch.randint(x.numel(), (self.max_samples,), generator=self._generator)
                x = x[idx]  # (max_samples,)
            self.samples.append(x)
            pool = torch.cat(self.samples)
            if pool.numel() > self.max_samples:
                idx = torch.randperm(pool.numel(), generator=self._generator)[: self.max_samples]
                pool = pool[idx]
            self.samples = [pool]

    def range(self) -> tuple[Tensor, Tensor]:
        """(low, high) of the quantization range, by the observer's method."""
        if not torch.isfinite(self.min_val):
            raise ValueError("observer must see at least one batch before range(); got none")
        lo, hi = self.min_val, self.max_val
        if self.method == "percentile":
            sample = self.samples[0]
            q = torch.tensor([100 - self.percentile, self.percentile]) / 100
            lo, hi = torch.quantile(sample, q)
        elif self.method == "mse":
            lo, hi = self._mse_range(self.samples[0], lo, hi)
        return lo, hi

    def qparams(self) -> tuple[Tensor, Tensor]:
        """(scale, zero_point) for :func:`fake_quantize_affine` on the observed range."""
        lo, hi = self.range()
        return qparams_from_range(lo, hi, self.bits, self.symmetric)

    def _mse_range(self, sample: Tensor, lo: Tensor, hi: Tensor) -> tuple[Tensor, Tensor]:
        best, best_err = (lo, hi), float("inf")
        for i in range(self.grid, 0, -1):
            frac = i / self.grid
            scale, zp = qparams_from_range(lo * frac, hi * frac, self.bits, self.symmetric)
            err = fake_quantize_affine(sample, scale, zp, self.bits, self.symmetric) - sample
            err = float(err.square().mean())
            if err < best_err:
                best, best_err = (lo * frac, hi * frac), err
        return best
