"""The delay pattern (SPEC §5.2, §8.3) as pure tensor code, shared by generation and training targets.

A patch of ``G`` frames x ``C`` channels is produced by the patch decoder in ``S = G + max(delays)`` steps;
channel ``c`` emits its frame ``f`` at step ``delays[c] + f``. The *delayed grid* ``(S, C)`` holds at step
``s`` the token each channel emits there, or a fill value where the channel is idle.

Worked example, ``G = 2``, ``delays = (0, 1, 3)``, ``fill = -1`` (frames named ``a0 a1`` / ``b0 b1`` / ``c0 c1``)::

    codes (G, C)      delayed (S = 5, C)
    a0 b0 c0          a0 -1 -1      step 0: channel 0 frame 0
    a1 b1 c1          a1 b0 -1      step 1
                      -1 b1 -1      step 2
                      -1 -1 c0      step 3
                      -1 -1 c1      step 4

>>> import torch
>>> codes = torch.tensor([[10, 20, 30], [11, 21, 31]])
>>> apply_delay(codes, (0, 1, 3), -1).tolist()
[[10, -1, -1], [11, 20, -1], [-1, 21, -1], [-1, -1, 30], [-1, -1, 31]]
>>> undo_delay(apply_delay(codes, (0, 1, 3), -1), (0, 1, 3), 2).tolist()
[[10, 20, 30], [11, 21, 31]]
>>> delay_schedule((0, 1, 2, 3), 4)[4]
[(1, 3), (2, 2), (3, 1)]
"""

from __future__ import annotations

from collections.abc import Sequence

import torch


def num_steps(delays: Sequence[int], group_size: int) -> int:
    """Decoder steps per patch: ``group_size + max(delays)``."""
    return group_size + max(delays)


def delay_schedule(delays: Sequence[int], group_size: int) -> list[list[tuple[int, int]]]:
    """For each step ``s``: the ``(channel, frame)`` pairs emitted there, channels ascending.

    >>> delay_schedule((0, 1), 2)
    [[(0, 0)], [(0, 1), (1, 0)], [(1, 1)]]
    """
    if group_size < 1 or not delays or min(delays) < 0:
        raise ValueError(f"need group_size >= 1 and non-negative delays, got {group_size}, {tuple(delays)}")
    return [[(c, s - d) for c, d in enumerate(delays) if d <= s < d + group_size]
            for s in range(num_steps(delays, group_size))]


def delay_index(delays: Sequence[int], group_size: int, device=None) -> tuple[torch.Tensor, torch.Tensor]:
    """``(frame, valid)`` ``(S, C)``: the frame of channel ``c`` emitted at step ``s`` (clamped) and whether
    channel ``c`` is active at step ``s``.

    >>> f, v = delay_index((0, 1), 2)
    >>> f.tolist(), v.tolist()
    ([[0, 0], [1, 0], [1, 1]], [[True, False], [True, True], [False, True]])
    """
    d = torch.as_tensor(list(delays), device=device)
    s = torch.arange(num_steps(delays, group_size), device=device)[:, None]
    frame = s - d[None]
    valid = (frame >= 0) & (frame < group_size)
    return frame.clamp(0, group_size - 1), valid


def apply_delay(codes: torch.Tensor, delays: Sequence[int], fill) -> torch.Tensor:
    """``codes`` ``(..., G, C)`` -> delayed grid ``(..., S, C)``; idle entries take ``fill`` (a scalar or a
    per-channel tensor ``(C,)``)."""
    G, C = codes.shape[-2:]
    if len(delays) != C:
        raise ValueError(f"{len(delays)} delays for {C} channels")
    frame, valid = delay_index(delays, G, codes.device)
    chan = torch.arange(C, device=codes.device)
    picked = codes[..., frame, chan[None].expand_as(frame)]  # (..., S, C)
    fill = torch.as_tensor(fill, dtype=codes.dtype, device=codes.device)
    return torch.where(valid, picked, fill)


def undo_delay(delayed: torch.Tensor, delays: Sequence[int], group_size: int) -> torch.Tensor:
    """Delayed grid ``(..., S, C)`` -> codes ``(..., G, C)``: frame ``f`` of channel ``c`` is step ``d_c + f``."""
    C = delayed.shape[-1]
    d = torch.as_tensor(list(delays), device=delayed.device)
    f = torch.arange(group_size, device=delayed.device)[:, None]
    step = f + d[None]  # (G, C)
    chan = torch.arange(C, device=delayed.device)[None].expand_as(step)
    return delayed[..., step, chan]
