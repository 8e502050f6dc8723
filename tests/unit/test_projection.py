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


def _members(tmp_path, sizes=((64, 32), (48, 24))):
    """Two small random encoders saved as checkpoints (different input sizes), with their paths."""
    paths = []
    for i, size in enumerate(sizes):
        torch.manual_seed(10 + i)
        meta = {"backbone": "mobilenet_v2", "embedding_dim": 8 + 8 * i, "input_size": list(size), "name": f"member{i}"}
        paths.append(tmp_path / f"member{i}.pt")
        save_encoder(ReIDEncoder(embedding_dim=8 + 8 * i), paths[-1], meta)
    return paths


def test_an_ensemble_concatenates_its_members_unit_features_and_names_their_files(tmp_path):
    """An ensemble resizes the crop for each member in the graph, concatenates the members' unit features with equal
    weight and normalises, then applies its head and split signs; its checkpoint holds only the head and names each
    member's file by SHA-256, which must sit beside it unchanged."""
    import torch.nn.functional as F

    from models.checkpoint import file_sha256
    from models.encoder import EnsembleEncoder

    paths = _members(tmp_path)
    members = [load_encoder(p) for p in paths]
    torch.manual_seed(0)
    ensemble = EnsembleEncoder([m.model for m in members], [m.input_size for m in members], projection_dim=4, split_sign=True).eval()  # type: ignore[misc]
    x = torch.randn(3, 3, 64, 32)
    with torch.no_grad():
        parts = [members[0].model(x), members[1].model(F.interpolate(x, size=(48, 24), mode="bilinear", align_corners=False))]
        signed = F.normalize(F.normalize(torch.cat(parts, dim=1), dim=1) @ ensemble.projection.weight.T, dim=1)  # type: ignore[union-attr]
        assert torch.allclose(ensemble(x), torch.cat([F.relu(signed), F.relu(-signed)], dim=1), atol=1e-6)
    meta = {"backbone": "ensemble", "input_size": [64, 32], "embedding_dim": 24, "projection": {"dim": 4}, "split_sign": True}
    meta["members"] = [{"file": p.name, "sha256": file_sha256(p), "input_size": list(m.input_size)} for p, m in zip(paths, members, strict=True)]
    save_encoder(ensemble, tmp_path / "ensemble.pt", meta)
    assert set(read_checkpoint(tmp_path / "ensemble.pt")["state_dict"]) == {"projection.weight"}
    loaded = load_encoder(tmp_path / "ensemble.pt")
    assert loaded.embedding_dim == 8 and loaded.feature_domain == "nonnegative" and loaded.split_sign
    crops = torch.randint(0, 256, (5, 3, 64, 32), dtype=torch.uint8)
    with torch.no_grad():
        from models.data.transforms import eval_transform

        expected = ensemble(eval_transform(crops, (64, 32))).numpy()
    assert np.allclose(loaded.embed(crops), expected, atol=1e-5)
    with pytest.raises(ValueError, match="members must be signed single-view"):
        EnsembleEncoder([ensemble.members[0], ReIDEncoder(embedding_dim=8, split_sign=True)], [(64, 32), (64, 32)])  # type: ignore[list-item]
    from models.trainer import load_encoder_state

    with pytest.raises(ValueError, match=r"is an ensemble \(reid-project\); train one of its members \(member0.pt, member1.pt\)"):
        load_encoder_state(ReIDEncoder(embedding_dim=8), tmp_path / "ensemble.pt")
    payload = read_checkpoint(tmp_path / "ensemble.pt")
    smuggled = {**payload, "state_dict": {**payload["state_dict"], **{f"members.0.{k}": v for k, v in members[0].model.state_dict().items()}}}
    torch.save(smuggled, tmp_path / "smuggled.pt")  # member weights inside the ensemble file would bypass the checked files
    with pytest.raises(ValueError, match="must not carry its members' weights"):
        load_encoder(tmp_path / "smuggled.pt")
    by_path = {**payload, "metadata": {**meta, "members": [{**meta["members"][0], "file": str(paths[0])}, meta["members"][1]]}}
    torch.save(by_path, tmp_path / "by_path.pt")
    with pytest.raises(ValueError, match="not a path"):
        load_encoder(tmp_path / "by_path.pt")
    wrong_size = {**payload, "metadata": {**meta, "members": [meta["members"][0], {**meta["members"][1], "input_size": [64, 32]}]}}
    torch.save(wrong_size, tmp_path / "wrong_size.pt")
    with pytest.raises(ValueError, match="takes \\[48, 24\\] crops"):
        load_encoder(tmp_path / "wrong_size.pt")
    save_encoder(ReIDEncoder(embedding_dim=8), paths[1], {"backbone": "mobilenet_v2", "embedding_dim": 8, "input_size": [48, 24]})
    with pytest.raises(ValueError, match="SHA-256 differs"):
        load_encoder(tmp_path / "ensemble.pt")
    paths[1].unlink()
    with pytest.raises(FileNotFoundError, match="must sit beside it"):
        load_encoder(tmp_path / "ensemble.pt")


def test_reid_project_fits_one_head_on_an_ensemble_of_checkpoints(tmp_path):
    data = require_shared_data()
    paths = _members(tmp_path)
    out = tmp_path / "ensemble.pt"
    cmd = [sys.executable, "-m", "models.cli.project", "--checkpoint", str(paths[0]), "--checkpoint", str(paths[1]), "--data", str(data),
           "--dim", "4", "--split-sign", "--max-train-ids", "12", "--out", str(out)]  # fmt: skip
    subprocess.run(cmd, check=True, capture_output=True, timeout=300)
    meta = read_checkpoint(out)["metadata"]
    assert meta["backbone"] == "ensemble" and [m["file"] for m in meta["members"]] == ["member0.pt", "member1.pt"]
    assert meta["input_size"] == [64, 32] and meta["embedding_dim"] == 24 and meta["projection"]["dim"] == 4
    assert read_checkpoint(out)["state_dict"]["projection.weight"].shape == (4, 24) and "track_scorer" in read_checkpoint(out)
    embedder = load_encoder(out)
    assert embedder.embedding_dim == 8 and embedder.track_scorer is not None and embedder.track_scorer.dim == 8
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    moved = subprocess.run([*cmd[:-1], str(elsewhere / "ensemble.pt")], capture_output=True, text=True, timeout=300)
    assert moved.returncode != 0 and "must sit beside" in moved.stderr


def test_the_service_reports_an_ensembles_members(tmp_path, settings):
    from fastapi.testclient import TestClient

    from app.main import create_app
    from models.checkpoint import file_sha256
    from models.encoder import EnsembleEncoder

    paths = _members(tmp_path)
    members = [load_encoder(p) for p in paths]
    ensemble = EnsembleEncoder([m.model for m in members], [m.input_size for m in members])  # type: ignore[misc]
    meta = {"backbone": "ensemble", "input_size": [64, 32], "embedding_dim": 24, "name": "tiny-ensemble"}
    meta["members"] = [{"file": p.name, "sha256": file_sha256(p), "input_size": list(m.input_size)} for p, m in zip(paths, members, strict=True)]
    save_encoder(ensemble, tmp_path / "ensemble.pt", meta)
    with TestClient(create_app(settings, embedder=load_encoder(tmp_path / "ensemble.pt"))) as client:
        model = client.get("/v1/model").json()
    assert model["backbone"] == "ensemble" and model["members"] == ["member0.pt", "member1.pt"] and model["embedding_dim"] == 24
