from __future__ import annotations

import dataclasses
import json

import pytest
import torch
from safetensors.torch import save_file

from lm_helpers import EMPTY, greedy_pick, random_grid, tiny_lm
from mimo_audio import CheckpointError, MimoAudioLM
from mimo_audio.delay import delay_schedule
from mimo_audio.lm import key_table, released_state_dict


def released_keys(c) -> set[str]:
    """The released key list of SPEC §3.4, written out independently of the loader's table."""
    keys = {"model.embed_tokens.weight", "model.norm.weight", "lm_head.weight", "speech_group_downcast.weight",
            "hidden_states_downcast.weight", "local_transformer.norm.weight", "input_local_transformer.norm.weight"}
    for prefix, n in (("model", c.num_hidden_layers), ("local_transformer", c.local_layers),
                      ("input_local_transformer", c.input_local_layers)):
        for i in range(n):
            for p in ("q", "k", "v"):
                keys |= {f"{prefix}.layers.{i}.self_attn.{p}_proj.weight", f"{prefix}.layers.{i}.self_attn.{p}_proj.bias"}
            keys |= {f"{prefix}.layers.{i}.self_attn.o_proj.weight", f"{prefix}.layers.{i}.mlp.gate_proj.weight",
                     f"{prefix}.layers.{i}.mlp.up_proj.weight", f"{prefix}.layers.{i}.mlp.down_proj.weight",
                     f"{prefix}.layers.{i}.input_layernorm.weight",
                     f"{prefix}.layers.{i}.post_attention_layernorm.weight"}
    for ch in range(c.audio_channels):
        keys |= {f"speech_embeddings.{ch}.weight", f"local_transformer_lm_heads.{ch}.weight"}
    if c.input_local_dim != c.local_dim:
        keys |= {"speech_embeddings_to_local.weight", "speech_embeddings_to_local.bias"}
    return keys


@pytest.mark.parametrize("kw", [{}, {"input_local_dim": 24}])
def test_every_released_key_maps_exactly_once(kw):
    lm = tiny_lm(**kw)
    table = key_table(lm.config)
    assert set(table) == released_keys(lm.config)
    # every element of every parameter is written by exactly one released key
    params = dict(lm.named_parameters())
    hits = {n: torch.zeros(p.shape[0], dtype=torch.long) for n, p in params.items()}
    for name, sl in table.values():
        hits[name][sl if sl is not None else slice(None)] += 1
    assert all(bool((h == 1).all()) for h in hits.values()), [n for n, h in hits.items() if not (h == 1).all()]


def test_released_config_shapes():
    """The released sizes (SPEC §3.1/§3.4) on the meta device: sub-config derivation and parameter count."""
    from mimo_audio.config import LMConfig

    c = LMConfig(vocab_size=151680, hidden_size=4096, intermediate_size=11008, num_hidden_layers=36,
                 num_attention_heads=32, num_key_value_heads=8, head_dim=128, max_position_embeddings=8192,
                 rope_theta=640000.0)
    with torch.device("meta"):
        lm = MimoAudioLM(c)
    sd = {k: tuple(v.shape) for k, v in released_state_dict(lm).items()}
    assert sd["model.layers.0.self_attn.k_proj.weight"] == (1024, 4096)
    assert sd["local_transformer.layers.3.mlp.gate_proj.weight"] == (4096, 1024)
    assert sd["input_local_transformer.layers.5.mlp.down_proj.weight"] == (1024, 4096)
    assert sd["speech_group_downcast.weight"] == (4096, 4096)
    assert sum(p.numel() for p in lm.parameters()) == 8_018_587_648
    assert lm.patch_decoder.cfg.head_dim == 16 and lm.patch_encoder.cfg.heads == 64


def _save(lm, folder, tensors=None):
    cfg = {k: (("-".join(map(str, v))) if isinstance(v, tuple) else v)
           for k, v in dataclasses.asdict(lm.config).items()}
    (folder / "config.json").write_text(json.dumps(cfg))
    save_file(tensors if tensors is not None else released_state_dict(lm), str(folder / "model.safetensors"))


def test_load_round_trip_and_strictness(tmp_path):
    lm = tiny_lm()
    _save(lm, tmp_path)
    again = MimoAudioLM.from_pretrained(tmp_path, device="cpu")
    grid = random_grid(lm, 6)[None]
    with torch.no_grad():
        assert torch.equal(lm(grid, empty_id=EMPTY).text_logits, again(grid, empty_id=EMPTY).text_logits)
    sd = released_state_dict(lm)
    for broken, needle in (
        ({k: v for k, v in sd.items() if k != "local_transformer.layers.1.self_attn.v_proj.bias"},
         "local_transformer.layers.1.self_attn.v_proj.bias"),
        ({**sd, "model.layers.0.self_attn.rotary_emb.inv_freq": torch.zeros(4)},
         "model.layers.0.self_attn.rotary_emb.inv_freq"),
        ({**sd, "lm_head.weight": torch.zeros(3, 3)}, "lm_head.weight"),
    ):
        folder = tmp_path / f"b{len(list(tmp_path.iterdir()))}"
        folder.mkdir()
        _save(lm, folder, broken)
        with pytest.raises(CheckpointError, match=needle.replace(".", r"\.")):
            MimoAudioLM.from_pretrained(folder, device="cpu")


