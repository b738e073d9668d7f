"""Small games with closed-form answers, for tests, benchmarks and learning the API.

Every game here has its players as ``Variable`` modules, keeps its constants
as buffers (so ``game.to(device, dtype)`` moves everything), and exposes the exact Stackelberg
solution through ``solution()`` as an ``Equilibrium``. Leader ``w``, follower ``θ``;
``l`` is the leader's loss and ``h`` the follower's (the site's "Toy games" page).

=====================  ===========================================================  =========
game                   what it tests                                                 DESIGN
=====================  ===========================================================  =========
QuadraticGame          quadratic bilevel problem, 2-d instance or d-dim family       T1
StackelbergVsNashGame  the Stackelberg point differs from the Nash point             T2
NonSingletonGame       the follower's optimum is a set (singular Hessian)            T3
HyperparameterGame     per-coordinate ridge penalty e^{w_i} tuned on validation      T4
BoxPoisoningGame       ℓ∞-bounded poisoning of a ridge mean estimator (projection)    T5
DuopolyGame            Stackelberg (leader-follower) Cournot duopoly                 —
=====================  ===========================================================  =========
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor

from stackelberg.game import Game, Variable

__all__ = [
    "BoxPoisoningGame",
    "DuopolyGame",
    "Equilibrium",
    "HyperparameterGame",
    "NonSingletonGame",
    "QuadraticGame",
    "StackelbergVsNashGame",
]

TensorLike = Tensor | Sequence[float] | Sequence[Sequence[float]] | float


@dataclass(frozen=True)
class Equilibrium:
    """A pair of strategies and the leader's loss there."""

    leader: Tensor
    follower: Tensor
    leader_loss: float


def _tensor(value: TensorLike, dtype: torch.dtype | None, name: str) -> Tensor:
    tensor = torch.as_tensor(value, dtype=dtype or torch.get_default_dtype())
    if not torch.isfinite(tensor).all():
        raise ValueError(f"{name} must be finite")
    return tensor.clone()


def _player(init: TensorLike | None, like: Tensor) -> Variable:
    value = torch.zeros_like(like) if init is None else torch.as_tensor(init, dtype=like.dtype)
    if value.shape != like.shape:
        raise ValueError(
            f"initial strategy has shape {tuple(value.shape)}, expected {tuple(like.shape)}"
        )
    return Variable(value)


