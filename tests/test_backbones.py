"""Backbones (``features_only``): feature maps at strides 2-32 described by ``feature_info`` as timm's
EfficientNet describes its own, fed to a small FPN built from ``feature_info`` alone; with LN+PN every map
(and the FPN's output) of an image is independent of the rest of the batch (paper Section 3.2), with BN in
training it is not; the fuse and fold passes keep every map."""

from __future__ import annotations

import copy

import pytest
import timm
import torch
import torch.nn.functional as F
from timm.models import FeatureInfo
from timm.models._features import FeatureGetterNet
from torch import nn

import peffnet
from conftest import randomize
from peffnet import create_model, fold_proxy_norm, fuse_proxy_norm
from peffnet.models import EfficientNetFeatures

pytestmark = pytest.mark.usefixtures("one_thread")  # tests/conftest.py


class TinyFPN(nn.Module):
    """A feature pyramid network (Lin et al., 2017) built from a backbone's ``feature_info`` only: a 1x1 lateral
    conv per level to ``width`` channels, a top-down path that upsamples by the ratio of neighbouring
    reductions, a 3x3 output conv per level."""

    def __init__(self, feature_info: FeatureInfo, width: int = 8) -> None:
        super().__init__()
        self.reductions = feature_info.reduction()
        self.lateral = nn.ModuleList(nn.Conv2d(c, width, 1) for c in feature_info.channels())
        self.output = nn.ModuleList(nn.Conv2d(width, width, 3, padding=1) for _ in feature_info.channels())

    def forward(self, maps: list[torch.Tensor]) -> list[torch.Tensor]:
        x = self.lateral[-1](maps[-1])
        outs = [self.output[-1](x)]
        for i in range(len(maps) - 2, -1, -1):
            lateral = self.lateral[i](maps[i])
            up = F.interpolate(x, scale_factor=self.reductions[i + 1] // self.reductions[i], mode="nearest")
            x = lateral + up[..., :lateral.shape[-2], :lateral.shape[-1]]
            outs.insert(0, self.output[i](x))
        return outs


def test_levels_are_timm_efficientnet_levels() -> None:
    """Vanilla B0: the same channels, strides and stages as timm's own EfficientNet-B0 backbone (``blocks.i`` is
    our ``stages.i``: the output of the last stage at each stride, the stride-2 level after stage 1)."""
    theirs = timm.create_model("efficientnet_b0", features_only=True).feature_info
    ours = create_model("efficientnet_b0", features_only=True)
    assert isinstance(ours, EfficientNetFeatures)
    assert ours.feature_info.channels() == theirs.channels() == [16, 24, 40, 112, 320]
    assert ours.feature_info.reduction() == theirs.reduction() == [2, 4, 8, 16, 32]
    assert ours.feature_info.module_name() == [m.replace("blocks", "stages") for m in theirs.module_name()]
    for module, channels in zip(ours.feature_info.module_name(), ours.feature_info.channels(), strict=True):
        assert ours.get_submodule(module)[-1].project.conv.out_channels == channels
    wide = create_model("g16_efficientnet_b3", norm="lnpn", features_only=True)  # width 1.2, depth 1.4
    assert wide.feature_info.channels() == [24, 32, 48, 136, 384] and len(wide.stages) == 7


@pytest.mark.parametrize("norm", ["bn", "lnpn"])
def test_backbone_maps_are_the_classifier_maps(norm: str) -> None:
    """A backbone holds the classifier's stem and stages under the same names: a classifier's weights load
    into it (without head and classifier) and it returns the classifier's ``forward_intermediates``."""
    torch.manual_seed(0)
    classifier = randomize(create_model("g16_efficientnet_b0", norm=norm, num_classes=10)).eval()
    backbone = create_model("g16_efficientnet_b0", norm=norm, features_only=True, out_indices=(1, 3)).eval()
    assert len(backbone.stages) == 5  # nothing after the stride-16 level is built
    missing, unexpected = backbone.load_state_dict(classifier.state_dict(), strict=False)
    assert missing == [] and {k.split(".")[0] for k in unexpected} == {"stages", "head", "classifier"}
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        maps = backbone(x)
        expected = classifier.forward_intermediates(x, indices=[1, 3], intermediates_only=True)
        final, stopped = classifier.forward_intermediates(x, indices=[1, 3], stop_early=True)
    assert [m.shape for m in maps] == [(2, 24, 16, 16), (2, 112, 4, 4)]
    for a, b, c in zip(maps, expected, stopped, strict=True):
        assert torch.equal(a, b) and torch.equal(a, c)
    assert torch.equal(final, maps[-1])  # stopped after stage 5: its map is the last thing computed


@pytest.mark.parametrize("norm", ["bn", "lnpn"])
def test_fpn_from_feature_info_and_batch_independence(norm: str) -> None:
    """The FPN is built from ``feature_info`` alone and trains with the backbone. In training mode, an image's
    maps and FPN outputs do not depend on the other images of the batch with LN+PN (LN per image, proxy
    moments from the parameters only); with BN they do."""
    torch.manual_seed(0)
    backbone = randomize(create_model("g16_efficientnet_b0", norm=norm, features_only=True,
                                      drop_path_rate=0.0)).double().train()
    fpn = TinyFPN(backbone.feature_info).double()
    images = torch.randn(4, 3, 64, 64, dtype=torch.float64)
    alone = fpn(backbone(images[:1]))
    maps = backbone(images)
    outs = fpn(maps)
    assert [o.shape for o in outs] == [(4, 8, 32 // 2 ** i, 32 // 2 ** i) for i in range(5)]
    sum(o.square().mean() for o in outs).backward()
    assert all(p.grad is not None for p in [*backbone.parameters(), *fpn.parameters()])
    differences = [(a[0] - b[0]).abs().max().item() for a, b in zip(outs, alone, strict=True)]
    if norm == "lnpn":
        assert max(differences) < 1e-12, differences
        again = backbone(torch.cat([images[:1], torch.randn_like(images[1:]) * 5]))  # other images, other scale
        assert all(torch.allclose(a[0], b[0], rtol=0, atol=1e-12) for a, b in zip(again, maps, strict=True))
    else:
        assert min(differences) > 1e-3, differences  # batch statistics over 1 image are not those over 4


def test_fuse_and_fold_keep_every_map() -> None:
    """The fused training form and the folded inference form work on a backbone: the same maps (and, fused,
    the same gradients). A timm wrapper around a classifier is no peffnet model and is refused clearly."""
    torch.manual_seed(0)
    plain = randomize(create_model("g16_efficientnet_b0", norm="lnpn", features_only=True, drop_path_rate=0.0)).double()
    fused = fuse_proxy_norm(copy.deepcopy(plain))
    x = torch.randn(2, 3, 64, 64, dtype=torch.float64)
    weights = [torch.randn(m.shape, dtype=torch.float64) for m in plain(x)]
    grads = []
    for model in (plain, fused):
        model.zero_grad()
        maps = model(x)
        sum((m * w).sum() for m, w in zip(maps, weights, strict=True)).backward()
        grads.append([p.grad.clone() for p in model.parameters()])
    for a, b in zip(plain(x), fused(x), strict=True):
        torch.testing.assert_close(a, b, rtol=1e-10, atol=1e-12)
    for a, b in zip(*grads, strict=True):
        torch.testing.assert_close(a, b, rtol=1e-10, atol=1e-12)
    plain.eval()
    with torch.no_grad():
        reference = plain(x)
        folded = fold_proxy_norm(copy.deepcopy(plain))
        for a, b in zip(folded(x), reference, strict=True):
            torch.testing.assert_close(a, b, rtol=1e-9, atol=1e-10)
    wrapped = FeatureGetterNet(create_model("g16_efficientnet_b0", norm="lnpn"), out_indices=(1, 2))
    with pytest.raises(ValueError, match="rewrites peffnet EfficientNets and their backbones, not FeatureGetterNet"):
        fuse_proxy_norm(wrapped)


def test_grad_checkpointing_keeps_the_backbone_gradients() -> None:
    torch.manual_seed(0)
    backbone = create_model("g16_efficientnet_b0", norm="gn", features_only=True, drop_path_rate=0.0)
    x = torch.randn(2, 3, 32, 32)
    grads = []
    for enable in (False, True):
        backbone.zero_grad()
        backbone.set_grad_checkpointing(enable)
        sum(m.sum() for m in backbone(x)).backward()
        grads.append([p.grad.clone() for p in backbone.parameters()])
    for a, b in zip(*grads, strict=True):
        torch.testing.assert_close(a, b)


@pytest.mark.parametrize(("kwargs", "message"), [
    ({"features_only": True, "out_indices": (0, 5)}, "feature index 5 is out of range: this model has 5 feature "
                                                     "levels, 0 to 4 (strides 2 to 32)"),
    ({"features_only": True, "out_indices": (-6,)}, "feature index -6 is out of range"),
    ({"features_only": True, "out_indices": 0}, "the last 0 feature levels: there are 5, ask for 1 to 5"),
    ({"features_only": True, "out_indices": ()}, "feature index (none) is out of range"),
    ({"features_only": True, "out_indices": "1,2"}, "feature indices must be an int or a list of ints, got '1,2'"),
    ({"out_indices": (1, 2)}, "out_indices selects feature maps: pass features_only=True too"),
    ({"features_only": True, "num_classes": 10, "drop_rate": 0.2},
     "features_only builds no classifier: drop num_classes=10, drop_rate=0.2"),
])
def test_bad_backbone_requests_are_one_line_value_errors(kwargs: dict, message: str) -> None:
    with pytest.raises(ValueError) as info, torch.device("meta"):
        peffnet.create_model("g16_efficientnet_b0", **kwargs)
    assert message in str(info.value) and "\n" not in str(info.value)


def test_forward_intermediates_refuses_what_it_cannot_do() -> None:
    model = create_model("efficientnet_b0", norm="gn").eval()
    x = torch.randn(1, 3, 32, 32)
    with pytest.raises(ValueError, match="norm=True: peffnet's feature levels are stage outputs"):
        model.forward_intermediates(x, norm=True)
    with pytest.raises(ValueError, match="output_fmt 'NHWC': peffnet's feature maps are NCHW only"):
        model.forward_intermediates(x, output_fmt="NHWC")
    assert len(model.forward_intermediates(x, indices=2)[1]) == 2  # the last two levels
    kept = model.prune_intermediate_layers(indices=(0, 2))
    assert kept == [0, 2] and len(model.stages) == 3 and isinstance(model.head, nn.Identity)
    assert model(x).shape == (1, 40, 4, 4)  # no head, pooling or classifier left: the stride-8 map
    assert [m.shape[1] for m in model.forward_intermediates(x, indices=[0, 2], intermediates_only=True)] == [16, 40]
    with pytest.raises(ValueError, match=r"feature level\(s\) after stage 3 were pruned"):
        model.forward_intermediates(x)
