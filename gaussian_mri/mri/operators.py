"""Linear MRI operators for Cartesian cine: coil sensitivities, centred FFT, line sampling, SENSE.

Every operator is a small :class:`torch.nn.Module` with ``forward`` (``op(x)``), ``adjoint``
and ``.H`` (the adjoint as an operator); operators compose with ``@`` (``A @ B`` applies ``B``
first). All are linear in their input and are tested for ``<A x, y> == <x, A^H y>``, for linearity
and for ``vjp(A)(y) == A^H y``.

Shapes follow the package convention (see :mod:`gaussian_mri`):

* image series: ``(frames, ny, nx)`` complex;
* coil images / multi-coil k-space: ``(frames, coils, ky, kx)`` complex;
* coil maps: ``(coils, ny, nx)`` complex, usually normalised to ``sum_c |c|^2 = 1`` inside the object;
* sampling masks: ``(frames, ky)`` (phase-encode lines, every ``kx`` of a line acquired) or
  ``(frames, ky, kx)``; ``bool`` or real 0/1 (real weights are allowed, complex ones are not).

The Fourier transform is :func:`gaussian_mri.mri.fft.fft2c` (centred, unitary), so with coil maps
normalised as above and a binary mask, ``||SenseOp|| <= 1``.
"""

from __future__ import annotations

import torch

from gaussian_mri._checks import require_tensor
from gaussian_mri.mri.fft import fft2c, ifft2c

__all__ = [
    "AdjointOperator",
    "CoilOp",
    "ComposedOperator",
    "FourierOp",
    "LinearOperator",
    "SamplingOp",
    "SenseOp",
    "mask_as_weights",
]


class LinearOperator(torch.nn.Module):
    """Base class: ``forward`` applies the operator, ``adjoint`` its Hermitian adjoint.

    Subclasses implement :meth:`forward` and :meth:`adjoint`. ``op.H`` is the adjoint operator and
    ``op.H.H`` is ``op`` again; ``A @ B`` is the composition ``x -> A(B(x))``.
    """

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # pragma: no cover - abstract
        """Apply the operator."""
        raise NotImplementedError

    def adjoint(self, y: torch.Tensor) -> torch.Tensor:  # pragma: no cover - abstract
        """Apply the Hermitian adjoint of the operator."""
        raise NotImplementedError

    @property
    def H(self) -> LinearOperator:  # noqa: N802 - mathematical name, as in mrpro/sigpy
        """The adjoint operator (``op.H(y) == op.adjoint(y)``)."""
        return AdjointOperator(self)

    def gram(self, x: torch.Tensor) -> torch.Tensor:
        """Apply the normal operator ``A^H A``."""
        return self.adjoint(self.forward(x))

    def __matmul__(self, other: LinearOperator) -> LinearOperator:
        if not isinstance(other, LinearOperator):
            return NotImplemented
        return ComposedOperator(self, other)


class AdjointOperator(LinearOperator):
    """The adjoint of another operator; built by ``op.H``."""

    def __init__(self, operator: LinearOperator) -> None:
        super().__init__()
        self.operator = operator

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Apply the adjoint of the wrapped operator."""
        return self.operator.adjoint(x)

    def adjoint(self, y: torch.Tensor) -> torch.Tensor:
        """Apply the wrapped operator."""
        return self.operator.forward(y)

    @property
    def H(self) -> LinearOperator:  # noqa: N802
        """The wrapped operator itself."""
        return self.operator

    def __repr__(self) -> str:
        return f"{self.operator!r}.H"


class ComposedOperator(LinearOperator):
    """``outer @ inner``: ``x -> outer(inner(x))``, adjoint ``y -> inner.H(outer.H(y))``."""

    def __init__(self, outer: LinearOperator, inner: LinearOperator) -> None:
        super().__init__()
        self.outer = outer
        self.inner = inner

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Apply ``inner`` then ``outer``."""
        return self.outer(self.inner(x))

    def adjoint(self, y: torch.Tensor) -> torch.Tensor:
        """Apply ``outer.H`` then ``inner.H``."""
        return self.inner.adjoint(self.outer.adjoint(y))

    def __repr__(self) -> str:
        return f"({self.outer!r} @ {self.inner!r})"


def _require_complex_or_real(name: str, value: torch.Tensor) -> None:
    if not (value.is_complex() or value.is_floating_point()):
        raise TypeError(f"{name} must be a complex or real floating tensor, got {value.dtype}")