class QuadraticGame(Game):
    """T1: ``h = ½θᵀAθ − θᵀ(Bw + c)``, ``l = ½‖θ − θ_t‖² + (ρ/2)‖w‖²``.

    The follower's best response is ``θ*(w) = A⁻¹(Bw + c)``; with ``M = A⁻¹B`` the leader's
    optimum is ``w* = (MᵀM + ρI)⁻¹ Mᵀ(θ_t − A⁻¹c)``. ``A`` must be symmetric positive definite.
    Use ``instance`` for the 2-d instance the tests use and ``random`` for a
    ``d``-dimensional one with a chosen condition number of ``A``.
    """

    leader: Variable
    follower: Variable
    A: Tensor
    B: Tensor
    c: Tensor
    theta_target: Tensor

    def __init__(
        self,
        A: TensorLike,
        B: TensorLike,
        c: TensorLike,
        theta_target: TensorLike,
        rho: float,
        *,
        leader_init: TensorLike | None = None,
        follower_init: TensorLike | None = None,
        dtype: torch.dtype | None = None,
    ) -> None:
        A, B = _tensor(A, dtype, "A"), _tensor(B, dtype, "B")
        c, theta_target = _tensor(c, dtype, "c"), _tensor(theta_target, dtype, "theta_target")
        d_theta = c.shape[0]
        if A.shape != (d_theta, d_theta) or B.ndim != 2 or B.shape[0] != d_theta:
            raise ValueError(
                f"shapes do not fit: A {tuple(A.shape)}, B {tuple(B.shape)}, c {tuple(c.shape)}"
            )
        if theta_target.shape != c.shape:
            raise ValueError("theta_target must have the shape of c")
        if not torch.allclose(A, A.T) or torch.linalg.eigvalsh(A).min() <= 0:
            raise ValueError("A must be symmetric positive definite")
        if rho < 0:
            raise ValueError(f"rho must be >= 0, got {rho}")
        super().__init__(_player(leader_init, B.new_zeros(B.shape[1])), _player(follower_init, c))
        self.register_buffer("A", A)
        self.register_buffer("B", B)
        self.register_buffer("c", c)
        self.register_buffer("theta_target", theta_target)
        self.rho = float(rho)

    @classmethod
    def instance(cls, **kwargs: Any) -> QuadraticGame:
        """The 2-d instance the tests and the toy-games page use: ``w* ≈ (0.150846, 1.557518)``."""
        return cls(
            A=[[2.0, 0.5], [0.5, 1.0]],
            B=[[1.0, 0.0], [0.3, 1.0]],
            c=[1.0, -1.0],
            theta_target=[0.5, 0.5],
            rho=0.1,
            **kwargs,
        )

    @classmethod
    def random(
        cls,
        dim: int,
        condition_number: float = 10.0,
        *,
        rho: float = 0.1,
        seed: int = 0,
        **kwargs: Any,
    ) -> QuadraticGame:
        """A ``dim``-dimensional instance whose ``A`` has eigenvalues log-spaced in ``[1, κ]``.

        ``B`` has i.i.d. ``N(0, 1/dim)`` entries; ``c`` and ``θ_t`` are standard normal. The
        draw depends on ``seed`` only (float64 on the CPU, then cast to ``dtype``).
        """
        if dim < 1:
            raise ValueError(f"dim must be >= 1, got {dim}")
        if condition_number < 1:
            raise ValueError(f"condition_number must be >= 1, got {condition_number}")
        generator = torch.Generator().manual_seed(seed)
        options: dict[str, Any] = {"generator": generator, "dtype": torch.float64}
        q, _ = torch.linalg.qr(torch.randn(dim, dim, **options))
        eigenvalues = torch.logspace(0, math.log10(condition_number), dim, dtype=torch.float64)
        A = (q * eigenvalues) @ q.T
        A = (A + A.T) / 2
        B = torch.randn(dim, dim, **options) / math.sqrt(dim)
        c = torch.randn(dim, **options)
        theta_target = torch.randn(dim, **options)
        return cls(A, B, c, theta_target, rho, **kwargs)

    def follower_loss(self, leader: Any, follower: Any, batch: Any = None) -> Tensor:
        w, theta = leader(), follower()
        return 0.5 * theta @ self.A @ theta - theta @ (self.B @ w + self.c)

    def leader_loss(self, leader: Any, follower: Any, batch: Any = None) -> Tensor:
        w, theta = leader(), follower()
        return 0.5 * torch.sum((theta - self.theta_target) ** 2) + 0.5 * self.rho * torch.sum(w**2)

    def best_response(self, w: Tensor) -> Tensor:
        """``θ*(w) = A⁻¹(Bw + c)``."""
        return torch.linalg.solve(self.A, self.B @ w + self.c)

    def solution(self) -> Equilibrium:
        """``w* = (MᵀM + ρI)⁻¹ Mᵀ(θ_t − A⁻¹c)``, ``M = A⁻¹B``, and ``θ* = θ*(w*)``."""
        M = torch.linalg.solve(self.A, self.B)
        offset = torch.linalg.solve(self.A, self.c)
        eye = torch.eye(M.shape[1], dtype=M.dtype, device=M.device)
        w = torch.linalg.solve(M.T @ M + self.rho * eye, M.T @ (self.theta_target - offset))
        theta = self.best_response(w)
        loss = 0.5 * torch.sum((theta - self.theta_target) ** 2) + 0.5 * self.rho * torch.sum(w**2)
        return Equilibrium(w, theta, float(loss))


class StackelbergVsNashGame(Game):
    """T2: ``h = ½(θ − βw)²``, ``l = ½(w − 1)² + ½(θ − 2)²``.

    Stackelberg: ``w* = (1 + 2β)/(1 + β²)``, ``θ* = βw*`` (β = ½ → (1.6, 0.8), loss 0.9).
    Nash (what gradient descent-ascent finds): ``(1, β)``.
    """

    leader: Variable
    follower: Variable

    def __init__(
        self,
        beta: float = 0.5,
        *,
        leader_init: TensorLike | None = None,
        follower_init: TensorLike | None = None,
        dtype: torch.dtype | None = None,
    ) -> None:
        zero = _tensor(0.0, dtype, "init")
        super().__init__(_player(leader_init, zero), _player(follower_init, zero))
        self.beta = float(beta)

    def follower_loss(self, leader: Any, follower: Any, batch: Any = None) -> Tensor:
        return 0.5 * (follower() - self.beta * leader()) ** 2

    def leader_loss(self, leader: Any, follower: Any, batch: Any = None) -> Tensor:
        return 0.5 * (leader() - 1.0) ** 2 + 0.5 * (follower() - 2.0) ** 2

    def _point(self, w: float) -> Equilibrium:
        theta = self.beta * w
        loss = 0.5 * (w - 1.0) ** 2 + 0.5 * (theta - 2.0) ** 2
        dtype = self.leader.value.dtype
        return Equilibrium(torch.tensor(w, dtype=dtype), torch.tensor(theta, dtype=dtype), loss)

    def solution(self) -> Equilibrium:
        return self._point((1.0 + 2.0 * self.beta) / (1.0 + self.beta**2))

    def nash(self) -> Equilibrium:
        """The Nash point ``(1, β)``: each player's own gradient vanishes."""
        return self._point(1.0)


