"""The discriminant projection head: the fit, the encoder with a head, the checkpoint and the CLI."""

from __future__ import annotations

import subprocess
import sys

import numpy as np
import pytest
import torch

from models.checkpoint import load_encoder, read_checkpoint, save_encoder
from models.encoder import ReIDEncoder
from models.projection import fit_lda
from tests.conftest import require_shared_data


def test_lda_keeps_the_direction_that_separates_identities_not_the_one_that_varies_most():
    rng = np.random.default_rng(0)
    labels = np.repeat(np.arange(40), 10)
    centres = np.zeros((40, 6))
    centres[:, 0] = rng.normal(0, 1.0, 40)  # identities differ along axis 0
    features = centres[labels] + rng.normal(0, 0.2, (400, 6))
    features[:, 1] += rng.normal(0, 5.0, 400)  # within-identity nuisance, 25x the variance, along axis 1
    weights = fit_lda(features, labels, dim=1)
    direction = weights[:, 0] / np.linalg.norm(weights[:, 0])
    assert abs(direction[0]) > 0.99 and abs(direction[1]) < 0.05
    with pytest.raises(ValueError, match="dim must be"):
        fit_lda(features, labels, dim=6)
    with pytest.raises(ValueError, match="identities cannot span"):
        fit_lda(features[:20], labels[:20], dim=3)


def test_an_encoder_with_a_head_emits_the_normalised_projection_and_round_trips(tmp_path):
    torch.manual_seed(0)
    encoder = ReIDEncoder(backbone="mobilenet_v2", embedding_dim=16, projection_dim=4).eval()
    x = torch.randn(3, 3, 64, 32)
    with torch.no_grad():
        plain = torch.nn.functional.normalize(encoder.forward_train(x)[1], dim=1)
        expected = torch.nn.functional.normalize(plain @ encoder.projection.weight.T, dim=1)  # type: ignore[union-attr]
        assert encoder(x).shape == (3, 4) and torch.allclose(encoder(x), expected, atol=1e-6)
    meta = {"backbone": "mobilenet_v2", "embedding_dim": 16, "input_size": [64, 32], "projection": {"dim": 4, "method": "lda"}}
    save_encoder(encoder, tmp_path / "enc.pt", meta)
    embedder = load_encoder(tmp_path / "enc.pt")
    assert embedder.embedding_dim == 4
    crops = torch.randint(0, 256, (5, 3, 64, 32), dtype=torch.uint8)
    assert embedder.embed(crops).shape == (5, 4)


def test_reid_project_fits_a_head_on_the_training_split_only(tmp_path):
    data = require_shared_data()
    torch.manual_seed(0)
    meta = {"backbone": "mobilenet_v2", "embedding_dim": 16, "input_size": [64, 32], "name": "tiny", "code_revision": "parent0"}
    save_encoder(ReIDEncoder(embedding_dim=16), tmp_path / "enc.pt", meta)
    cmd = [sys.executable, "-m", "models.cli.project", "--checkpoint", str(tmp_path / "enc.pt"), "--data", str(data),
           "--dim", "4", "--max-train-ids", "12", "--out", str(tmp_path / "head.pt")]  # fmt: skip
    subprocess.run(cmd, check=True, capture_output=True, timeout=300)
    payload = read_checkpoint(tmp_path / "head.pt")
    projection = payload["metadata"]["projection"]
    assert projection["dim"] == 4 and projection["method"] == "lda" and "bounding_box_train" in projection["fitted_on"]
    assert payload["metadata"]["initialised_from"]["file"] == "enc.pt"
    # the parent's code revision stays the parent's; the file records the code that made it
    from models.trainer import code_revision

    assert payload["metadata"]["initialised_from"]["code_revision"] == "parent0"
    assert payload["metadata"]["code_revision"] == code_revision()
    assert payload["state_dict"]["projection.weight"].shape == (4, 16)
    assert load_encoder(tmp_path / "head.pt").embedding_dim == 4
    twice = subprocess.run([*cmd[:4], str(tmp_path / "head.pt"), *cmd[5:-1], str(tmp_path / "twice.pt")], capture_output=True, text=True)
    assert twice.returncode != 0 and "has a projection head already" in twice.stderr


def test_int8_keeps_the_whole_head_in_float_including_the_projection(tmp_path):
    pytest.importorskip("onnx")
    from models.inference.export import export_onnx
    from models.inference.quantize import _tail_nodes

    meta = {"backbone": "mobilenet_v2", "embedding_dim": 16, "input_size": [64, 32], "flip_average": True, "projection": {"dim": 4}}
    save_encoder(ReIDEncoder(embedding_dim=16, projection_dim=4, flip_average=True), tmp_path / "enc.pt", meta)
    tail = _tail_nodes(export_onnx(load_encoder(tmp_path / "enc.pt"), tmp_path / "enc.onnx"))
    for node in ("/embedding/MatMul", "/bnneck/BatchNormalization", "/projection/MatMul", "/projection_1/MatMul", "/Add"):
        assert node in tail
    assert not any(name.startswith("/backbone") for name in tail)


def test_training_refuses_to_start_from_a_checkpoint_with_a_head(tmp_path):
    from models.trainer import load_encoder_state

    meta = {"backbone": "mobilenet_v2", "embedding_dim": 16, "input_size": [64, 32], "projection": {"dim": 4}}
    meta["initialised_from"] = {"file": "parent.pt"}
    save_encoder(ReIDEncoder(embedding_dim=16, projection_dim=4), tmp_path / "enc.pt", meta)
    with pytest.raises(ValueError, match=r"train from its parent \(parent.pt\)"):
        load_encoder_state(ReIDEncoder(embedding_dim=16), tmp_path / "enc.pt")
