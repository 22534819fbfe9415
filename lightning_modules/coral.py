"""Deep CORAL: correlation alignment (Sun & Saenko, ECCV-W 2016).

Source cross-entropy plus lambda x l_CORAL = ||C_S - C_T||_F^2 / (4 d^2) (Eq. 1) between the
covariances of source and target activations (Eq. 5: l = l_class + sum_i lambda_i l_CORAL).
The paper aligns the last layer (fc8, the logits), the default here.
"""
from __future__ import annotations

from .components.domain import coral_loss
from .domain_adaptation import DiscrepancyAdaptation


class CORAL(DiscrepancyAdaptation):
    def discrepancy(self, source, target):
        return coral_loss(source, target)
