"""Interchangeable bilevel solvers: each is ``Solver(game, leader_opt, follower_opt, **options)``.

=================  ==========================================================================
``GDA``            each player descends its own gradient: finds Nash points (the baseline)
``BOME``           value-function method with the dynamic barrier: first order, O(P) memory
``BackGradient``   unrolled differentiation through T follower steps (store/checkpoint/reverse)
``TotalGradient``  implicit-function hypergradient by CG / Neumann on Hessian-vector products
``SOBA``           single loop: follower, linear-system estimate and leader one step each
``F2SA``           fully first-order penalty (Kwon et al. 2023): follower and auxiliary steps,
                   no second derivative
``SABA``           SOBA with SAGA's memory per data block: variance-reduced on finite sums
=================  ==========================================================================

``make`` builds any of them by name (``"gda"``, ``"bome"``, ``"backgradient"``,
``"total_gradient"``, ``"soba"``, ``"f2sa"``, ``"saba"``); each takes a frozen option record
(``BOMEOptions``, ...) and has ``state_dict()`` / ``load_state_dict()``. The
implicit-function method takes its linear solver as an object: ``CG(max_iterations, tol)``,
``NormalCG(...)``, ``Neumann(step, max_iterations)``.
"""

from stackelberg.solvers.backgradient import BackGradient, BackGradientOptions
from stackelberg.solvers.base import Solver, StepInfo
from stackelberg.solvers.bome import BOME, BOMEOptions
from stackelberg.solvers.f2sa import F2SA, F2SAOptions
from stackelberg.solvers.gda import GDA, GDAOptions
from stackelberg.solvers.linsolve import CG, LinearSolver, Neumann, NormalCG, cg, neumann, normal_cg
from stackelberg.solvers.options import HypergradientOptions, SolverOptions
from stackelberg.solvers.registry import SOLVERS, make, options_for
from stackelberg.solvers.saba import SABA, SABAOptions
from stackelberg.solvers.soba import SOBA, SOBAOptions
from stackelberg.solvers.total_gradient import TotalGradient, TotalGradientOptions

__all__ = [
    "BOME",
    "CG",
    "F2SA",
    "GDA",
    "SABA",
    "SOBA",
    "SOLVERS",
    "BOMEOptions",
    "BackGradient",
    "BackGradientOptions",
    "F2SAOptions",
    "GDAOptions",
    "HypergradientOptions",
    "LinearSolver",
    "Neumann",
    "NormalCG",
    "SABAOptions",
    "SOBAOptions",
    "Solver",
    "SolverOptions",
    "StepInfo",
    "TotalGradient",
    "TotalGradientOptions",
    "cg",
    "make",
    "neumann",
    "normal_cg",
    "options_for",
]
