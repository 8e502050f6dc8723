"""Market-1501 reader, P x K sampler and tensor transforms."""

from __future__ import annotations

from collections import Counter

import numpy as np
import pytest
import torch
from PIL import Image

from models.data import PKSampler, parse_folder, read_market_split
from models.data.transforms import normalize, random_erasing, random_pad_crop, train_augment
from tests.conftest import require_shared_data


def make_market(root, names):
    for folder, files in names.items():
        (root / folder).mkdir(parents=True)
        for name in files:
            Image.new("RGB", (64, 128), (len(name) * 5 % 255, 0, 0)).save(root / folder / name)


def test_market_layout_junk_dropped_distractors_kept_train_relabelled(tmp_path):
    make_market(
        tmp_path,
        {
            "bounding_box_train": ["0007_c1s1_000001_00.jpg", "0007_c2s1_000002_00.jpg", "0042_c3s2_000003_00.jpg"],
            "query": ["0007_c1s1_000010_00.jpg"],
            "bounding_box_test": ["-1_c1s1_000000_00.jpg", "0000_c2s1_000000_00.jpg", "0007_c6s1_000011_00.jpg"],
        },
    )
    (tmp_path / "bounding_box_test" / "Thumbs.db").write_text("not an image")
    split = read_market_split(tmp_path)
    assert [(s.pid, s.camid) for s in split.train] == [(0, 0), (0, 1), (1, 2)]
    assert split.num_train_ids == 2
    assert [(s.pid, s.camid) for s in split.gallery] == [(0, 1), (7, 5)]  # -1 junk dropped, 0000 distractor kept
    assert split.query[0].pid == 7


def test_bad_file_name_and_missing_folder(tmp_path):
    (tmp_path / "q").mkdir()
    Image.new("RGB", (4, 4)).save(tmp_path / "q" / "person.jpg")
    with pytest.raises(ValueError, match="PPPP_cC"):
        parse_folder(tmp_path / "q")
    with pytest.raises(FileNotFoundError):
        parse_folder(tmp_path / "nope")


def test_reads_the_shared_cuhk03_split():
    split = read_market_split(require_shared_data())
    assert (len(split.train), len(split.query), len(split.gallery)) == (7380, 1400, 5317)
    assert split.num_train_ids == 767 and len({s.pid for s in split.query}) == 700


def test_pk_sampler_batches_have_p_identities_with_k_each():
    labels = [i // 5 for i in range(50)] + [10, 10]  # identity 10 has only 2 crops
    sampler = PKSampler(labels=labels, num_identities=4, instances_per_identity=3, seed=0)
    batches = list(sampler)
    assert len(batches) == len(sampler) > 0
    for batch in batches:
        counts = Counter(labels[i] for i in batch)
        assert len(batch) == 12 and len(counts) == 4 and set(counts.values()) == {3}
    with pytest.raises(ValueError):
        PKSampler(labels=[0, 0, 1], num_identities=3, instances_per_identity=2)


def test_transforms_keep_shape_and_range():
    gen = torch.Generator().manual_seed(0)
    batch = torch.randint(0, 256, (6, 3, 64, 32), dtype=torch.uint8)
    clean, net_input = train_augment(batch, (128, 64), gen)
    assert clean.shape == net_input.shape == (6, 3, 128, 64)
    assert float(clean.min()) >= 0 and float(clean.max()) <= 1
    ones = torch.ones(1, 3, 10, 8)
    shifted = random_pad_crop(ones, 4, torch.Generator().manual_seed(3))
    assert shifted.shape == ones.shape and float(shifted.sum()) <= float(ones.sum())
    erased = random_erasing(ones.repeat(32, 1, 1, 1), torch.Generator().manual_seed(1), p=1.0)
    assert bool((erased == 0).any()) and bool((erased == 1).any())
    mean = normalize(torch.tensor([0.485, 0.456, 0.406]).view(1, 3, 1, 1).expand(1, 3, 2, 2))
    assert torch.allclose(mean, torch.zeros_like(mean), atol=1e-6)


def test_pad_crop_is_a_true_translation():
    image = torch.arange(2 * 1 * 6 * 5, dtype=torch.float32).view(2, 1, 6, 5) + 1
    out = random_pad_crop(image, 2, torch.Generator().manual_seed(5))
    for i in range(2):
        nonzero = out[i, 0][out[i, 0] > 0].numpy()
        assert np.all(np.isin(nonzero, image[i, 0].numpy()))