class NonSingletonGame(Game):
    """T3: ``h = ½θ₁² − wθ₁`` (θ₂ free), ``l = ½(w − θ₂)² + ½(θ₁ − 1)²``.

    The follower's optimal set is ``{θ₁ = w}`` × ℝ: ``∇²_θθ h = diag(1, 0)`` is singular. The
    (optimistic) solution is ``w = θ₁ = θ₂ = 1`` with ``l* = 0``; implicit-function methods
    need damping here.
    """

    leader: Variable
    follower: Variable

    def __init__(
        self,
        *,
        leader_init: TensorLike | None = None,
        follower_init: TensorLike | None = None,
        dtype: torch.dtype | None = None,
    ) -> None:
        zero = _tensor(0.0, dtype, "init")
        super().__init__(_player(leader_init, zero), _player(follower_init, zero.new_zeros(2)))

    def follower_loss(self, leader: Any, follower: Any, batch: Any = None) -> Tensor:
        theta = follower()
        return 0.5 * theta[0] ** 2 - leader() * theta[0]

    def leader_loss(self, leader: Any, follower: Any, batch: Any = None) -> Tensor:
        theta = follower()
        return 0.5 * (leader() - theta[1]) ** 2 + 0.5 * (theta[0] - 1.0) ** 2

    def solution(self) -> Equilibrium:
        dtype = self.leader.value.dtype
        return Equilibrium(torch.tensor(1.0, dtype=dtype), torch.ones(2, dtype=dtype), 0.0)


class HyperparameterGame(Game):
    """T4: ``h = ½‖θ − u‖² + ½Σᵢ e^{wᵢ} θᵢ²``, ``l = ½‖θ − v‖²``.

    ``θ*(w)ᵢ = uᵢ / (1 + e^{wᵢ})``; the leader reaches ``l = 0`` at ``e^{wᵢ*} = uᵢ/vᵢ − 1``,
    which needs ``uᵢ/vᵢ > 1``. Defaults ``u = (2, 3)``, ``v = (1, 1)`` → ``w* = (0, ln 2)``.
    """

    leader: Variable
    follower: Variable
    u: Tensor
    v: Tensor

    def __init__(
        self,
        u: TensorLike = (2.0, 3.0),
        v: TensorLike = (1.0, 1.0),
        *,
        leader_init: TensorLike | None = None,
        follower_init: TensorLike | None = None,
        dtype: torch.dtype | None = None,
    ) -> None:
        u, v = _tensor(u, dtype, "u"), _tensor(v, dtype, "v")
        if u.shape != v.shape or u.ndim != 1:
            raise ValueError(
                f"u and v must be vectors of one length, got {tuple(u.shape)}, {tuple(v.shape)}"
            )
        if not bool(((u / v) > 1).all()):
            raise ValueError("every u_i / v_i must exceed 1 for the optimum to exist")
        super().__init__(_player(leader_init, u), _player(follower_init, u))
        self.register_buffer("u", u)
        self.register_buffer("v", v)

    def follower_loss(self, leader: Any, follower: Any, batch: Any = None) -> Tensor:
        theta = follower()
        return 0.5 * torch.sum((theta - self.u) ** 2) + 0.5 * torch.sum(
            torch.exp(leader()) * theta**2
        )

    def leader_loss(self, leader: Any, follower: Any, batch: Any = None) -> Tensor:
        return 0.5 * torch.sum((follower() - self.v) ** 2)

    def solution(self) -> Equilibrium:
        return Equilibrium(torch.log(self.u / self.v - 1.0), self.v.clone(), 0.0)


