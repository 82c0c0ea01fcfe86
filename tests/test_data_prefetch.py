"""``data.prefetch``: images on disk decode while the previous batch trains, and batches stay the
same as without prefetching (augmentation seeds, errors, checkpoints; docs/ALGORITHM.md §9)."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from PIL import Image

from falcon_rl.config import load_config
from falcon_rl.config.data import DataConfig
from falcon_rl.data import DataError, load_data
from falcon_rl.data.albef_json import load_albef_json
from falcon_rl.data.image_files import MAX_PREFETCH, ImageFileSplit
from falcon_rl.data.tokenizer import build_tokenizer

N_IMAGES = 12
BATCHES = [[0, 5, 9], [3, 3, 11], [7, 1, 2], [10, 4, 6]]  # pair indices; [3, 3, ...]: one image twice


@pytest.fixture(scope="module")
def tokenizer():
    return build_tokenizer(DataConfig())


@pytest.fixture
def root(tmp_path):
    """Textured PNG and JPEG images of a few sizes (crops and flips change them) and the JSON files."""
    rng = np.random.default_rng(0)
    images = tmp_path / "images"
    images.mkdir()
    entries = []
    for i in range(N_IMAGES):
        w, h = [(40, 30), (30, 44), (36, 36)][i % 3]
        name = f"{i}.{'png' if i % 2 else 'jpg'}"
        Image.fromarray(rng.integers(0, 256, (h, w, 3), dtype=np.uint8)).save(images / name)
        entries.append({"image": name, "caption": f"picture number {i}"})
    (tmp_path / "train.json").write_text(json.dumps(entries))
    (tmp_path / "test.json").write_text(json.dumps([{"image": "0.jpg", "caption": ["zero", "nil"]}]))
    return tmp_path


def _cfg(root, **kw) -> DataConfig:
    kw = {"augment": True, "num_workers": 2, **kw}
    return DataConfig(source="albef_json", train_file=str(root / "train.json"), test_file=str(root / "test.json"),
                      image_root=str(root / "images"), image_size=16, cache_dir=str(root / "cache"), **kw)


def _train(root, tokenizer, **kw):
    return load_albef_json(_cfg(root, **kw), tokenizer)[0]


def _plain(root, tokenizer, order, **kw) -> list[torch.Tensor]:
    """The images of ``order``'s batches from a fresh split that never prefetches."""
    split = _train(root, tokenizer, prefetch=False, **kw)
    return [split.batch(b).image for b in order]


def _record_takes(monkeypatch) -> list:
    """What each load took from the prefetch queue (None: decoded then)."""
    taken: list = []
    take = ImageFileSplit._take_prefetched

    def recording(self, ids):
        taken.append(take(self, ids))
        return taken[-1]

    monkeypatch.setattr(ImageFileSplit, "_take_prefetched", recording)
    return taken


def _assert_same(got: list[torch.Tensor], want: list[torch.Tensor]) -> None:
    assert len(got) == len(want)
    for g, w in zip(got, want):
        assert torch.equal(g, w)


@pytest.mark.parametrize("augment", [False, True])
def test_prefetching_the_next_batch_gives_the_same_batches(root, tokenizer, augment):
    want = _plain(root, tokenizer, BATCHES, augment=augment)
    split = _train(root, tokenizer, augment=augment)
    got = [split.batch(BATCHES[0]).image]
    for b in BATCHES[1:]:  # as pretrain does: prefetch the next, then train (here: nothing), then take it
        split.prefetch(b)
        assert len(split._pending) == 1
        got.append(split.batch(b).image)
        assert not split._pending  # taken from the queue, not decoded again
    _assert_same(got, want)
    if augment:  # the seeds really differ per batch: the same image twice is two different views
        assert not torch.equal(want[1][0], want[1][1])


@pytest.mark.parametrize("augment", [False, True])
def test_asking_for_another_batch_first_changes_nothing(root, tokenizer, augment):
    order = [BATCHES[0], BATCHES[2], BATCHES[1], BATCHES[3]]
    want = _plain(root, tokenizer, order, augment=augment)
    split = _train(root, tokenizer, augment=augment)
    got = [split.batch(BATCHES[0]).image]
    split.prefetch(BATCHES[1])  # but BATCHES[2] is asked for first (e.g. a validation batch)
    got.append(split.batch(BATCHES[2]).image)
    # augmentation: the queue was dropped and the RNG rewound; else the prefetch waits for its turn
    assert len(split._pending) == (0 if augment else 1)
    got.append(split.batch(BATCHES[1]).image)
    got.append(split.batch(BATCHES[3]).image)
    _assert_same(got, want)


def test_the_queue_is_bounded_and_stale_prefetches_change_nothing(root, tokenizer):
    order = [BATCHES[0], BATCHES[3]]
    want = _plain(root, tokenizer, order)
    split = _train(root, tokenizer)
    got = [split.batch(BATCHES[0]).image]
    for _ in range(3):
        for b in BATCHES[1:]:
            split.prefetch(b)
            assert len(split._pending) <= MAX_PREFETCH
    got.append(split.batch(BATCHES[3]).image)
    _assert_same(got, want)


