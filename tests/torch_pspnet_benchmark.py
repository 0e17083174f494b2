r"""PyTorch PSPNet-50 at the paper's shape, timed for comparison with `ciss_tf.benchmark`.

Not a test and not collected by pytest (its name does not start with `test_`); PyTorch is
not a dependency of the project. Run it by hand after `pip install torch` (CPU build):

    python tests/torch_pspnet_benchmark.py [--size=473] [--classes=150] [--repeats=5] \
        [--threads=N] [--output_json=FILE]

The network is the same PSPNet-50 as CiSS-Net's t = 0 path (deep-stem dilated ResNet-50,
output stride 8, PPM 4 x 512, 3x3 conv 4096 -> 512 + BN + ReLU, 1x1 classifier), random
weights, batch 1, eval mode under `torch.inference_mode()`. Three variants:

* `plain`: the obvious eager model, NCHW, batch norm as separate modules;
* `channels_last`: the same in NHWC memory format (what oneDNN prefers);
* `frozen`: `torch.jit.freeze` of the traced model (folds batch norm into the convs),
  channels-last: the best PyTorch CPU inference path without an external compiler.

Each time is the median of `--repeats` runs after two warm-up runs; the variants are
interleaved round-robin, so load from other processes weighs on all alike.
"""

import argparse
import json
import statistics
import time


def build_pspnet50(torch, num_classes):
    """The PSPNet-50 of the paper's feature net and Base Net shape, as a torch module."""
    nn = torch.nn
    functional = torch.nn.functional

    def conv_bn(cin, cout, kernel, stride=1, dilation=1, relu=True):
        layers = [
            nn.Conv2d(cin, cout, kernel, stride, padding=dilation * (kernel - 1) // 2,
                      dilation=dilation, bias=False),
            nn.BatchNorm2d(cout, eps=1e-5),
        ]
        if relu:
            layers.append(nn.ReLU(inplace=True))
        return nn.Sequential(*layers)

    class Bottleneck(nn.Module):
        def __init__(self, cin, width, stride, dilation):
            super().__init__()
            self.reduce = conv_bn(cin, width, 1, stride)
            self.conv3x3 = conv_bn(width, width, 3, dilation=dilation)
            self.increase = conv_bn(width, width * 4, 1, relu=False)
            self.proj = conv_bn(cin, width * 4, 1, stride, relu=False) if (
                stride != 1 or cin != width * 4) else None

        def forward(self, x):
            shortcut = x if self.proj is None else self.proj(x)
            return torch.relu(self.increase(self.conv3x3(self.reduce(x))) + shortcut)

    class PSPNet(nn.Module):
        def __init__(self):
            super().__init__()
            self.stem = nn.Sequential(conv_bn(3, 64, 3, 2), conv_bn(64, 64, 3),
                                      conv_bn(64, 128, 3), nn.MaxPool2d(3, 2, 1))
            blocks, cin = [], 128
            for width, depth, stride, dilation in ((64, 3, 1, 1), (128, 4, 2, 1),
                                                   (256, 6, 1, 2), (512, 3, 1, 4)):
                for index in range(depth):
                    blocks.append(Bottleneck(cin, width, stride if index == 0 else 1, dilation))
                    cin = width * 4
            self.blocks = nn.Sequential(*blocks)
            self.bins = (1, 2, 3, 6)
            self.ppm = nn.ModuleList(conv_bn(2048, 512, 1) for _ in self.bins)
            self.head = nn.Sequential(conv_bn(4096, 512, 3), nn.Dropout(0.1),
                                      nn.Conv2d(512, num_classes, 1))

        def forward(self, images):
            x = self.blocks(self.stem(images))
            size = x.shape[-2:]
            branches = []
            for bins, branch in zip(self.bins[::-1], list(self.ppm)[::-1], strict=True):
                kernel = -(-size[0] // bins)
                pooled = functional.avg_pool2d(x, kernel, kernel)
                branches.append(functional.interpolate(branch(pooled), size, mode="bilinear",
                                                       align_corners=True))
            return self.head(torch.cat([x, *branches], dim=1))

    return PSPNet()


def main():
    """Times the three variants and prints (and optionally writes) the results."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--size", type=int, default=473)
    parser.add_argument("--classes", type=int, default=150)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--threads", type=int, default=0, help="0: torch's default.")
    parser.add_argument("--output_json", default=None)
    args = parser.parse_args()

    import torch  # noqa: PLC0415  (optional: only this script needs it)

    if args.threads:
        torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    model = build_pspnet50(torch, args.classes).eval()
    images = torch.randn(1, 3, args.size, args.size) * 50.0
    with torch.inference_mode():
        last = images.contiguous(memory_format=torch.channels_last)
        channels_last = build_pspnet50(torch, args.classes).eval()
        channels_last.load_state_dict(model.state_dict())
        channels_last = channels_last.to(memory_format=torch.channels_last)
        frozen = torch.jit.freeze(torch.jit.trace(channels_last, last))
        variants = {
            "plain": (model, images),
            "channels_last": (channels_last, last),
            "frozen": (frozen, last),
        }
        reference = model(images)
        for name, (net, x) in variants.items():
            difference = float((net(x) - reference).abs().max())
            print(f"{name}: max |difference| to plain {difference:.2e}")
            net(x)
        times = {name: [] for name in variants}
        for _ in range(args.repeats):
            for name, (net, x) in variants.items():
                start = time.perf_counter()
                net(x)
                times[name].append(time.perf_counter() - start)
    results = {
        "torch": torch.__version__, "threads": torch.get_num_threads(), "size": args.size,
        "classes": args.classes, "batch": 1,
        "seconds": {name: statistics.median(t) for name, t in times.items()},
        "runs": times,
    }
    for name, seconds in results["seconds"].items():
        print(f"PyTorch PSPNet-50 {args.size}x{args.size} {name}: {seconds:.3f} s")
    if args.output_json:
        with open(args.output_json, "w") as f:
            json.dump(results, f, indent=1)


if __name__ == "__main__":
    main()