class BoxPoisoningGame(Game):
    """T5: ℓ∞-bounded poisoning of a ridge mean estimator.

    The follower fits ``h = (1/2n) Σᵢ ‖xᵢ + δᵢ − θ‖² + (λ/2)‖θ‖²``, so
    ``θ* = (x̄ + δ̄)/(1 + λ)``; the leader maximizes ``½‖θ* − μ‖²`` (``l = −½‖θ − μ‖²``) under
    ``‖δ‖∞ ≤ ε``, enforced by ``project``. Optimum: every ``δᵢⱼ = ε·sign(x̄ⱼ/(1 + λ) − μⱼ)``.
    """

    leader: Variable
    follower: Variable
    x: Tensor
    mu: Tensor

    def __init__(
        self,
        x: TensorLike,
        mu: TensorLike,
        epsilon: float,
        ridge: float = 0.5,
        *,
        follower_init: TensorLike | None = None,
        dtype: torch.dtype | None = None,
    ) -> None:
        x, mu = _tensor(x, dtype, "x"), _tensor(mu, dtype, "mu")
        if x.ndim != 2 or mu.shape != x.shape[1:]:
            raise ValueError(
                f"x must be (n, d) and mu (d,), got {tuple(x.shape)}, {tuple(mu.shape)}"
            )
        if not epsilon > 0:
            raise ValueError(f"epsilon must be > 0, got {epsilon}")
        if ridge < 0:
            raise ValueError(f"ridge must be >= 0, got {ridge}")
        super().__init__(Variable(torch.zeros_like(x)), _player(follower_init, mu))
        self.register_buffer("x", x)
        self.register_buffer("mu", mu)
        self.epsilon = float(epsilon)
        self.ridge = float(ridge)

    @classmethod
    def random(
        cls, n: int = 20, dim: int = 5, epsilon: float = 0.1, *, seed: int = 0, **kwargs: Any
    ) -> BoxPoisoningGame:
        """``x`` uniform in ``[0, 1]^(n×d)``, ``μ`` uniform in ``[0, 1]^d``, from ``seed``."""
        generator = torch.Generator().manual_seed(seed)
        x = torch.rand(n, dim, generator=generator, dtype=torch.float64)
        mu = torch.rand(dim, generator=generator, dtype=torch.float64)
        return cls(x, mu, epsilon, **kwargs)

    def follower_loss(self, leader: Any, follower: Any, batch: Any = None) -> Tensor:
        residual = self.x + leader() - follower()
        return 0.5 * torch.sum(residual**2) / self.x.shape[0] + 0.5 * self.ridge * torch.sum(
            follower() ** 2
        )

    def leader_loss(self, leader: Any, follower: Any, batch: Any = None) -> Tensor:
        return -0.5 * torch.sum((follower() - self.mu) ** 2)

    def project(self) -> None:
        self.leader.value.clamp_(-self.epsilon, self.epsilon)

    def solution(self) -> Equilibrium:
        mean = self.x.mean(dim=0)
        direction = torch.sign(mean / (1 + self.ridge) - self.mu)
        delta = self.epsilon * direction.expand_as(self.x).clone()
        theta = (mean + delta.mean(dim=0)) / (1 + self.ridge)
        return Equilibrium(delta, theta, float(-0.5 * torch.sum((theta - self.mu) ** 2)))


class DuopolyGame(Game):
    """Stackelberg competition: two firms choose quantities ``q₁`` (leader) and ``q₂``.

    Inverse demand ``p = a − b(q₁ + q₂)``, unit cost ``c``; each firm maximizes its profit
    ``qᵢ(p − c)`` (its loss is the negative). The follower's best response is
    ``q₂ = (a − c − bq₁)/(2b)``; the leader's optimum ``q₁* = (a − c)/(2b)``,
    ``q₂* = (a − c)/(4b)``. The Cournot–Nash point is ``q₁ = q₂ = (a − c)/(3b)``.
    """

    leader: Variable
    follower: Variable

    def __init__(
        self,
        a: float = 10.0,
        b: float = 1.0,
        c: float = 1.0,
        *,
        leader_init: TensorLike | None = None,
        follower_init: TensorLike | None = None,
        dtype: torch.dtype | None = None,
    ) -> None:
        if not (b > 0 and a > c):
            raise ValueError(
                f"need b > 0 and a > c for positive quantities, got a={a}, b={b}, c={c}"
            )
        zero = _tensor(0.0, dtype, "init")
        super().__init__(_player(leader_init, zero), _player(follower_init, zero))
        self.a, self.b, self.c = float(a), float(b), float(c)

    def _price(self, q1: Tensor, q2: Tensor) -> Tensor:
        return self.a - self.b * (q1 + q2)

    def leader_loss(self, leader: Any, follower: Any, batch: Any = None) -> Tensor:
        q1, q2 = leader(), follower()
        return -q1 * (self._price(q1, q2) - self.c)

    def follower_loss(self, leader: Any, follower: Any, batch: Any = None) -> Tensor:
        q1, q2 = leader(), follower()
        return -q2 * (self._price(q1, q2) - self.c)

    def _point(self, q1: float, q2: float) -> Equilibrium:
        dtype = self.leader.value.dtype
        profit = q1 * (self.a - self.b * (q1 + q2) - self.c)
        return Equilibrium(torch.tensor(q1, dtype=dtype), torch.tensor(q2, dtype=dtype), -profit)

    def solution(self) -> Equilibrium:
        margin = self.a - self.c
        return self._point(margin / (2 * self.b), margin / (4 * self.b))

    def nash(self) -> Equilibrium:
        """The Cournot–Nash point, where neither firm leads."""
        margin = self.a - self.c
        return self._point(margin / (3 * self.b), margin / (3 * self.b))