def test_cache_equals_no_cache():
    """The generation path (prefill, then per group decode + embed_group + backbone_step, patch encoder included)
    against one full forward: audio groups are fed through the patch decoder with their own codes
    (teacher-forced picks)."""
    lm = tiny_lm()
    G = lm.config.group_size
    grid = random_grid(lm, 9)
    k = 4
    with torch.no_grad():
        full = lm(grid[None], empty_id=EMPTY)
        cache = lm.new_cache(1, 12)
        h = lm.prefill(grid[None, :, : k * G], torch.tensor([k]), cache, EMPTY)
        assert torch.allclose(lm.lm_head(h), full.text_logits[:, k - 1], atol=1e-5)
        lengths = torch.tensor([[k]])
        step = cache.step(lengths, 12)
        sched = delay_schedule(lm.config.delay_pattern, G)
        n_speech = 0
        for n in range(k, 9):
            group = grid[:, n * G: (n + 1) * G]
            text = group[0, :1]
            codes = None
            if int(text) == EMPTY:
                target = group[1:].T  # (G, C)
                codes = lm.decode_patch(lm.hidden_downcast(h), lambda p, logits, t=target: torch.stack(
                    [t[f, ch] for ch, f in sched[p]])[None])
                assert torch.equal(codes[0], target)
                n_speech += 1
            step.refresh()
            h = lm.backbone_step(lm.embed_group(text, codes), step)
            lengths += 1
            assert torch.allclose(lm.lm_head(h), full.text_logits[:, n], atol=1e-5), n
            assert torch.allclose(lm.hidden_downcast(h), full.local_inputs[:, n], atol=1e-5)
    assert 0 < n_speech < 9 - k  # both kinds of group were fed


def test_teacher_forced_logits_equal_greedy_decoding():
    lm = tiny_lm(seed=3)
    first = torch.randn(5, lm.config.local_dim)
    seen = []
    pick = greedy_pick(lm, seen)
    with torch.no_grad():
        codes = lm.decode_patch(first, pick)
        tf = lm.decode_teacher_forced(first, codes)
    sched = delay_schedule(lm.config.delay_pattern, lm.config.group_size)
    for p, step in enumerate(sched):
        for j, (ch, f) in enumerate(step):
            v = lm.config.speech_vocab_size[ch]
            assert torch.allclose(seen[p][:, j, :v], tf[ch][:, f], atol=1e-5), (p, ch)
            assert torch.isinf(seen[p][:, j, v:]).all()  # padding to the largest vocabulary
    assert not any((codes[..., ch] == e).any() for ch, e in enumerate(lm.config.speech_zeroemb_idx))


def test_training_loss_matches_definition():
    lm = tiny_lm(seed=1)
    grid = torch.stack([random_grid(lm, 8, seed=s) for s in range(2)])
    labels = grid.clone()
    labels[:, :, :4] = -100  # first two groups unsupervised
    out = lm(grid, empty_id=EMPTY, labels=labels)
    G = lm.config.group_size
    tgt = labels[:, 0, ::G][:, 1:]
    lg = out.text_logits[:, :-1]
    ce = torch.nn.functional.cross_entropy(lg.reshape(-1, lg.shape[-1]), tgt.reshape(-1).clamp(min=0),
                                           reduction="none").view(tgt.shape)
    w = torch.where(tgt == EMPTY, 0.01, 1.0) * (tgt != -100)
    text = (ce * w).sum() / (w.sum() + 1e-8)
    assert torch.allclose(out.text_loss, text, atol=1e-6)
    weights = torch.tensor([12.0, 8.0, 6.0])
    assert torch.allclose(out.loss, (100 * text + (weights * out.channel_losses).sum()) / (100 + weights.sum()))
    out.loss.backward()
    assert lm.patch_decoder.layers[0].attn.qkv.weight.grad is not None
    assert lm.speech_embeddings[0].weight.grad is not None


def test_patch_decoder_samplers_see_the_empty_ids_and_ban_them_after_top_p():
    """Samplers get the empty ids' real logits (banned mass counts in the nucleus, SPEC §5.3) and the per-step
    ban of the delay plan marks exactly each active channel's empty id."""
    lm = tiny_lm(seed=4)
    first = torch.randn(2, lm.config.local_dim)
    seen = []
    pick = greedy_pick(lm, seen)
    with torch.no_grad():
        lm.decode_patch(first, pick)
    for p, step in enumerate(delay_schedule(lm.config.delay_pattern, lm.config.group_size)):
        chans, _flat, ban = lm.delay_plan(lm.device)[p]
        assert chans == [ch for ch, _ in step]
        for j, ch in enumerate(chans):
            empty = lm.config.speech_zeroemb_idx[ch]
            assert torch.isfinite(seen[p][:, j, empty]).all()
            assert torch.isinf(ban[j]).nonzero().flatten().tolist() == [empty]
