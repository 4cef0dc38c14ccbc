"""BCE + Jaccard loss (the loss of the JSRT/SCR U-Net study), on logits, for one or several sigmoid channels."""

from __future__ import annotations


class BCEJaccardLoss:
    """``bce_weight * BCEWithLogits + jaccard_weight * soft Jaccard loss``.

    The Jaccard term is segmentation_models_pytorch's ``JaccardLoss`` in multilabel mode
    (per channel over the batch, averaged over channels; channels whose target is empty
    in the whole batch are ignored, as in smp).
    """

    def __init__(self, bce_weight: float = 1.0, jaccard_weight: float = 1.0):
        import torch
        from segmentation_models_pytorch.losses import JaccardLoss

        self.bce_weight = float(bce_weight)
        self.jaccard_weight = float(jaccard_weight)
        self._bce = torch.nn.BCEWithLogitsLoss()
        self._jac = JaccardLoss(mode="multilabel", from_logits=True)

    def __call__(self, logits, target):
        logits = logits.float()
        target = target.float()
        loss = 0.0
        if self.bce_weight:
            loss = loss + self.bce_weight * self._bce(logits, target)
        if self.jaccard_weight:
            loss = loss + self.jaccard_weight * self._jac(logits, target)
        return loss
