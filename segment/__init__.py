"""segment: train, predict and evaluate MONAI U-Net style zonal segmenters (WG, TZ, PZ)."""
