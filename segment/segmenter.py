"""What every segmenter (PyTorch: segment.torch_segmenter.Segmenter; ONNX Runtime: segment.onnx_segmenter
.OnnxSegmenter) does with a volume: preprocess -> `probabilities` on the working grid -> restore onto
the input grid -> zones (argmax, optional largest gland component). Torch-free."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from mricore.preprocess import Prepared, preprocess, restore
from mricore.volume import Volume
from mricore.zones import keep_largest_component, labels_from_probabilities

# Outside the working grid (the cropped field of view) every segmenter says background, probability 1.
BACKGROUND = [1.0, 0.0, 0.0]


@dataclass(frozen=True)
class Prediction:
    """One volume's result on its own grid (I, J, K)."""

    label: np.ndarray       # (I, J, K) uint8 zones
    prob: np.ndarray        # (3, I, J, K) float32 background/TZ/PZ probabilities
    prepared: Prepared      # the working grid the network ran on
    work_label: np.ndarray  # (I', J', K') uint8 zones on that working grid (argmax, no largest component)


class VolumePredictor:
    """Mixin: `predict(volume)` for a class with `spec`, `predict_cfg` and `probabilities(array, tta_flip)`."""

    @property
    def channels(self) -> list[str]:
        return list(self.spec.channels)

    def predict(self, image: Volume, largest_component: bool | None = None,
                tta_flip: bool | None = None) -> Prediction:
        """Image Volume (channels named as `spec.channels`, on its reference grid) -> Prediction on that
        grid. largest_component / tta_flip: None = the model's predict settings."""
        prep = preprocess(image, self.spec)
        work = self.probabilities(prep.array, tta_flip)
        prob = restore(work, prep, fill=BACKGROUND)
        label = labels_from_probabilities(prob)
        if self.predict_cfg.largest_component if largest_component is None else largest_component:
            label = keep_largest_component(label)
        return Prediction(label, prob, prep, labels_from_probabilities(work))
