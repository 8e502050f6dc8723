"""OSNet (Zhou et al., "Omni-Scale Feature Learning for Person Re-Identification", ICCV 2019), written here.

The module names follow torchreid's so that published weights map by name: ``conv1``,
``conv2.0.conv2a.conv1`` … ``fc.0``. Weights come from a local file only:

- an ONNX export with batch norm folded into the convolutions (``../shared/peers/osnet_x0_25_msmt17.onnx``):
  each folded convolution gets its batch norm back (:func:`load_osnet_onnx`), set so that the
  network computes exactly what the ONNX graph computes;
- a torchreid state dict (``.pth``/``.pt``), loaded strictly (classifier keys dropped).
"""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

WIDTHS: dict[str, list[int]] = {
    "osnet_x1_0": [64, 256, 384, 512],
    "osnet_x0_75": [48, 192, 288, 384],
    "osnet_x0_5": [32, 128, 192, 256],
    "osnet_x0_25": [16, 64, 96, 128],
}


class ConvLayer(nn.Module):
    """Convolution + batch norm + ReLU (the stem)."""

    def __init__(self, cin: int, cout: int, kernel: int, *, stride: int = 1, padding: int = 0, groups: int = 1) -> None:
        super().__init__()
        self.conv = nn.Conv2d(cin, cout, kernel, stride=stride, padding=padding, bias=False, groups=groups)
        self.bn = nn.BatchNorm2d(cout)
        self.relu = nn.ReLU(inplace=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.relu(self.bn(self.conv(x)))


class Conv1x1(ConvLayer):
    """1×1 convolution + batch norm + ReLU."""

    def __init__(self, cin: int, cout: int) -> None:
        super().__init__(cin, cout, 1)


class Conv1x1Linear(nn.Module):
    """1×1 convolution + batch norm, no activation."""

    def __init__(self, cin: int, cout: int) -> None:
        super().__init__()
        self.conv = nn.Conv2d(cin, cout, 1, bias=False)
        self.bn = nn.BatchNorm2d(cout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.bn(self.conv(x))


class LightConv3x3(nn.Module):
    """Pointwise (linear) then depthwise 3×3 + batch norm + ReLU."""

    def __init__(self, cin: int, cout: int) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(cin, cout, 1, bias=False)
        self.conv2 = nn.Conv2d(cout, cout, 3, padding=1, bias=False, groups=cout)
        self.bn = nn.BatchNorm2d(cout)
        self.relu = nn.ReLU(inplace=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.relu(self.bn(self.conv2(self.conv1(x))))


class ChannelGate(nn.Module):
    """The unified aggregation gate shared by the four streams of a block."""

    def __init__(self, channels: int, reduction: int = 16) -> None:
        super().__init__()
        self.global_avgpool = nn.AdaptiveAvgPool2d(1)
        self.fc1 = nn.Conv2d(channels, channels // reduction, 1, bias=True)
        self.relu = nn.ReLU(inplace=True)
        self.fc2 = nn.Conv2d(channels // reduction, channels, 1, bias=True)
        self.gate_activation = nn.Sigmoid()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * self.gate_activation(self.fc2(self.relu(self.fc1(self.global_avgpool(x)))))


class OSBlock(nn.Module):
    """Omni-scale residual block: four streams of 1–4 light 3×3 convolutions, gated and summed."""

    def __init__(self, cin: int, cout: int, bottleneck_reduction: int = 4) -> None:
        super().__init__()
        mid = cout // bottleneck_reduction
        self.conv1 = Conv1x1(cin, mid)
        self.conv2a = LightConv3x3(mid, mid)
        self.conv2b = nn.Sequential(*(LightConv3x3(mid, mid) for _ in range(2)))
        self.conv2c = nn.Sequential(*(LightConv3x3(mid, mid) for _ in range(3)))
        self.conv2d = nn.Sequential(*(LightConv3x3(mid, mid) for _ in range(4)))
        self.gate = ChannelGate(mid)
        self.conv3 = Conv1x1Linear(mid, cout)
        self.downsample = Conv1x1Linear(cin, cout) if cin != cout else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x1 = self.conv1(x)
        x2 = self.gate(self.conv2a(x1)) + self.gate(self.conv2b(x1)) + self.gate(self.conv2c(x1)) + self.gate(self.conv2d(x1))
        identity = self.downsample(x) if self.downsample is not None else x
        return F.relu(self.conv3(x2) + identity)


def _stage(cin: int, cout: int, *, blocks: int, reduce: bool) -> nn.Sequential:
    layers: list[nn.Module] = [OSBlock(cin, cout), *(OSBlock(cout, cout) for _ in range(blocks - 1))]
    if reduce:
        layers.append(nn.Sequential(Conv1x1(cout, cout), nn.AvgPool2d(2, stride=2)))
    return nn.Sequential(*layers)


class OSNet(nn.Module):
    """OSNet trunk plus torchreid's feature head (GAP → Linear → BN → ReLU, ``feature_dim``).

    ``forward`` returns the head's feature as ``[N, feature_dim, 1, 1]`` so that it plugs in
    wherever a backbone's feature map is pooled; :meth:`features` returns the 1-D vector.
    """

    def __init__(self, channels: list[int], *, feature_dim: int = 512, layers: Iterable[int] = (2, 2, 2)) -> None:
        super().__init__()
        n2, n3, n4 = layers
        self.channels = channels
        self.feature_dim = feature_dim
        self.conv1 = ConvLayer(3, channels[0], 7, stride=2, padding=3)
        self.maxpool = nn.MaxPool2d(3, stride=2, padding=1)
        self.conv2 = _stage(channels[0], channels[1], blocks=n2, reduce=True)
        self.conv3 = _stage(channels[1], channels[2], blocks=n3, reduce=True)
        self.conv4 = _stage(channels[2], channels[3], blocks=n4, reduce=False)
        self.conv5 = Conv1x1(channels[3], channels[3])
        self.global_avgpool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Sequential(nn.Linear(channels[3], feature_dim), nn.BatchNorm1d(feature_dim), nn.ReLU(inplace=True))
        self.folded_batch_norms: list[str] = []  # batch norms re-inserted after folded ONNX convolutions
        self._init()

    def _init(self) -> None:
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
                if m.bias is not None:
                    nn.init.constant_(m.bias, 0)
            elif isinstance(m, nn.BatchNorm2d | nn.BatchNorm1d):
                nn.init.constant_(m.weight, 1)
                nn.init.constant_(m.bias, 0)
            elif isinstance(m, nn.Linear):
                nn.init.normal_(m.weight, 0, 0.01)
                if m.bias is not None:
                    nn.init.constant_(m.bias, 0)

    def feature_maps(self, x: torch.Tensor) -> torch.Tensor:
        x = self.maxpool(self.conv1(x))
        return self.conv5(self.conv4(self.conv3(self.conv2(x))))

    def features(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(self.global_avgpool(self.feature_maps(x)).flatten(1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.features(x)[:, :, None, None]


def osnet(name: str, *, feature_dim: int = 512) -> OSNet:
    """An OSNet of a named width (random initialisation)."""
    try:
        return OSNet(WIDTHS[name], feature_dim=feature_dim)
    except KeyError:
        raise ValueError(f"unknown OSNet {name!r}; choose from {sorted(WIDTHS)}") from None


def _module_path(node_name: str) -> str:
    """'/conv2/conv2.0/conv2b/conv2b.1/conv2/Conv' -> 'conv2.0.conv2b.1.conv2' (torch.onnx's scope names)."""
    parts: list[str] = []
    for part in node_name.strip("/").split("/")[:-1]:
        if parts and part.startswith(parts[-1] + "."):
            parts[-1] = part
        else:
            parts.append(part)
    return ".".join(parts)


def read_onnx_weights(path: str | Path) -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor]]:
    """Read an OSNet ONNX export: (parameters by torch name, folded biases by convolution module path).

    Initialisers the exporter kept under their torch names (gates, the pointwise half of each
    light 3×3, the head) are taken as they are; an anonymous convolution weight is convolution
    and batch norm folded together, named after the graph node's scope, its bias returned apart.
    """
    import onnx
    from onnx import numpy_helper

    graph = onnx.load(str(path)).graph
    inits = {i.name: torch.from_numpy(numpy_helper.to_array(i).copy()) for i in graph.initializer}
    params = {name: value for name, value in inits.items() if not name.startswith(("onnx::", "/"))}
    folded_bias: dict[str, torch.Tensor] = {}
    for node in graph.node:
        if node.op_type != "Conv" or not node.input[1].startswith("onnx::"):
            continue
        module = _module_path(node.name)
        params[f"{module}.weight"] = inits[node.input[1]]
        if len(node.input) > 2:
            folded_bias[module] = inits[node.input[2]]
    return params, folded_bias


def _parent(module_path: str) -> str:
    return module_path.rsplit(".", 1)[0]


@torch.no_grad()
def load_osnet_onnx(model: OSNet, path: str | Path, calibration_images: torch.Tensor | None = None) -> None:
    """Load folded ONNX weights into ``model`` strictly, re-inserting each folded batch norm.

    Every batch norm that follows a folded convolution is set to compute ``x + bias``
    exactly in eval mode. With ``calibration_images`` (normalised inputs), its running
    statistics are first set to the statistics of the convolution's output on those images
    and its affine parameters compensate, so eval outputs are unchanged while training-mode
    batch statistics start close to the pretrained behaviour.
    """
    params, folded = read_onnx_weights(path)
    state = model.state_dict()
    expected_bn = {f"{_parent(conv)}.bn" for conv in folded}
    new_state: dict[str, torch.Tensor] = {}
    for name, value in params.items():
        if name not in state:
            raise KeyError(f"ONNX weight {name} has no place in {type(model).__name__}")
        if tuple(value.shape) != tuple(state[name].shape):
            raise ValueError(f"{name}: ONNX shape {tuple(value.shape)} != model shape {tuple(state[name].shape)}")
        new_state[name] = value
    for bn in expected_bn:
        conv = next(c for c in folded if f"{_parent(c)}.bn" == bn)
        eps = dict(model.named_modules())[bn].eps
        bias = folded[conv]
        new_state[f"{bn}.weight"] = torch.ones_like(bias)
        new_state[f"{bn}.bias"] = bias
        new_state[f"{bn}.running_mean"] = torch.zeros_like(bias)
        new_state[f"{bn}.running_var"] = torch.full_like(bias, 1.0 - eps)
        new_state[f"{bn}.num_batches_tracked"] = torch.zeros((), dtype=torch.long)
    for name in state:
        if name.endswith("num_batches_tracked"):
            new_state.setdefault(name, torch.zeros((), dtype=torch.long))
    missing = sorted(set(state) - set(new_state))
    if missing:
        raise KeyError(f"ONNX file {path} lacks weights for {missing[:5]}{' …' if len(missing) > 5 else ''}")
    model.load_state_dict(new_state, strict=True)
    model.folded_batch_norms = sorted(expected_bn)
    if calibration_images is not None:
        recalibrate_folded_batch_norms(model, calibration_images)


@torch.no_grad()
def recalibrate_folded_batch_norms(model: OSNet, images: torch.Tensor) -> None:
    """Give re-inserted batch norms the real statistics of their inputs (eval output unchanged)."""
    bn_names = model.folded_batch_norms
    modules = dict(model.named_modules())
    stats: dict[str, tuple[torch.Tensor, torch.Tensor]] = {}
    hooks = []
    for name in bn_names:

        def hook(_: nn.Module, inputs: tuple[torch.Tensor, ...], __: torch.Tensor, name: str = name) -> None:
            x = inputs[0]
            stats[name] = (x.mean((0, 2, 3)), x.var((0, 2, 3), unbiased=False))

        hooks.append(modules[name].register_forward_hook(hook))
    was_training = model.training
    model.eval()
    model(images)
    for h in hooks:
        h.remove()
    for name in bn_names:
        bn = modules[name]
        assert isinstance(bn, nn.BatchNorm2d) and bn.running_var is not None and bn.running_mean is not None
        mean, var = stats[name]
        scale = torch.sqrt(var + bn.eps)
        bn.running_mean.copy_(mean)
        bn.running_var.copy_(var)
        bn.weight.copy_(scale)
        bn.bias.add_(mean)
    model.train(was_training)


def load_osnet_state_dict(model: OSNet, path: str | Path) -> None:
    """Load a torchreid OSNet state dict strictly (its classifier, if any, is dropped)."""
    state = torch.load(path, map_location="cpu", weights_only=True)
    state = state.get("state_dict", state)
    state = {k.removeprefix("module."): v for k, v in state.items() if not k.removeprefix("module.").startswith("classifier.")}
    model.load_state_dict(state, strict=True)
