"""MAFA: connection mining's three branches, the targets it builds, S-ITC's start, the frozen
filter (path / snapshot / momentum) and the filter's precision / recall from the match matrix."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from helpers_model import tiny_config, tokenizer, toy_split

from falcon_rl.config import ConfigError
from falcon_rl.mining.filter_quality import FilterCounts, count_batch, summarize
from falcon_rl.models import build_model, mask_tokens
from falcon_rl.models.albef import mlm_classes, mlm_targets, trim_padding
from falcon_rl.models.losses import contrastive_targets, soft_cross_entropy
from falcon_rl.models.mafa import CONVERT, KEEP, NEXT, decide, hardest_two, mine_connections
from falcon_rl.training import Trainer

# image x text similarity: image 0 -> hardest text 1 (then 2), image 1 -> 0 (then 3),
# image 2 -> 3 (then 1), image 3 -> 0 (then 2)
SIM_I2T = torch.tensor([[9.0, 5, 4, 1], [5, 9, 1, 4], [1, 2, 9, 3], [3, 1, 2, 9]])
# text x image: text 0 -> image 3 (then 1), text 1 -> 0 (then 3), text 2 -> 1 (then 3), text 3 -> 2 (then 0)
SIM_T2I = torch.tensor([[9.0, 2, 1, 6], [7, 9, 1, 2], [1, 8, 9, 3], [2, 1, 5, 9]])
# the filter's P(match) [image, text] of the pairs scored
P = torch.full((4, 4), 0.05)
P[0, 1] = 0.95  # image 0 / text 1: a false negative in both directions (convert)
P[1, 0] = 0.30  # keep
P[2, 3] = 0.60  # uncertain: next hardest
P[3, 0] = 0.80  # exactly `high`: not above it, so next hardest
P[1, 2] = 0.10  # keep


def _score(image, text):
    return P[image, text]


def test_hardest_two_skips_the_pair_itself_and_positives():
    first, second = hardest_two(SIM_I2T, torch.zeros(4, 4, dtype=torch.bool))
    assert first.tolist() == [1, 0, 3, 0] and second.tolist() == [2, 3, 1, 2]
    exclude = torch.zeros(4, 4, dtype=torch.bool)
    exclude[0, 1] = True  # a known positive is never a negative
    first, second = hardest_two(SIM_I2T, exclude)
    assert first[0] == 2 and second[0] == 3
    # only one allowed candidate: it is both; nothing allowed: anything but the pair itself
    only = torch.ones(4, 4, dtype=torch.bool)
    only[0, 3] = False
    first, second = hardest_two(SIM_I2T, only)
    assert (first[0], second[0]) == (3, 3) and first[1] == 0  # row 1: fallback to its hardest other


def test_decide_thresholds_including_the_boundaries():
    p = torch.tensor([0.0, 0.49, 0.5, 0.65, 0.8, 0.81, 1.0])
    assert decide(p, low=0.5, high=0.8).tolist() == [KEEP, KEEP, NEXT, NEXT, NEXT, CONVERT, CONVERT]


def test_connection_mining_branches_convert_keep_next():
    plan, report = mine_connections(SIM_I2T, SIM_T2I, torch.eye(4), _score, low=0.5, high=0.8)
    # scored pairs: each image with its hardest text, then each text with its hardest image
    assert report.image.tolist() == [0, 1, 2, 3, 3, 0, 1, 2]
    assert report.text.tolist() == [1, 0, 3, 0, 0, 1, 2, 3]
    torch.testing.assert_close(report.p, torch.tensor([0.95, 0.30, 0.60, 0.80, 0.80, 0.95, 0.10, 0.60]))
    assert report.decision.tolist() == [CONVERT, KEEP, NEXT, NEXT, NEXT, CONVERT, KEEP, NEXT]
    assert report.counts() == {"scored": 8, "converted": 2, "kept": 2, "next": 4}
    # ITM: convert -> the same pair labelled 1; keep -> the hardest as negative; next -> the 2nd hardest
    assert plan.text_for_image.tolist() == [1, 0, 1, 2]
    assert plan.text_for_image_label.tolist() == [1, 0, 0, 0]
    assert plan.image_for_text.tolist() == [1, 0, 1, 0]
    assert plan.image_for_text_label.tolist() == [0, 1, 0, 0]
    assert plan.itm_labels().tolist() == [0, 1, 0, 0, 1, 0, 0, 0]  # text-anchored first, as the model orders
    # ITC: the extra positive in the anchor's row only (i2t row of image 0, t2i row of text 1)
    want_i2t = torch.eye(4)
    want_i2t[0, 1] = 1.0
    want_t2i = torch.eye(4)
    want_t2i[1, 0] = 1.0
    assert torch.equal(plan.itc_i2t, want_i2t) and torch.equal(plan.itc_t2i, want_t2i)
    # MLM: each converted pair once more (text 1 predicted from image 0, found from both sides)
    assert plan.mlm_image.tolist() == [0, 0] and plan.mlm_text.tolist() == [1, 1]
    plan, _ = mine_connections(SIM_I2T, SIM_T2I, torch.eye(4), _score, low=0.5, high=0.8, extra_mlm=False)
    assert plan.mlm_text.numel() == 0


def test_itc_target_rows_sum_to_one_with_the_extra_positives():
    plan, _ = mine_connections(SIM_I2T, SIM_T2I, torch.eye(4), _score, low=0.5, high=0.8)
    for eps in (0.0, 0.5):
        for pos in (plan.itc_i2t, plan.itc_t2i):
            t = contrastive_targets(pos, eps)
            torch.testing.assert_close(t.sum(dim=1), torch.ones(4))
    t = contrastive_targets(plan.itc_i2t)
    torch.testing.assert_close(t[0], torch.tensor([0.5, 0.5, 0.0, 0.0]))
    torch.testing.assert_close(t[1], torch.tensor([0.0, 1.0, 0.0, 0.0]))
    torch.testing.assert_close(contrastive_targets(plan.itc_i2t, 0.5)[0], torch.tensor([0.375, 0.375, 0.125, 0.125]))


def _model_batch(n: int = 8):
    torch.manual_seed(0)
    model = build_model(tiny_config().model, tokenizer(), 32).train()
    split = toy_split(64, seed=0)
    b = split.batch(np.arange(n))
    ids = tokenizer()
    m = mask_tokens(b.input_ids, b.attention_mask, [ids.cls_token_id, ids.sep_token_id, ids.pad_token_id],
                    ids.mask_token_id, len(ids), 0.3, torch.Generator().manual_seed(0))
    return model, b, m


def test_model_forward_trains_on_the_plan():
    """ITC on the plan's targets (smoothed), ITM on its pairs and labels, MLM on the extra samples,
    and the batch's own MLM loss (the reward's L_MLM) exactly as without a plan."""
    model, b, m = _model_batch()
    probs = torch.full((8, 8), 0.05)
    probs.fill_diagonal_(0.99)
    probs[:, ::2] = 0.9  # every even-position text is a "false negative" of any image
    seen = {}

    def planner(sim_i2t, sim_t2i, positives):
        plan, report = mine_connections(sim_i2t, sim_t2i, positives, lambda i, t: probs[i, t], 0.5, 0.8)
        seen.update(plan=plan, report=report)
        return plan

    out = model(b.image, b.input_ids, b.attention_mask, m.input_ids, m.labels, index=b.index,
                itc_smoothing=0.25, pair_planner=planner)
    plan = seen["plan"]
    assert seen["report"].counts()["converted"] > 0
    # ITC = the loss on the plan's row-normalised, smoothed targets
    sim = (out.image_feat @ out.text_feat.t()).float() / model.temp
    want_itc = 0.5 * (soft_cross_entropy(sim, contrastive_targets(plan.itc_i2t, 0.25)).mean()
                      + soft_cross_entropy(sim.t(), contrastive_targets(plan.itc_t2i, 0.25)).mean())
    torch.testing.assert_close(out.itc, want_itc)
    # ITM = the loss on the plan's pairs and labels
    with torch.no_grad():
        mask = b.attention_mask
        tokens, _ = model.enc.encode_image(b.image)
        hidden = model.enc.encode_text(b.input_ids, mask)
        want_itm = model._itm_loss(tokens, hidden, mask, plan.image_for_text, plan.text_for_image, plan.itm_labels())
        plain_mlm = model.mlm_loss(b.image, b.attention_mask, m.input_ids, m.labels)
    torch.testing.assert_close(out.itm, want_itm)
    # MLM: the reward's loss untouched; the trained one includes the extra samples
    assert out.mlm.item() == pytest.approx(plain_mlm.item(), abs=1e-6)
    assert plan.mlm_text.numel() > 0
    with torch.no_grad():  # the trained MLM: token-weighted over the batch's and the extra samples' masks
        mask, ids, labels = trim_padding(b.attention_mask, m.input_ids, m.labels)
        classes = mlm_classes(ids, labels, mask, "batch")
        t, i = plan.mlm_text, plan.mlm_image
        logits = model.enc.mlm_logits(tokens[i], ids[t], mask[t], labels[t], classes)
        extra = torch.nn.functional.cross_entropy(logits, mlm_targets(labels[t], classes))
        n_batch, n_extra = int((labels != -100).sum()), logits.shape[0]
    want_mlm = (n_batch * out.mlm + n_extra * extra) / (n_batch + n_extra)
    assert n_extra > 0 and abs(out.mlm_train.item() - out.mlm.item()) > 1e-6
    torch.testing.assert_close(out.mlm_train, want_mlm)
    out.loss.backward()
    assert torch.isfinite(out.loss)


def _trainer(*overrides: str, total_steps: int = 20) -> Trainer:
    return Trainer(tiny_config("train.lr=1e-3", *overrides), tokenizer(), 32, total_steps=total_steps)


def _batches(n: int, b: int = 16, seed: int = 0):
    split = toy_split(96, seed=0)
    rng = np.random.default_rng(seed)
    return [split.batch(rng.choice(split.n_pairs, b, replace=False)) for _ in range(n)]


def test_smoothing_starts_exactly_at_the_configured_step(monkeypatch):
    trainer = _trainer("experimental.itc_label_smoothing=0.5", "experimental.itc_smoothing_start=2")
    used = []
    forward = trainer.model.forward

    def spy(*args, **kwargs):
        used.append(kwargs["itc_smoothing"])
        return forward(*args, **kwargs)

    monkeypatch.setattr(trainer.model, "forward", spy)
    for batch in _batches(4):
        trainer.train_step(batch)
    assert used == [0.0, 0.0, 0.5, 0.5]  # steps 0 and 1 plain, from step 2 on smoothed
    assert [trainer.itc_smoothing(s) for s in (0, 1, 2, 9)] == [0.0, 0.0, 0.5, 0.5]
    # null ε: MAFA's mafa.smoothing with MAFA, else none
    assert _trainer().itc_smoothing(5) == 0.0
    snap = _trainer("model.false_negatives=mafa", "mafa.filter=snapshot", "mafa.smoothing=0.3")
    assert snap.itc_smoothing(0) == 0.3


def test_snapshot_filter_is_frozen_and_refreshed_every_k_steps():
    trainer = _trainer("model.false_negatives=mafa", "mafa.filter=snapshot", "experimental.snapshot_every=2")
    conn = trainer.connections
    assert conn.filter is None  # nothing built before the first use

    def online():
        return [p.detach().clone() for p in list(trainer.model.enc.parameters()) + list(trainer.model.itm_head.parameters())]

    taken = {}
    for step, batch in enumerate(_batches(4)):  # optimiser steps 0..3 (before each update)
        weights = online()
        out = trainer.train_step(batch)
        assert out.connections is not None and out.connections.decision.numel() == 32
        taken[step] = (conn.snapshot_step, weights)
    # taken at first use (step 0), again once two steps old (step 2), not in between
    assert [taken[s][0] for s in range(4)] == [0, 0, 2, 2]
    assert all(torch.equal(a, b) for a, b in zip(conn.filter_parameters(), taken[2][1]))
    assert not all(torch.equal(a, b) for a, b in zip(conn.filter_parameters(), online()))  # the model moved on
    assert all(not p.requires_grad and p.grad is None for p in conn.filter_parameters())
    # exact resume: the snapshot travels in the trainer's checkpoint
    payload = trainer.state_dict()
    again = _trainer("model.false_negatives=mafa", "mafa.filter=snapshot", "experimental.snapshot_every=2")
    again.load_state_dict(payload)
    assert again.connections.snapshot_step == 2
    assert all(torch.equal(a, b) for a, b in zip(again.connections.filter_parameters(), conn.filter_parameters()))
    # connection mining only from connections_start on (the env's first mined step)
    late = _trainer("model.false_negatives=mafa", "mafa.filter=snapshot")
    late.connections_start = 2
    reports = [late.train_step(batch).connections for batch in _batches(3)]
    assert reports[0] is None and reports[1] is None and reports[2] is not None
    assert late.connections.snapshot_step == 2


def test_no_gradient_reaches_a_checkpoint_filter(tmp_path):
    source = _trainer("experimental.text_layers=1")  # the filter may have its own model config
    path = source.save_checkpoint(tmp_path / "filter.pt")
    saved = {k: v.clone() for k, v in source.model.state_dict().items()}
    trainer = _trainer("model.false_negatives=mafa", "mafa.filter=path", f"mafa.path={path}")
    conn = trainer.connections
    filt = conn.filter_model()
    enc, head = filt.encoders, filt.itm_head
    assert len(enc.text.encoder.layer) == 1 and not enc.training and not head.training
    params = conn.filter_parameters()
    assert params and all(not p.requires_grad for p in params)
    in_optimizer = {id(p) for g in trainer.optimizer.param_groups for p in g["params"]}
    assert not any(id(p) in in_optimizer for p in params)
    # even with requires_grad switched on, the training step gives the filter no gradient: it
    # only scores under no_grad and its scores only pick pairs
    for p in params:
        p.requires_grad_(True)
    online_before = trainer.model.itm_head.weight.detach().clone()
    for batch in _batches(3):
        out = trainer.train_step(batch)
        assert out.connections is not None
        assert all(p.grad is None for p in params)
        assert not enc.training and not head.training
    assert not torch.equal(trainer.model.itm_head.weight, online_before)  # the online model trained
    state = {f"enc.{k}": v for k, v in enc.state_dict().items()}
    state.update({f"itm_head.{k}": v for k, v in head.state_dict().items()})
    assert all(torch.equal(v, saved[k]) for k, v in state.items())  # the filter did not change


def test_momentum_filter_and_config_errors(tmp_path):
    trainer = _trainer("model.false_negatives=mafa", "mafa.filter=momentum", "model.momentum=true",
                       "model.queue_size=32")
    assert trainer.connections.filter_model().encoders is trainer.model.enc_m
    batch = _batches(1)[0]
    trainer.model.train()
    out = trainer.train_step(batch)
    assert out.connections is not None and trainer.model.enc_m.training  # its mode is restored
    with pytest.raises(ConfigError, match="model.momentum=true"):
        _trainer("model.false_negatives=mafa", "mafa.filter=momentum")
    with pytest.raises(ConfigError, match="mafa.path"):
        _trainer("model.false_negatives=mafa", "mafa.filter=path")
    with pytest.raises(FileNotFoundError, match="mafa.path: .* does not exist"):
        _trainer("model.false_negatives=mafa", "mafa.filter=path", f"mafa.path={tmp_path / 'none.pt'}")
    with pytest.raises(ConfigError, match="mafa.filter_dir"):
        _trainer("model.false_negatives=mafa")
    with pytest.raises(ConfigError, match="low=0.9 > high=0.8"):
        tiny_config("mafa.low=0.9")


def test_exact_match_oracle_filter_has_precision_and_recall_one():
    split = toy_split(96, seed=1, vague=0.5)
    g = np.arange(24)
    img = split.pair_image[g]
    truth = torch.from_numpy(split.match[g][:, img].T.copy()).float()  # [image i, text j]: text j describes image i
    off = truth * (1 - torch.eye(24))
    assert off.sum() > 0  # the batch holds false negatives
    # an online model that mostly ranks the true matches first, with noise that sometimes does not
    sim = 2.0 * truth + torch.randn(24, 24, generator=torch.Generator().manual_seed(0))
    oracle = lambda image, text: truth[image, text]  # noqa: E731 - p = 1 for true matches, 0 otherwise
    plan, report = mine_connections(sim, sim.t(), torch.eye(24), oracle, low=0.5, high=0.8)
    counts = count_batch(split, g, report)
    assert counts.true_fn > 0 and counts.converted == counts.true_fn
    rates = counts.rates()
    assert rates["precision"] == 1.0 and rates["recall"] == 1.0
    assert all(v == 1.0 for v in rates["precision_by_specificity"].values() if v == v)
    # a filter that calls everything a match: recall 1, precision = the share of true matches
    everything = count_batch(split, g, mine_connections(sim, sim.t(), torch.eye(24), lambda i, t: torch.ones(len(i)),
                                                        0.5, 0.8)[1]).rates()
    assert everything["recall"] == 1.0
    assert everything["precision"] == pytest.approx(counts.true_fn / counts.scored)
    # nothing converted: precision undefined, recall 0; run-level sums over steps
    none = count_batch(split, g, mine_connections(sim, sim.t(), torch.eye(24), lambda i, t: torch.zeros(len(i)),
                                                  0.5, 0.8)[1])
    assert np.isnan(none.rates()["precision"]) and none.rates()["recall"] == 0.0
    steps = [{"counts": counts.to_dict()}, {"counts": none.to_dict()}, {}]
    run = summarize(steps)
    assert run["mafa_precision"] == 1.0 and run["mafa_recall"] == pytest.approx(0.5)
    assert run["mafa_converted_per_batch"] == pytest.approx(counts.converted / 2)
    assert FilterCounts.from_dict(counts.to_dict()).to_dict() == counts.to_dict()


def test_results_table_and_csv_carry_the_filter_columns(tmp_path):
    import csv

    from falcon_rl.ablation.results import aggregate, render_markdown, write_results_csv

    def run(name, seed, extra):
        return {"scheduler": name, "seed": seed, "status": "ok", "steps": 4, "mean_fn_rate": 0.2,
                "mean_reward": 0.0, "wall_time": 10.0 + seed, "final": {"i2t_r1_mp": 20.0, "t2i_map": 30.0},
                **extra}

    mafa = {"mafa_precision": 0.75, "mafa_recall": 0.5, "mafa_converted_per_batch": 3.0, "filter_time": 5.0,
            "mafa_precision/spec1": 0.9, "mafa_recall/spec1": 0.6, "mafa_recall/spec8": float("nan")}
    runs = [run("grit", 0, {"filter_time": None}), run("mafa", 0, mafa),
            run("mafa", 1, {**mafa, "mafa_precision": 0.25})]
    rows = list(csv.DictReader(write_results_csv(runs, tmp_path / "r.csv").open()))
    header = list(rows[0])
    assert header[header.index("wall_time") + 1:header.index("wall_time") + 5] == [
        "mafa_precision", "mafa_recall", "mafa_converted_per_batch", "filter_time"]
    assert rows[0]["mafa_precision"] == "" and rows[1]["mafa_precision/spec1"] == "0.9"
    md = render_markdown(aggregate(runs))
    line = next(x for x in md.splitlines() if x.startswith("| mafa |"))
    # precision 50 ± 35.4 %, recall 50 ± 0, 3 conversions per batch, time 10.5 + 5 (filter)
    assert line.endswith("| 50.0 ± 35.4 | 50.0 ± 0.0 | 3.0 ± 0.0 | 16 (5) |")
    grit = next(x for x in md.splitlines() if x.startswith("| grit |"))
    assert grit.endswith("| – | – | – | 10 |")
    assert "| mafa | 90 / 60 | – / – |" in md


def test_extra_mlm_samples_train_on_masks_of_their_own():
    """MAFA masks the concatenation of batch and extra texts anew: a plan's ``mlm_masks`` are the
    extra samples' masks in the trained MLM, and the batch's own MLM (the reward's) is unchanged."""
    import dataclasses

    model, b, m = _model_batch()
    probs = torch.full((8, 8), 0.05)
    probs.fill_diagonal_(0.99)
    probs[:, ::2] = 0.9
    ids = tokenizer()
    seen = {}

    def planner(sim_i2t, sim_t2i, positives):
        plan, _ = mine_connections(sim_i2t, sim_t2i, positives, lambda i, t: probs[i, t], 0.5, 0.8)
        t = plan.mlm_text
        fresh = mask_tokens(b.input_ids[t], b.attention_mask[t], [ids.cls_token_id, ids.sep_token_id,
                            ids.pad_token_id], ids.mask_token_id, len(ids), 0.5, torch.Generator().manual_seed(9))
        seen["plan"] = plan = dataclasses.replace(plan, mlm_masks=fresh)
        return plan

    torch.manual_seed(1)
    out = model(b.image, b.input_ids, b.attention_mask, m.input_ids, m.labels, index=b.index, pair_planner=planner)
    plan = seen["plan"]
    t, i = plan.mlm_text, plan.mlm_image
    assert not torch.equal(plan.mlm_masks.labels, m.labels[t])  # not the batch's masks of those texts
    with torch.no_grad():
        mask, _, labels = trim_padding(b.attention_mask, m.input_ids, m.labels)
        width = mask.shape[1]
        classes = mlm_classes(*trim_padding(b.attention_mask, m.input_ids, m.labels)[1:], mask, "batch")
        tokens, _ = model.enc.encode_image(b.image)
        fresh_ids, fresh_labels = plan.mlm_masks.input_ids[:, :width], plan.mlm_masks.labels[:, :width]
        logits = model.enc.mlm_logits(tokens[i], fresh_ids, mask[t], fresh_labels, classes)
        extra = torch.nn.functional.cross_entropy(logits, mlm_targets(fresh_labels, classes))
        n_batch, n_extra = int((labels != -100).sum()), logits.shape[0]
        plain_mlm = model.mlm_loss(b.image, b.attention_mask, m.input_ids, m.labels)
    assert out.mlm.item() == pytest.approx(plain_mlm.item(), abs=1e-6)
    torch.testing.assert_close(out.mlm_train, (n_batch * out.mlm + n_extra * extra) / (n_batch + n_extra))


def test_the_trainer_draws_the_extra_samples_masks_from_its_mask_generator(monkeypatch):
    trainer = _trainer("model.false_negatives=mafa", "mafa.filter=snapshot", "model.mlm_prob=0.5")

    class Convinced:  # a filter sure that every mined pair matches: every pair converts
        def bind(self, *batch):
            return lambda image, text: torch.full(image.shape, 0.95)

    monkeypatch.setattr(trainer.connections, "filter_model", lambda step=0: Convinced())
    plans = []
    make = trainer.connections.planner

    def recording(batch, step, draw_masks=None):
        inner = make(batch, step, draw_masks)
        return lambda *sims: plans.append(inner(*sims)) or plans[-1]

    monkeypatch.setattr(trainer.connections, "planner", recording)
    batch = _batches(1)[0]
    masks = trainer.make_lm_masks(batch)
    state = trainer.mask_generator.get_state()
    trainer.train_step(batch, masks)
    plan = plans[0]
    rows = plan.mlm_text.cpu()
    assert rows.numel() == 32 and plan.mlm_masks is not None
    again = torch.Generator()
    again.set_state(state)
    want = trainer.model.make_lm_masks(batch.input_ids[rows], batch.attention_mask[rows], again)
    assert torch.equal(plan.mlm_masks.labels, want.labels) and torch.equal(plan.mlm_masks.input_ids, want.input_ids)
    assert not torch.equal(want.labels, masks.labels[rows])
    rate = (want.labels != -100).sum() / (batch.attention_mask[rows].sum() - 2 * rows.numel())
    assert 0.35 < float(rate) < 0.65  # model.mlm_prob = 0.5 of the maskable tokens
