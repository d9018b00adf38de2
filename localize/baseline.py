"""An interpretable baseline: zone-wise intensity statistics and logistic regression, per patient.

Features of one study (T2W always, ADC where the study has one; the zone map on the T2W grid):
for each zone (TZ, PZ) the T2W mean, standard deviation and 5th / 25th percentiles after scaling by
the gland's own median (so scanners with other gains compare), the zone's volume in mL, and the ADC
mean and 10th percentile (a missing ADC is 0 with an `adc_missing` indicator). Clinical covariates
(localize.config.CLINICAL) can be added with their missing indicators. A standardised L2 logistic
regression with balanced class weights turns them into a patient probability; its coefficients say
which feature pushed the call.

    >>> f = zone_features(image, zones)            # dict name -> value
    >>> model = LogisticBaseline().fit(X, y)        # X: (patients, features)
"""

from __future__ import annotations

import numpy as np

from mricore.volume import Volume
from mricore.zones import CLASS_NAMES

ZONES = (1, 2)


def zone_features(image: Volume, zones: Volume) -> dict[str, float]:
    """Zone-wise statistics of a study whose channels (T2W first, optional ADC) and zone map share a grid."""
    z = zones.array[0]
    t2 = image.channel("T2W")
    gland = z > 0
    ref = float(np.median(t2[gland])) if gland.any() else 1.0
    ref = ref if ref > 0 else 1.0
    adc = image.channel("ADC") if "ADC" in image.channels else None
    out = {}
    for k in ZONES:
        name = CLASS_NAMES[k]
        m = z == k
        v = t2[m] / ref if m.any() else np.zeros(1)
        out |= {f"{name}_t2_mean": float(v.mean()), f"{name}_t2_sd": float(v.std()),
                f"{name}_t2_p5": float(np.percentile(v, 5)), f"{name}_t2_p25": float(np.percentile(v, 25)),
                f"{name}_volume_ml": float(m.sum() * zones.voxel_volume_ml)}
        a = adc[m] if adc is not None and m.any() else None
        out |= {f"{name}_adc_mean": float(a.mean()) if a is not None else 0.0,
                f"{name}_adc_p10": float(np.percentile(a, 10)) if a is not None else 0.0}
    out["adc_missing"] = float(adc is None)
    return out


class LogisticBaseline:
    """StandardScaler + L2 logistic regression (C = `c`, balanced class weights), scikit-learn."""

    def __init__(self, c: float = 0.3):
        self.c = c
        self.model = None

    def fit(self, x: np.ndarray, y: np.ndarray) -> "LogisticBaseline":
        from sklearn.linear_model import LogisticRegression
        from sklearn.pipeline import make_pipeline
        from sklearn.preprocessing import StandardScaler

        self.model = make_pipeline(StandardScaler(), LogisticRegression(C=self.c, class_weight="balanced",
                                                                         max_iter=1000))
        self.model.fit(np.asarray(x, float), np.asarray(y, int))
        return self

    def predict(self, x: np.ndarray) -> np.ndarray:
        """(n, features) -> (n,) probability of a lesion."""
        return self.model.predict_proba(np.asarray(x, float))[:, 1]

    def coefficients(self, names: list[str]) -> dict[str, float]:
        """Standardised coefficients by feature name (positive = raises the lesion probability)."""
        return dict(zip(names, map(float, self.model[-1].coef_[0])))