def mask_as_weights(mask: torch.Tensor, n_ky: int, n_kx: int) -> torch.Tensor:
    """Check a sampling mask and return it as real weights of shape ``(frames, 1, ky, kx|1)``.

    Parameters
    ----------
    mask
        ``(frames, ky)`` line mask or ``(frames, ky, kx)`` mask; ``bool`` or real (0/1 or weights).
    n_ky, n_kx
        Expected k-space size.

    Returns
    -------
    torch.Tensor
        float32 (float64 for a float64 mask) weights that broadcast against ``(frames, coils, ky, kx)``.

    Raises
    ------
    TypeError
        If ``mask`` is not a tensor, or is complex.
    ValueError
        If its shape does not match ``(frames, n_ky)`` or ``(frames, n_ky, n_kx)``.
    """
    require_tensor("mask", mask)
    if mask.is_complex():
        raise TypeError(
            f"mask must be bool or real, got {mask.dtype}; pass the sampling pattern, not k-space"
        )
    if mask.dim() == 2 and mask.shape[1] == n_ky:
        weights = mask[:, None, :, None]
    elif mask.dim() == 3 and mask.shape[1:] == (n_ky, n_kx):
        weights = mask[:, None, :, :]
    else:
        raise ValueError(
            f"mask must have shape (frames, {n_ky}) or (frames, {n_ky}, {n_kx}) to match k-space "
            f"(ky={n_ky}, kx={n_kx}), got {tuple(mask.shape)}"
        )
    if weights.dtype == torch.float64:
        return weights
    return weights.to(torch.float32)


class FourierOp(LinearOperator):
    """Centred unitary 2D FFT over the last two axes: ``(..., ny, nx) -> (..., ky, kx)``.

    Notes
    -----
    ``ifftshift -> fft2(norm='ortho') -> fftshift`` (:func:`gaussian_mri.mri.fft.fft2c`), as BART's
    ``fft -u`` and mrpro's ``FastFourierOp``; the adjoint is the inverse.
    """

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Image ``(..., ny, nx)`` -> k-space ``(..., ky, kx)``."""
        require_tensor("x", x)
        return fft2c(x)

    def adjoint(self, y: torch.Tensor) -> torch.Tensor:
        """K-space ``(..., ky, kx)`` -> image ``(..., ny, nx)``."""
        require_tensor("y", y)
        return ifft2c(y)

    def __repr__(self) -> str:
        return "FourierOp(centred, ortho, dims=(-2, -1))"


class CoilOp(LinearOperator):
    """Coil sensitivity weighting: image ``(frames, ny, nx)`` -> coil images ``(frames, coils, ny, nx)``.

    Parameters
    ----------
    coil_maps
        ``(coils, ny, nx)`` complex sensitivities (unitless).
    """

    coil_maps: torch.Tensor

    def __init__(self, coil_maps: torch.Tensor) -> None:
        super().__init__()
        _check_coil_maps(coil_maps)
        self.register_buffer("coil_maps", coil_maps)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Image ``(frames, ny, nx)`` -> coil images ``(frames, coils, ny, nx)``."""
        _check_image("x", x, self.coil_maps)
        return self.coil_maps[None] * x[:, None]

    def adjoint(self, y: torch.Tensor) -> torch.Tensor:
        """Coil images ``(frames, coils, ny, nx)`` -> coil-combined image ``(frames, ny, nx)``."""
        _check_coil_data("y", y, self.coil_maps)
        return (self.coil_maps.conj()[None] * y).sum(dim=1)

    def __repr__(self) -> str:
        return f"CoilOp(coils={self.coil_maps.shape[0]}, shape={tuple(self.coil_maps.shape[1:])})"


