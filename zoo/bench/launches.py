"""What one step launches: the operators (on a GPU, the CUDA kernels) a peer's training step and forward call.

On a GPU a small model's step waits on the host, which launches one kernel per operator, so the count is
what composition costs there; on a CPU the ``aten::`` calls stand in for it (``bench_peers.py --count-ops``,
``bench_gpu.py``).
"""

import torch

from zoo.bench.peers import Peer, training_step
from zoo.bench.timing import autocast, synchronize


def kernel_counts(peer: Peer, x: torch.Tensor, y: torch.Tensor, device: torch.device) -> dict:
    """CUDA kernels launched by one training step and by one inference forward of ``peer`` (on a CPU,
    the ``aten::`` operator calls instead, nested ones included: a relative count only)."""
    from torch.profiler import ProfilerActivity, profile

    train = training_step(peer, x, y, device)

    def infer() -> None:
        with torch.inference_mode(), autocast(device):
            peer.logits(x)

    cuda = device.type == "cuda"

    out = {}
    for mode, fn in (("train", train), ("infer", infer)):
        peer.model.train(mode == "train")
        fn()
        synchronize(device)
        with profile(activities=[ProfilerActivity.CUDA if cuda else ProfilerActivity.CPU]) as prof:
            fn()
            synchronize(device)
        events = prof.key_averages()
        counted = [e for e in events if e.device_type.name == "CUDA"] if cuda else [e for e in events if e.key.startswith("aten::")]
        out[f"{mode}_kernels"] = sum(e.count for e in counted)
        out[f"{mode}_kernel_names"] = {e.key: e.count for e in sorted(counted, key=lambda e: -e.count)}
    return out
