"""TransUNet (hfcn_bench.models.transunet): the paper's configuration by default (parameter
count, output shape at 224 px), the reduced one on any frame size of its token grid, the
layout of the skips, bad configurations, and local weights with their keys checked. The full
network is built once and run once (batch 1, no gradient): it holds ~105 M parameters."""

from __future__ import annotations

import pytest

from hfcn_bench.errors import HfcnError, ModelConfigError

torch = pytest.importorskip("torch")

from hfcn_bench.models import TRANSUNET_CONFIGS, TransUNet  # noqa: E402
from hfcn_bench.models.transunet import transunet_config  # noqa: E402


def _params(net) -> int:
    return sum(p.numel() for p in net.parameters())


def test_no_arguments_build_the_papers_configuration():
    torch.manual_seed(0)
    net = TransUNet().eval()
    c = net.config
    # R50 (its first three stages: 3, 4, 9 units) + ViT-B/16 at 224 px, as Chen et al. 2021
    assert c.name == "transunet" and c.img_size == (224, 224) and c.grid == (14, 14)
    assert (c.stem_units, c.stem_width) == ((3, 4, 9), 64)
    assert (c.layers, c.hidden, c.heads, c.mlp) == (12, 768, 12, 3072)
    assert c.decoder_channels == (256, 128, 64, 16) and c.n_skip == 3
    n = _params(net)
    # the paper's order of magnitude (~100 M); the reference code's R50-ViT-B_16 has 105.3 M
    assert 95e6 < n < 115e6, n
    assert 80e6 < _params(net.encoder) < 90e6  # ViT-B's 12 blocks (~85 M) hold most of it
    assert len(net.encoder.layer) == 12 and net.encoder.position_embeddings.shape == (1, 196, 768)
    with torch.no_grad():
        y = net(torch.randn(1, 3, 224, 224))
    assert y.shape == (1, 1, 224, 224) and torch.isfinite(y).all()


def test_the_small_configuration_keeps_any_frame_size_of_its_grid():
    torch.manual_seed(0)
    net = TransUNet("transunet-small", img_size=(48, 64))
    assert net.config.grid == (3, 4) and 1e6 < _params(net) < 5e6
    for h, w in ((48, 64), (37, 53)):  # 37x53 pads to the same 3x4 token grid
        x = torch.randn(2, 1, h, w, requires_grad=True)  # grey frames, repeated to RGB
        y = net(x)
        assert y.shape == (2, 1, h, w)
        y.sum().backward()
        assert x.grad is not None and torch.isfinite(x.grad).all()
    assert net(torch.randn(2, 3, 48, 64)).shape == (2, 1, 48, 64)
    with pytest.raises(ModelConfigError, match=r"built for 48x64 inputs \(a 3x4 token grid\), got 64x64"):
        net(torch.randn(1, 1, 64, 64))
    with pytest.raises(ModelConfigError, match=r"takes \[B, 3 or 1, H, W\] images, got shape \[1, 2, 48, 64\]"):
        net(torch.randn(1, 2, 48, 64))


def test_skips_join_the_decoder_at_1_8_1_4_and_1_2():
    small = TRANSUNET_CONFIGS["transunet-small"]
    w = small.stem_width
    net = TransUNet("transunet-small", img_size=32)
    ins = [b.conv1[0].in_channels for b in net.decoder.blocks]
    d = small.decoder_channels
    assert ins == [small.head_channels + 8 * w, d[0] + 4 * w, d[1] + w, d[2]]
    none = TransUNet("transunet-small", img_size=32, n_skip=0)
    assert [b.conv1[0].in_channels for b in none.decoder.blocks] == [small.head_channels, *d[:3]]
    assert none(torch.randn(2, 1, 32, 32)).shape == (2, 1, 32, 32)


@pytest.mark.parametrize(
    "args, kw, msg",
    [
        (("transunet-xl",), {}, "unknown TransUNet configuration 'transunet-xl'; known: transunet, transunet-small"),
        (("transunet-small",), {"hidden": 100}, r"hidden \(100\) must be divisible by heads \(3\)"),
        (("transunet-small",), {"stem_width": 48}, "stem_width must be a positive multiple of 32"),
        (("transunet-small",), {"img_size": (8, 64)}, "img_size must be two integers >= 16"),
        (("transunet-small",), {"n_skip": 4}, "n_skip must be 0..3"),
        (("transunet-small",), {"patch": 16}, r"unknown TransUNet option\(s\) \['patch'\]"),
    ],
)
def test_bad_configurations_are_named(args, kw, msg):
    with pytest.raises(ModelConfigError, match=msg):
        transunet_config(*args, **kw)


def test_local_weights_load_with_their_keys_checked(tmp_path):
    torch.manual_seed(1)
    src = TransUNet("transunet-small", img_size=32).eval()
    path = tmp_path / "tu.pt"
    torch.save(src.state_dict(), path)
    x = torch.randn(1, 1, 32, 32)
    torch.manual_seed(2)
    dst = TransUNet("transunet-small", img_size=32, weights=path).eval()
    with torch.no_grad():
        torch.testing.assert_close(dst(x), src(x))
    # a DataParallel checkpoint wrapped as {"state_dict": ...} loads too
    wrapped = tmp_path / "wrapped.pt"
    torch.save({"state_dict": {f"module.{k}": v for k, v in src.state_dict().items()}}, wrapped)
    with torch.no_grad():
        torch.testing.assert_close(TransUNet("transunet-small", img_size=32, weights=wrapped).eval()(x), src(x))
    # another grid: the position embedding's shape differs
    with pytest.raises(HfcnError, match=r"tu\.pt does not fit TransUNet transunet-small: 1 shape mismatches"):
        TransUNet("transunet-small", img_size=64, weights=path)
    narrow = tmp_path / "narrow.pt"
    torch.save(TransUNet("transunet-small", img_size=32, hidden=96).state_dict(), narrow)
    with pytest.raises(HfcnError, match=r"narrow\.pt does not fit TransUNet transunet-small: .*shape mismatches"):
        TransUNet("transunet-small", img_size=32, weights=narrow)
    shallow = tmp_path / "shallow.pt"
    torch.save(TransUNet("transunet-small", img_size=32, layers=2).state_dict(), shallow)
    with pytest.raises(HfcnError, match=r"shallow\.pt does not fit TransUNet transunet-small: .* are missing"):
        TransUNet("transunet-small", img_size=32, weights=shallow)
    with pytest.raises(HfcnError, match=r"weights file for transunet-small not found: .*nope\.pt"):
        TransUNet("transunet-small", img_size=32, weights=tmp_path / "nope.pt")
