"""Which cases a localize fold trains on, validates on and holds out.

The protocol itself (patient-level folds, `data.splits_file` checks, the inner split) is
mricore.protocol's; localize adds which cases take part (labelled_cases) and stratifies by lesion
presence, in the outer folds and in the inner draw (a lesion patient first, one always kept for
training). The CNN (localize.train), the baseline (localize.baseline) and the benches split alike.
"""

from __future__ import annotations

from mricore.protocol import Fold, split_fold


def labelled_cases(data, channels: list[str]) -> list[tuple]:
    """(case, zone-map key) of every case of `data` (a DataConfig) in its datasets with the lesion
    label, a zone map (the first of data.zones present) and the channels: the cases training uses,
    in load order (so folds made from them are the same everywhere)."""
    from mricore.datasets import load_dataset

    out = []
    for c in load_dataset(data.root):
        if data.datasets and c.dataset not in data.datasets:
            continue
        zkey = next((k for k in data.zones if k in c.labels), None)
        if data.label in c.labels and zkey is not None and all(ch in c.images for ch in channels):
            out.append((c, zkey))
    return out


def split_items(data, items: list[dict], fold, inner: bool) -> Fold:
    """Fold `fold` of `items` (dicts with "case" and "positive", lesion presence) under mricore.protocol,
    stratified by lesion presence; the Fold holds the items themselves. `inner`: draw the inner split."""
    split = split_fold(data, [i["case"] for i in items], fold, inner, [i["positive"] for i in items])
    by_id = {i["case"].case_id: i for i in items}

    def of(cases):
        return [by_id[c.case_id] for c in cases]

    return Fold(of(split.train), of(split.inner), of(split.held_out), split.splits)
