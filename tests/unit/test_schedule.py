"""Our learning-rate schedules give transformers' multipliers at every step (they replace get_scheduler)."""
from __future__ import annotations

import pytest
import torch
from transformers import get_scheduler

from tlscale.training.schedule import lr_schedule


@pytest.mark.parametrize("ours, theirs", [("linear", "linear"), ("cosine", "cosine"),
                                          ("constant", "constant_with_warmup")])
@pytest.mark.parametrize("warmup, total", [(0, 7), (3, 20), (10, 10)])
def test_multipliers_equal_transformers(ours, theirs, warmup, total):
    def lrs(make):
        optimizer = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=0.5)
        schedule = make(optimizer)
        values = []
        for _ in range(total + 2):
            values.append(schedule.get_last_lr()[0])
            optimizer.step()
            schedule.step()
        return values

    expected = lrs(lambda o: get_scheduler(theirs, o, num_warmup_steps=warmup, num_training_steps=total))
    assert lrs(lambda o: lr_schedule(ours, o, warmup, total)) == pytest.approx(expected, abs=1e-12)


def test_a_resumed_schedule_continues_where_it_stopped():
    optimizer = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=1.0)
    first = lr_schedule("linear", optimizer, 2, 10)
    for _ in range(5):
        optimizer.step()
        first.step()
    second = lr_schedule("linear", torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=1.0), 2, 10)
    second.load_state_dict(first.state_dict())
    assert second.get_last_lr() == first.get_last_lr() == pytest.approx([0.625])
