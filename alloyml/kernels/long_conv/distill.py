"""Distilling a long convolution filter into a small diagonal state space (after LaughingHyena, Massaroli
et al. 2023), so that it decodes in constant memory:

    x_t = lambda * x_{t-1} + u_t   (r complex modes per channel),   y_t = Re(c . x_t) + D u_t,

whose kernel is K_0 = Re(sum_n c_n) + D, K_l = Re(sum_n c_n lambda_n^l). The fit is modal: the poles
lambda from the shift invariance of the filter's Hankel matrix (Kung's method: the top-r left singular
vectors U of H_ij = h_{1+i+j}, min((L - 1) / 2, 16 r) rows, lambda = eig(pinv(U[:-1]) U[1:])), pulled
inside the unit circle (|lambda| <= MAX_POLE) so the recurrence is stable; the residues c by linear least squares on
h_1 .. h_{L-1} given the poles; D so that tap 0 is exact. All in float64. Decoding the result costs
O(r) per token and channel with a state of r complex numbers, against O(T) for the filter itself.
"""

from __future__ import annotations

from dataclasses import dataclass

MAX_POLE = 0.9999


@dataclass
class DistilledSSM:
    """poles, residues: [C, r] complex128; D: [C] float64; error: [C] relative L2 error of the fitted
    kernel against the filter over the fitted length."""

    poles: object
    residues: object
    D: object
    error: object

    def kernel(self, L: int):
        """K: [L, C] float64, the convolution kernel of the state space (tap 0 includes D)."""
        import torch

        lag = torch.arange(L, dtype=torch.float64, device=self.D.device)
        powers = torch.exp(torch.log(self.poles)[..., None] * lag)  # [C, r, L]
        K = (self.residues[..., None] * powers).sum(1).real.T.clone()  # [L, C]
        K[0] = K[0] + self.D
        return K

    def step(self, u, state=None):
        """u: [b, C] -> (y [b, C] in u's dtype, state [b, C, r] complex128): one step of the recurrence."""
        import torch

        x = u.to(torch.complex128)[..., None]
        if state is not None:
            x = x + self.poles * state
        y = (self.residues * x).sum(-1).real + self.D * u.to(torch.float64)
        return y.to(u.dtype), x

    def final_state(self, u):
        """The state after u: [b, T, C] from zeros: x_T-1 = sum_s lambda^(T-1-s) u_s, [b, C, r]."""
        import torch

        T = u.shape[1]
        lag = torch.arange(T - 1, -1, -1, dtype=torch.float64, device=u.device)
        powers = torch.exp(torch.log(self.poles)[..., None] * lag)  # [C, r, T]
        return torch.einsum("btc,crt->bcr", u.to(torch.complex128), powers)


def distill_filter(h, order: int) -> DistilledSSM:
    """Fit h: [L, C] (tap l weights the input l steps back) with `order` complex modes per channel."""
    import torch

    from alloyml.errors import InvalidInputError

    if h.dim() != 2 or not h.is_floating_point():
        raise InvalidInputError(f"h must be a real [L, C] filter, got {list(h.shape)} {h.dtype}")
    L = h.shape[0]
    if not isinstance(order, int) or order < 1 or 2 * order + 2 > L:
        raise InvalidInputError(f"order must be an integer in [1, (L - 2) / 2] = [1, {(L - 2) // 2}], got {order!r}")
    h = h.detach().to(torch.float64).T  # [C, L]
    tail = h[:, 1:]  # h_1 .. h_{L-1}
    rows = min((L - 1) // 2, 16 * order)  # enough rows to see r modes shift; fewer keep the SVD cheap
    idx = torch.arange(rows)[:, None] + torch.arange(L - 1 - rows + 1)[None, :]  # [rows, cols]
    hankel = tail[:, idx]  # [C, rows, cols]
    # the top-r left singular vectors, as eigenvectors of H H^T (rows x rows: cheaper than the SVD of H)
    U = torch.linalg.eigh(hankel @ hankel.transpose(1, 2)).eigenvectors[..., -order:]  # [C, rows, r]
    A = torch.linalg.pinv(U[:, :-1]) @ U[:, 1:]  # [C, r, r]
    poles = torch.linalg.eigvals(A)
    size = poles.abs().clamp_min(1e-12)
    poles = torch.where(size > MAX_POLE, poles / size * MAX_POLE, poles)
    lag = torch.arange(1, L, dtype=torch.float64)
    powers = torch.exp(torch.log(poles)[..., None] * lag)  # [C, r, L - 1]
    design = torch.cat([powers.real, -powers.imag], dim=1).transpose(1, 2)  # Re(c z) = Re c Re z - Im c Im z
    coef = (torch.linalg.pinv(design) @ tail[..., None])[..., 0]  # [C, 2r]; conjugate poles repeat columns
    residues = torch.complex(coef[:, :order], coef[:, order:])
    D = h[:, 0] - residues.sum(-1).real
    fit = DistilledSSM(poles, residues, D, None)
    K = fit.kernel(L).T
    fit.error = (K - h).norm(dim=-1) / h.norm(dim=-1).clamp_min(1e-300)
    return fit
