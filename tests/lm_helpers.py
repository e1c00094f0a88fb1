"""A tiny random MiMo-Audio LM for unit tests (no fixture needed)."""

from __future__ import annotations

import torch

from mimo_audio.config import LMConfig
from mimo_audio.lm import MimoAudioLM

EMPTY = 60  # the <|empty|> text id of the tiny vocabulary


def tiny_config(**kw) -> LMConfig:
    base = dict(vocab_size=64, hidden_size=32, intermediate_size=48, num_hidden_layers=2, num_attention_heads=4,
                num_key_value_heads=2, head_dim=8, max_position_embeddings=256, rope_theta=10000.0,
                speech_vocab_size=(17, 17, 9), speech_zeroemb_idx=(16, 16, 8), delay_pattern=(0, 1, 2),
                group_size=2, audio_channels=3, local_dim=16, local_layers=2, local_attn_heads=2, local_ffn_dim=24,
                input_local_layers=1, input_local_dim=16)
    base.update(kw)
    return LMConfig(**base)


def tiny_lm(seed: int = 0, **kw) -> MimoAudioLM:
    torch.manual_seed(seed)
    lm = MimoAudioLM(tiny_config(**kw))
    with torch.no_grad():
        for name, p in lm.named_parameters():
            if name.endswith("norm1.weight") or name.endswith("norm2.weight") or name.endswith("norm.weight"):
                p.uniform_(0.5, 1.5)
            else:
                p.normal_(0, 0.3)
        # make <|empty|> likely so free generation mixes text and audio groups
        lm.lm_head.weight[EMPTY] *= 3
    return lm.eval()


def random_grid(lm: MimoAudioLM, groups: int, seed: int = 0, speech_every: int = 2) -> torch.Tensor:
    """A (9-like, G*groups) grid mixing text groups and audio groups."""
    c = lm.config
    g = torch.Generator().manual_seed(seed)
    G, C = c.group_size, c.audio_channels
    grid = torch.empty(C + 1, G * groups, dtype=torch.long)
    grid[0] = -100
    for n in range(groups):
        cols = slice(n * G, (n + 1) * G)
        if n % speech_every == 1:
            grid[0, n * G] = EMPTY
            for ch in range(C):
                grid[1 + ch, cols] = torch.randint(0, c.speech_zeroemb_idx[ch], (G,), generator=g)
        else:
            grid[0, n * G] = int(torch.randint(0, EMPTY, (1,), generator=g))
            grid[1:, cols] = torch.tensor(c.speech_zeroemb_idx)[:, None]
    return grid


def greedy_pick(lm: MimoAudioLM, seen: list | None = None):
    """A patch-decoder ``pick`` that takes the argmax with each active channel's empty id banned (the delay plan's
    ban); the logits it was given are appended to ``seen`` when a list is passed."""
    plan = lm.delay_plan(lm.device)

    def pick(p, logits):
        if seen is not None:
            seen.append(logits.clone())
        return (logits + plan[p][2]).argmax(-1)

    return pick
