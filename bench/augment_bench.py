"""Cost of one paired elastic deformation: elasticdeform (crop to the patch) vs MONAI.

Run: python -m bench.augment_bench [--repeats 20]
Writes bench/results/augment_bench.json and prints seconds per sample (mean over repeats) for
- 2D: a 160x160 patch (1 channel + mask) from a 192x192 region (segment.data MARGIN 16):
  segment.transforms.apply_spatial (elasticdeform, crop) vs monai Rand2DElasticd;
- 3D: a 96x96x16 patch (2 channels + mask) from 128x128x16: elasticdeform (crop, in-plane) vs
  monai Rand3DElasticd (sigma/magnitude of the same order);
- reference: elasticdeform on a whole 2-channel 320x320x24 volume without crop.
Both apply order 3 (bilinear for MONAI) to images and nearest to the mask.
"""

from __future__ import annotations

import time

import numpy as np
import torch

from bench.common import RESULTS, parser, write_result

OUT = RESULTS / "augment_bench.json"


def _time(fn, repeats):
    fn()
    t = time.perf_counter()
    for _ in range(repeats):
        fn()
    return (time.perf_counter() - t) / repeats


def main(argv=None):
    ap = parser(__doc__)
    ap.add_argument("--repeats", type=int, default=20)
    a = ap.parse_args(argv)
    torch.set_num_threads(1)  # augmentation runs in the data path, one core
    from monai.transforms import Rand2DElasticd, Rand3DElasticd

    from segment.transforms import apply_spatial, draw
    from segment.config import AugmentConfig

    rng = np.random.default_rng(0)
    cfg = AugmentConfig(elastic_p=1.0, rotate_p=1.0, scale_p=1.0, flip_p=0.0)
    res = {"repeats": a.repeats, "threads": 1}

    img2, m2 = rng.normal(size=(1, 192, 192)).astype(np.float32), rng.integers(0, 3, (192, 192)).astype(np.uint8)
    crop2 = (slice(16, 176), slice(16, 176))
    res["2d_elasticdeform_crop_s"] = _time(lambda: apply_spatial(img2, m2, draw(rng, cfg), crop2), a.repeats)
    t2 = Rand2DElasticd(keys=["image", "label"], spacing=(64, 64), magnitude_range=(0, 3), prob=1.0,
                        rotate_range=np.deg2rad(10), scale_range=0.1, spatial_size=(160, 160),
                        mode=("bilinear", "nearest"), padding_mode="border")
    d2 = {"image": torch.from_numpy(img2), "label": torch.from_numpy(m2[None].astype(np.float32))}
    res["2d_monai_Rand2DElasticd_s"] = _time(lambda: t2(d2), a.repeats)

    img3 = rng.normal(size=(2, 128, 128, 16)).astype(np.float32)
    m3 = rng.integers(0, 3, (128, 128, 16)).astype(np.uint8)
    crop3 = (slice(16, 112), slice(16, 112))  # in-plane; the 16 slices are kept
    res["3d_elasticdeform_crop_s"] = _time(lambda: apply_spatial(img3, m3, draw(rng, cfg), crop3), a.repeats)
    t3 = Rand3DElasticd(keys=["image", "label"], sigma_range=(5, 7), magnitude_range=(50, 150), prob=1.0,
                        rotate_range=(0, 0, np.deg2rad(10)), scale_range=(0.1, 0.1, 0), spatial_size=(96, 96, 16),
                        mode=("bilinear", "nearest"), padding_mode="border")
    d3 = {"image": torch.from_numpy(img3), "label": torch.from_numpy(m3[None].astype(np.float32))}
    res["3d_monai_Rand3DElasticd_s"] = _time(lambda: t3(d3), a.repeats)

    full = rng.normal(size=(2, 320, 320, 24)).astype(np.float32)
    mfull = rng.integers(0, 3, (320, 320, 24)).astype(np.uint8)
    res["full_volume_elasticdeform_no_crop_s"] = _time(
        lambda: apply_spatial(full, mfull, draw(rng, cfg), (slice(0, 320), slice(0, 320))), max(1, a.repeats // 10))
    write_result(res, OUT)
    for k, v in res.items():
        print(f"{k}: {v:.4f}" if isinstance(v, float) else f"{k}: {v}")
    print(f"wrote {OUT}")


if __name__ == "__main__":
    main()
