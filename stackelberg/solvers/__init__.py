"""Interchangeable bilevel solvers: each is ``Solver(game, leader_opt, follower_opt, **options)``.

=================  ==========================================================================
``GDA``            each player descends its own gradient: finds Nash points (the baseline)
``BOME``           value-function method with the dynamic barrier: first order, O(P) memory
``BackGradient``   unrolled differentiation through T follower steps (store/checkpoint/reverse)
``TotalGradient``  implicit-function hypergradient by CG / Neumann on Hessian-vector products
``SOBA``           single loop: follower, linear-system estimate and leader one step each
=================  ==========================================================================
"""

from stackelberg.solvers.backgradient import BackGradient
from stackelberg.solvers.base import Solver, StepInfo
from stackelberg.solvers.bome import BOME
from stackelberg.solvers.gda import GDA
from stackelberg.solvers.soba import SOBA
from stackelberg.solvers.total_gradient import TotalGradient

__all__ = ["BOME", "GDA", "SOBA", "BackGradient", "Solver", "StepInfo", "TotalGradient"]
