"""Simulated survey fields (issue 22, item 2's training data)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from dwgf_sci.datasets import FieldDataset
from dwgf_sci.datasets.fields import KINDS


def test_fields_are_deterministic_nonnegative_and_hold_their_objects():
    ds = FieldDataset(4, size=128, seed=3)
    x = ds[2]
    assert x.shape == (1, 128, 128) and x.dtype == torch.float32
    assert torch.equal(x, FieldDataset(4, size=128, seed=3)[2])  # a function of (seed, i)
    assert not torch.equal(x, FieldDataset(4, size=128, seed=4)[2])
    assert bool((x >= 0).all())
    objects = ds.objects(2)
    inside = [o for o in objects if 8 < o["x"] < 120 and 8 < o["y"] < 120 and o["kind"] == "star"]
    for star in inside:  # a point source's light sits at its position
        iy, ix = int(star["y"]), int(star["x"])
        assert float(x[0, iy - 2 : iy + 3, ix - 2 : ix + 3].sum()) > 0.5 * star["flux"]
    # the light drawn is the objects' flux less what falls off the field's edges
    assert float(x.sum()) <= sum(o["flux"] for o in objects) * 1.001


def test_fields_mix_every_kind_blends_and_empty_sky():
    ds = FieldDataset(12, size=128, seed=0)
    objects = [o for i in range(len(ds)) for o in ds.objects(i)]
    assert {o["kind"] for o in objects} == set(KINDS)
    counts = [len(ds.objects(i)) for i in range(len(ds))]
    assert np.mean(counts) == pytest.approx(ds.density * 4, rel=0.35)
    x = ds[0][0]
    assert float((x < 1e-3 * x.max()).float().mean()) > 0.5  # mostly sky
    close = [
        (a, b)
        for i in range(len(ds))
        for j, a in enumerate(ds.objects(i))
        for b in ds.objects(i)[j + 1 :]
        if abs(a["x"] - b["x"]) < 8 and abs(a["y"] - b["y"]) < 8
    ]
    assert close  # blends occur
