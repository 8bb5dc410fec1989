"""A student's cost (parameters, saved size, FLOPs, latency, throughput) adds up."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from kdsearch.distill.metrics import cost_row, count_parameters, flops_per_image, size_mb
from kdsearch.nets.models import build_model


def test_cost_table_numbers_are_consistent(tmp_path):
    model = build_model("light_nn", 10, 1, 28)
    row = cost_row(model, torch.randn(1, 1, 28, 28))
    assert row["params"] == sum(p.numel() for p in model.parameters()) == count_parameters(model) == 206_010
    path = tmp_path / "m.pt"
    torch.save(model.state_dict(), path)
    assert row["size_mb"] == pytest.approx(path.stat().st_size / 1e6, rel=0.03)
    assert row["size_mb"] == pytest.approx(size_mb(model))
    assert row["latency_ms"] > 0 and row["throughput"] > 0
    # FLOPs are counted by torch.utils.flop_counter: a linear layer is 2 * in * out per image
    assert flops_per_image(nn.Linear(100, 10), torch.randn(1, 100)) == 2 * 100 * 10
    assert row["flops"] > 2 * (784 * 256 + 256 * 10)
