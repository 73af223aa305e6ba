"""Adam with per-row freezing: parameters of rows (frames, slices) outside a step's batch stay put.

Stochastic fits draw a few frames (cine) or slices (SVR) per step. Their per-frame / per-slice
parameters then get a gradient only in the steps that draw them. Plain Adam would still move the
undrawn rows, with the momentum of earlier steps (``m_t = beta1 m_{t-1}`` keeps pushing), and would
decay their moments and advance their bias correction as if they had been seen. :class:`MaskedAdam`
instead treats each row of such a parameter as its own Adam problem that only advances when the row
is drawn:

* the rows named by ``step(active=...)`` get exactly Adam's update (Kingma & Ba, ICLR 2015,
  Algorithm 1, as ``torch.optim.Adam`` computes it: ``m <- beta1 m + (1 - beta1) g``,
  ``v <- beta2 v + (1 - beta2) g^2``, ``p <- p - lr (m / (1 - beta1^n)) / (sqrt(v / (1 - beta2^n)) + eps)``)
  with ``n`` the number of steps *that row* has taken;
* the other rows are left bitwise unchanged: parameter, both moments and their step count ``n``.

Parameters of groups without ``rows_dim`` are ordinary Adam parameters (all rows active every
step, the same arithmetic as ``torch.optim.Adam``'s default implementation up to float round-off).
Everything stays on the parameter's device: the step counts are tensors and the masks are applied with
``torch.where``, so a step never reads a value back to the host (no GPU synchronisation).

Group options: ``lr``, ``betas``, ``eps`` as ``torch.optim.Adam``; ``rows_dim`` (int or ``None``):
the axis of the parameter that indexes the rows (frames / slices).
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from typing import Any

import torch

__all__ = ["MaskedAdam"]


class MaskedAdam(torch.optim.Optimizer):
    """Adam whose row-wise parameters only advance on the rows drawn in a step (see the module docstring).

    Examples
    --------
    >>> dmu = torch.zeros(8, 100, 2, requires_grad=True)        # (frames, Gaussians, 2)
    >>> opt = MaskedAdam([{"params": [dmu], "lr": 0.05, "rows_dim": 0}])
    >>> # ... loss.backward() on frames [1, 5] ...
    >>> opt.step(active=torch.tensor([1, 5]))                   # frames 0, 2-4, 6, 7 untouched
    """

    def __init__(
        self,
        params: Iterable[Any],
        lr: float = 1e-3,
        betas: tuple[float, float] = (0.9, 0.999),
        eps: float = 1e-8,
        rows_dim: int | None = None,
    ) -> None:
        if not lr > 0:
            raise ValueError(f"lr must be > 0, got {lr}")
        if not (0.0 <= betas[0] < 1.0 and 0.0 <= betas[1] < 1.0):
            raise ValueError(f"betas must lie in [0, 1), got {betas}")
        if not eps >= 0:
            raise ValueError(f"eps must be >= 0, got {eps}")
        super().__init__(params, {"lr": lr, "betas": tuple(betas), "eps": eps, "rows_dim": rows_dim})

    @staticmethod
    def _row_mask(active: torch.Tensor, n_rows: int, like: torch.Tensor) -> torch.Tensor:
        """``active`` (bool of length ``n_rows``, or row indices) as a 0/1 vector like ``like``."""
        # (explicit device: under a default-device context torch.as_tensor would build it elsewhere)
        if isinstance(active, torch.Tensor):
            active = active.to(like.device, non_blocking=True)
        else:
            active = torch.as_tensor(active, device=like.device)
        if active.dtype == torch.bool:
            if active.shape != (n_rows,):
                raise ValueError(f"a boolean active mask must have shape ({n_rows},), got {tuple(active.shape)}")
            return active.to(like.dtype)
        mask = torch.zeros(n_rows, dtype=like.dtype, device=like.device)
        return mask.index_fill_(0, active.reshape(-1).long(), 1.0)

    @torch.no_grad()
    def step(self, closure=None, *, active: torch.Tensor | None = None):
        """One step. ``active``: rows drawn in this step (bool mask or indices along ``rows_dim``);
        ``None`` updates every row. Applies to every group that has a ``rows_dim``."""
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        for group in self.param_groups:
            beta1, beta2 = group["betas"]
            lr, eps, dim = group["lr"], group["eps"], group.get("rows_dim")
            for p in group["params"]:
                if p.grad is None:
                    continue
                if p.grad.is_sparse:
                    raise RuntimeError("MaskedAdam does not support sparse gradients")
                if p.is_complex():
                    raise TypeError("MaskedAdam takes real parameters; store a complex one as (..., 2) real")
                grad = p.grad
                state = self.state[p]
                n_rows = p.shape[dim] if dim is not None else 1
                if not state:
                    # counts in the parameter's dtype (exact up to 2^24 steps in float32)
                    state["step"] = torch.zeros(n_rows, dtype=p.dtype, device=p.device)
                    state["exp_avg"] = torch.zeros_like(p, memory_format=torch.preserve_format)
                    state["exp_avg_sq"] = torch.zeros_like(p, memory_format=torch.preserve_format)
                step_t, m, v = state["step"], state["exp_avg"], state["exp_avg_sq"]
                shape = [1] * p.dim()
                if dim is not None:
                    shape[dim] = n_rows
                if dim is None or active is None:
                    row = None
                    step_t += 1
                else:
                    row = self._row_mask(active, n_rows, step_t)
                    step_t += row
                    row = row.reshape(shape).to(torch.bool)
                n = step_t.reshape(shape)
                m_new = torch.lerp(m, grad, 1 - beta1)
                v_new = v * beta2 + (1 - beta2) * grad * grad
                # rows never drawn have n = 0: clamp so their (discarded) update stays finite
                n1 = n.clamp_min(1)
                # 1 - beta^n as -expm1(n log beta): no cancellation in float32 (1 - 0.999^n would lose
                # 4 of float32's 7 digits at small n)
                bias1 = -torch.expm1(n1 * math.log(beta1)) if beta1 > 0 else torch.ones_like(n1)
                bias2_sqrt = torch.sqrt(-torch.expm1(n1 * math.log(beta2))) if beta2 > 0 else torch.ones_like(n1)
                update = m_new / ((v_new.sqrt() / bias2_sqrt) + eps) * (lr / bias1)
                if row is None:
                    m.copy_(m_new)
                    v.copy_(v_new)
                    p.sub_(update)
                else:
                    m.copy_(torch.where(row, m_new, m))
                    v.copy_(torch.where(row, v_new, v))
                    p.copy_(torch.where(row, p - update, p))
        return loss
