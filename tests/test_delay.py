from __future__ import annotations

import pytest
import torch

from mimo_audio.delay import apply_delay, delay_index, delay_schedule, num_steps, undo_delay


@pytest.mark.parametrize("G,delays", [(4, (0, 1, 2, 3, 4, 5, 6, 7)), (2, (0, 1, 3)), (3, (0, 0, 2)), (1, (2, 0)),
                                      (5, (1, 1, 1))])
def test_round_trip_and_schedule(G, delays):
    C = len(delays)
    codes = torch.randint(0, 100, (3, G, C))
    d = apply_delay(codes, delays, -1)
    S = num_steps(delays, G)
    assert d.shape == (3, S, C)
    assert torch.equal(undo_delay(d, delays, G), codes)
    sched = delay_schedule(delays, G)
    # every (channel, frame) is emitted exactly once, at step d_c + f, and idle entries hold the fill
    seen = sorted(pair for step in sched for pair in step)
    assert seen == sorted((c, f) for c in range(C) for f in range(G))
    for s, step in enumerate(sched):
        active = {c for c, _ in step}
        for c, f in step:
            assert f == s - delays[c]
            assert torch.equal(d[:, s, c], codes[:, f, c])
        for c in set(range(C)) - active:
            assert (d[:, s, c] == -1).all()
    frame, valid = delay_index(delays, G)
    assert valid.sum().item() == G * C


def test_reference_schedule_table():
    """SPEC §5.2: G = 4, delays 0..7 -> 11 steps; step 4 emits 1(3) 2(2) 3(1) 4(0); step 10 emits 7(3)."""
    sched = delay_schedule(tuple(range(8)), 4)
    assert len(sched) == 11
    assert sched[0] == [(0, 0)]
    assert sched[4] == [(1, 3), (2, 2), (3, 1), (4, 0)]
    assert sched[10] == [(7, 3)]


def test_per_channel_fill():
    codes = torch.zeros(2, 3, dtype=torch.long)  # G = 2, C = 3
    d = apply_delay(codes, (0, 2, 1), torch.tensor([7, 8, 9]))  # S = 4
    assert d[:, 0].tolist() == [0, 0, 7, 7]
    assert d[:, 1].tolist() == [8, 8, 0, 0]
    assert d[:, 2].tolist() == [9, 0, 0, 9]


def test_bad_delays():
    with pytest.raises(ValueError):
        delay_schedule((0, -1), 4)
