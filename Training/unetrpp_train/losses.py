"""Dice + cross-entropy with deep supervision (nnU-Net's DC_and_CE_loss wrapped in MultipleOutputLoss2),
built from MONAI: `DiceCELoss` (soft Dice without background, computed over the whole batch as
nnU-Net's batch Dice, smoothing 1e-5) inside `DeepSupervisionLoss`, which resizes the target to
each output's grid (nearest neighbour) and weights the outputs 4/7, 2/7, 1/7.
"""

from __future__ import annotations

from typing import Sequence

from monai.losses import DeepSupervisionLoss, DiceCELoss
from torch import nn


def segmentation_loss(ds_weights: Sequence[float] = (4 / 7, 2 / 7, 1 / 7), batch_dice: bool = True) -> nn.Module:
    base = DiceCELoss(
        include_background=False,
        to_onehot_y=True,
        softmax=True,
        batch=batch_dice,
        smooth_nr=1e-5,
        smooth_dr=1e-5,
        lambda_dice=1.0,
        lambda_ce=1.0,
    )
    return DeepSupervisionLoss(base, weights=list(ds_weights))