def test_a_checkpoint_with_a_pending_prefetch_resumes_exactly(root, tokenizer):
    split = _train(root, tokenizer)
    split.batch(BATCHES[0])
    split.prefetch(BATCHES[1])
    state = split.state_dict()  # written while BATCHES[1] decodes (its seeds are drawn)
    straight = [split.batch(b).image for b in BATCHES[1:]]
    resumed_split = _train(root, tokenizer)
    resumed_split.load_state_dict(state)
    _assert_same([resumed_split.batch(b).image for b in BATCHES[1:]], straight)


def test_data_prefetch_false_does_nothing(root, tokenizer):
    split = _train(root, tokenizer, prefetch=False)
    before = split.state_dict()
    split.prefetch(BATCHES[1])
    assert not split._pending and split.state_dict() == before  # no decoding, no seeds drawn
    on = _train(root, tokenizer)
    on.prefetch(BATCHES[1])
    assert on._pending and on._rng.bit_generator.state != _train(root, tokenizer)._rng.bit_generator.state
    _assert_same([split.batch(b).image for b in BATCHES], _plain(root, tokenizer, BATCHES))


def test_a_corrupt_image_fails_at_the_batch_naming_the_file(root, tokenizer):
    (root / "images" / "5.png").write_bytes((root / "images" / "5.png").read_bytes()[:60])  # header only
    split = _train(root, tokenizer, check_image_headers=False)
    split.prefetch(BATCHES[0])  # decoding fails in the background: nothing raised yet
    with pytest.raises(DataError, match=r"train.json: entry 5: cannot read image .*5.png"):
        split.batch(BATCHES[0])
    with pytest.raises(DataError, match=r"train.json: entry 5: cannot read image .*5.png"):
        split.batch(BATCHES[0])  # and without a prefetch


def test_pretrain_with_prefetch_resumes_exactly_and_matches_no_prefetch(root, tmp_path, monkeypatch):
    """Three batches per epoch: the periodic checkpoint at step 4 is written while step 5's batch
    decodes; Ctrl-C in step 5, resume from step 4: the same losses as straight through, and as with
    data.prefetch=false."""
    from falcon_rl.training.pretrain import pretrain, random_batches

    class Interrupting:
        def __init__(self) -> None:
            self.seen = 0

        def __call__(self, trainer, split, epoch, rng):
            return random_batches(trainer, split, epoch, rng)

        def observe_step(self, output) -> None:
            self.seen += 1
            if self.seen == 5:
                raise KeyboardInterrupt

    def cfg(out: str, *extra: str):
        return load_config(None, [
            "model.preset=tiny", "train.device=cpu", "train.threads=1", "logging.progress=false",
            "data.source=albef_json", f"data.train_file={root / 'train.json'}",
            f"data.test_file={root / 'test.json'}", f"data.image_root={root / 'images'}", "data.image_size=16",
            f"data.cache_dir={root / 'cache'}", "data.augment=true", "data.num_workers=2", "train.batch_size=4",
            "train.steps=6", "train.warmup_steps=1", "train.checkpoint_every=2", "train.eval_every=0",
            "experimental.by_specificity=false", "eval.at_start=false", f"train.out_dir={tmp_path / out}", *extra])

    def run(c, **kw):
        return pretrain(c, data=load_data(c.data), **kw)  # a fresh split: its RNG is run state

    taken = _record_takes(monkeypatch)
    straight = run(cfg("straight"))
    assert sum(t is not None for t in taken) == 4  # steps 2, 3, 5 and 6 (step 4 starts an epoch)
    off = run(cfg("off", "data.prefetch=false"))
    cut = cfg("cut")
    with pytest.raises(KeyboardInterrupt):
        run(cut, batch_sampler=Interrupting())
    resumed = run(cut, resume=True)
    for other in (off, resumed):
        assert other["step"] == 6
        assert other["final_losses"] == straight["final_losses"]


def test_the_env_prefetches_the_next_chain_batch_and_trains_the_same(root, monkeypatch):
    from falcon_rl.envs import NegativeMiningEnv

    taken = _record_takes(monkeypatch)

    def run(*extra: str) -> list:
        cfg = load_config(None, [
            "model.preset=tiny", "train.device=cpu", "train.threads=1", "logging.progress=false",
            "data.source=albef_json", f"data.train_file={root / 'train.json'}",
            f"data.test_file={root / 'test.json'}", f"data.image_root={root / 'images'}", "data.image_size=16",
            f"data.cache_dir={root / 'cache'}", "data.augment=true", "data.num_workers=2", "train.batch_size=3",
            "mining.search_space=12", "train.warmup_steps=1", "env.budget_steps=2", "env.reward=itc",
            "experimental.by_specificity=false", *extra])
        env = NegativeMiningEnv(cfg, data=load_data(cfg.data))
        env.reset(seed=0)
        out = []
        for q in (0.2, 0.9):
            obs, reward, _, _, info = env.step(np.full(env.action_space.shape, q, dtype=np.float32))
            out.append((reward, info["losses"], obs))
        return out

    on = run()
    assert sum(t is not None for t in taken) == 6  # 4 chain batches per step: the last 3 were prefetched
    off = run("data.prefetch=false")
    for (r_on, l_on, o_on), (r_off, l_off, o_off) in zip(on, off):
        assert r_on == r_off and l_on == l_off and np.array_equal(o_on, o_off)
