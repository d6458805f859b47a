"""Guidance: which slices should the person draw next (DESIGN §2 step 5).

* :mod:`~engine.guide.rules`: the proposal rules behind one registry
  (:data:`REGISTRY`; :data:`RULES` the product's, :data:`EXPERIMENTAL` the harness's),
  :func:`propose` and :func:`residual_scores` (the residual map ``R = w |Q - P|``
  reduced per slice by :func:`engine.ops.slice_residuals`, one fused pass);
* :mod:`~engine.guide.plans`: planned slice sets split over rounds (:data:`PLANS`);
* :mod:`~engine.guide.geometry`: even spacing, cell centres, distances.
"""

from .geometry import cell_centres, chebyshev_slices, distance_to_annotated, even_slices, symmetric_slices
from .plans import PLANS, plan_slices, split_rounds
from .rules import EXPERIMENTAL, REGISTRY, RULES, ProposalContext, Rule, propose, register_rule, residual_scores

__all__ = [
    "EXPERIMENTAL",
    "PLANS",
    "REGISTRY",
    "RULES",
    "ProposalContext",
    "Rule",
    "cell_centres",
    "chebyshev_slices",
    "distance_to_annotated",
    "even_slices",
    "plan_slices",
    "propose",
    "register_rule",
    "residual_scores",
    "split_rounds",
    "symmetric_slices",
]
