"""OSNet rebuilt in PyTorch reproduces the ONNX peer model; its weights train with the stage-one recipe."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from models.osnet import WIDTHS, _module_path, load_osnet_onnx, osnet, read_onnx_weights, recalibrate_folded_batch_norms
from tests.conftest import SHARED_DATA, require_shared_data

PEER = SHARED_DATA.parents[1] / "peers" / "osnet_x0_25_msmt17.onnx"


def require_peer() -> Path:
    if not PEER.is_file():
        pytest.skip(f"OSNet peer file not found at {PEER}")
    return PEER


def real_crops(count: int = 16) -> torch.Tensor:
    from models.data.transforms import eval_transform, load_images

    data = require_shared_data()
    paths = sorted((data / "query").glob("*.jpg"))[:: max(1, 1400 // count)][:count]
    return eval_transform(load_images(paths, (256, 128)), (256, 128))


def test_scope_names_map_to_module_paths() -> None:
    assert _module_path("/conv2/conv2.0/conv2b/conv2b.1/conv2/Conv") == "conv2.0.conv2b.1.conv2"
    assert _module_path("/conv2/conv2.2/conv2.2.0/conv/Conv") == "conv2.2.0.conv"
    assert _module_path("/conv1/conv/Conv") == "conv1.conv"


@pytest.mark.parametrize("name", sorted(WIDTHS))
def test_every_width_builds_and_emits_512(name: str) -> None:
    net = osnet(name).eval()
    with torch.no_grad():
        assert net(torch.randn(2, 3, 64, 32)).shape == (2, 512, 1, 1)


def test_onnx_weights_load_strictly_and_reproduce_onnx_outputs() -> None:
    ort = pytest.importorskip("onnxruntime")
    path = require_peer()
    x = real_crops()
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    expected = session.run(None, {"images": x.numpy()})[0]
    net = osnet("osnet_x0_25")
    load_osnet_onnx(net, path)
    with torch.no_grad():
        got = net.eval().features(x).numpy()
    assert np.abs(got - expected).max() <= 1e-4
    # With batch statistics re-estimated on real crops, eval outputs stay the same.
    recalibrate_folded_batch_norms(net, x)
    with torch.no_grad():
        again = net.eval().features(x).numpy()
    assert np.abs(again - expected).max() <= 1e-4


def test_every_onnx_weight_has_a_place() -> None:
    path = require_peer()
    params, folded = read_onnx_weights(path)
    net = osnet("osnet_x0_25")
    state = net.state_dict()
    assert set(params) <= set(state)
    assert all(f"{conv.rsplit('.', 1)[0]}.bn.weight" in state for conv in folded)
    # every 2-D batch norm of the architecture was folded into exactly one convolution
    assert len(folded) == sum(isinstance(m, torch.nn.BatchNorm2d) for m in net.modules())


def test_wrong_width_is_refused() -> None:
    path = require_peer()
    with pytest.raises(ValueError, match="shape"):
        load_osnet_onnx(osnet("osnet_x0_5"), path)