class SamplingOp(LinearOperator):
    """Cartesian sampling: multiply k-space ``(frames, coils, ky, kx)`` by a mask (self-adjoint).

    Parameters
    ----------
    mask
        ``(frames, ky)`` line mask or ``(frames, ky, kx)`` mask, ``bool`` or real.
    n_kx
        Readout size, needed to check a line mask against the data.
    """

    weights: torch.Tensor

    def __init__(self, mask: torch.Tensor, *, n_kx: int) -> None:
        super().__init__()
        require_tensor("mask", mask)
        if mask.dim() not in (2, 3):
            raise ValueError(f"mask must be (frames, ky) or (frames, ky, kx), got shape {tuple(mask.shape)}")
        self.register_buffer("weights", mask_as_weights(mask, mask.shape[1], n_kx))
        self.n_kx = n_kx

    def _check(self, name: str, y: torch.Tensor) -> None:
        require_tensor(name, y)
        want = (self.weights.shape[0], None, self.weights.shape[2], self.n_kx)
        if y.dim() != 4 or any(w is not None and w != s for w, s in zip(want, y.shape)):
            raise ValueError(
                f"{name} must be k-space (frames={want[0]}, coils, ky={want[2]}, kx={want[3]}) to match the "
                f"mask, got {tuple(y.shape)}"
            )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Zero the k-space samples that are not acquired."""
        self._check("x", x)
        return self.weights * x

    def adjoint(self, y: torch.Tensor) -> torch.Tensor:
        """Same as :meth:`forward` (a real diagonal operator is self-adjoint)."""
        self._check("y", y)
        return self.weights * y

    def __repr__(self) -> str:
        return f"SamplingOp(frames={self.weights.shape[0]}, ky={self.weights.shape[2]}, kx={self.n_kx})"


class SenseOp(LinearOperator):
    """Multi-coil Cartesian encoding: ``E x = mask * fft2c(coil_maps * x)``.

    Parameters
    ----------
    coil_maps
        ``(coils, ny, nx)`` complex sensitivities.
    mask
        Optional sampling mask, ``(frames, ky)`` lines or ``(frames, ky, kx)``; ``bool`` or real.
        ``None`` means fully sampled (any number of frames).

    Notes
    -----
    ``forward``: image ``(frames, ny, nx)`` -> k-space ``(frames, coils, ky, kx)``.
    ``adjoint``: k-space -> image, ``sum_c conj(c) ifft2c(mask * y)``. The result dtype follows
    PyTorch promotion of the input and the coil maps (complex64 maps and a float32/complex64 image
    give complex64).

    Examples
    --------
    >>> E = SenseOp(coil_maps, mask=gro_mask(n_ky, n_frames, 4))   # doctest: +SKIP
    >>> kspace = E(image)                                           # doctest: +SKIP
    >>> zero_filled = E.H(kspace)                                   # doctest: +SKIP
    """

    coil_maps: torch.Tensor
    weights: torch.Tensor | None

    def __init__(self, coil_maps: torch.Tensor, mask: torch.Tensor | None = None) -> None:
        super().__init__()
        _check_coil_maps(coil_maps)
        self.register_buffer("coil_maps", coil_maps)
        _, ny, nx = coil_maps.shape
        if mask is None:
            self.register_buffer("weights", None)
        else:
            self.register_buffer("weights", mask_as_weights(mask, ny, nx))

    @property
    def n_frames(self) -> int | None:
        """Number of frames fixed by the mask, ``None`` without a mask."""
        return None if self.weights is None else int(self.weights.shape[0])

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Image ``(frames, ny, nx)`` -> multi-coil k-space ``(frames, coils, ky, kx)``."""
        _check_image("x", x, self.coil_maps, self.n_frames)
        k = fft2c(self.coil_maps[None] * x[:, None])
        return k if self.weights is None else self.weights * k

    def adjoint(self, y: torch.Tensor) -> torch.Tensor:
        """Multi-coil k-space ``(frames, coils, ky, kx)`` -> coil-combined image ``(frames, ny, nx)``."""
        _check_coil_data("y", y, self.coil_maps, self.n_frames)
        if self.weights is not None:
            y = self.weights * y
        return (self.coil_maps.conj()[None] * ifft2c(y)).sum(dim=1)

    def __repr__(self) -> str:
        c, ny, nx = self.coil_maps.shape
        return f"SenseOp(coils={c}, shape=({ny}, {nx}), frames={self.n_frames})"


def _check_coil_maps(coil_maps: object) -> None:
    require_tensor("coil_maps", coil_maps)
    assert isinstance(coil_maps, torch.Tensor)
    if coil_maps.dim() != 3:
        raise ValueError(
            f"coil_maps must have shape (coils, ny, nx), got {tuple(coil_maps.shape)}; "
            "for a single coil use coil_maps[None]"
        )
    if not coil_maps.is_complex():
        raise TypeError(f"coil_maps must be complex (complex64 or complex128), got {coil_maps.dtype}")


def _check_image(name: str, x: object, coil_maps: torch.Tensor, n_frames: int | None = None) -> None:
    require_tensor(name, x)
    assert isinstance(x, torch.Tensor)
    _require_complex_or_real(name, x)
    _, ny, nx = coil_maps.shape
    frames_ok = n_frames is None or (x.dim() == 3 and x.shape[0] == n_frames)
    if x.dim() != 3 or x.shape[1:] != (ny, nx) or not frames_ok:
        f = "frames" if n_frames is None else str(n_frames)
        raise ValueError(
            f"{name} must be an image series ({f}, {ny}, {nx}) matching coil_maps {tuple(coil_maps.shape)}"
            + ("" if n_frames is None else " and the mask")
            + f", got {tuple(x.shape)}"
        )


def _check_coil_data(name: str, y: object, coil_maps: torch.Tensor, n_frames: int | None = None) -> None:
    require_tensor(name, y)
    assert isinstance(y, torch.Tensor)
    _require_complex_or_real(name, y)
    c, ny, nx = coil_maps.shape
    frames_ok = n_frames is None or (y.dim() == 4 and y.shape[0] == n_frames)
    if y.dim() != 4 or y.shape[1:] != (c, ny, nx) or not frames_ok:
        f = "frames" if n_frames is None else str(n_frames)
        raise ValueError(
            f"{name} must be multi-coil data ({f}, {c}, {ny}, {nx}) matching coil_maps "
            f"{tuple(coil_maps.shape)}"
            + ("" if n_frames is None else " and the mask")
            + f", got {tuple(y.shape)}"
        )
