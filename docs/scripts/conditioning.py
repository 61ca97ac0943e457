"""How well-conditioned the bench's agreement check is, per model (docs/benchmarks.md, "Agreement").

    python docs/scripts/conditioning.py

At the initial weights, in train mode, on a batch of uniform noise: the fp32 reference's logits
and gradient after rounding only its *input* to bf16, and bf16 autocast's, both against fp32;
for ResNet-50 also fp32 against float64 and where its gradient norm sits. Deterministic up to
the CPU's kernels; takes about a minute.
"""

from __future__ import annotations

import copy

import torch
import torch.nn.functional as F

from resnetlab.models import create_model

CASES = (("resnet20", 32, 128), ("resnet56", 32, 128), ("resnet50", 112, 16))


def run(model: torch.nn.Module, x: torch.Tensor, y: torch.Tensor, amp: bool = False,
        dtype: torch.dtype = torch.float32) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    model = copy.deepcopy(model).to(dtype)
    with torch.autocast("cpu", dtype=torch.bfloat16, enabled=amp):
        out = model(x.to(dtype))
        loss = F.cross_entropy(out.float(), y)
    loss.backward()
    return out.detach().double(), {n: p.grad.double() for n, p in model.named_parameters()}


def flat(grads: dict[str, torch.Tensor]) -> torch.Tensor:
    return torch.cat([g.flatten() for g in grads.values()])


def rel(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a - b).abs().max()) / max(1.0, float(b.abs().max()))


def cos(a: torch.Tensor, b: torch.Tensor) -> float:
    return float(a @ b / (a.norm() * b.norm()))


if __name__ == "__main__":
    for name, size, n in CASES:
        torch.manual_seed(0)
        model = create_model(name)
        x = torch.rand(n, 3, size, size) * 4 - 2
        y = torch.randint(0, model.num_classes, (n,))
        o, g = run(model, x, y)
        o_in, g_in = run(model, x.bfloat16().float(), y)
        o_bf, g_bf = run(model, x, y, amp=True)
        print(f"{name} (batch {n}, {size}x{size}): input rounded to bf16: logits {rel(o_in, o):.2e}, "
              f"gradient cosine {cos(flat(g_in), flat(g)):.4f} | bf16 autocast: logits {rel(o_bf, o):.2e}, "
              f"gradient cosine {cos(flat(g_bf), flat(g)):.4f}")
        if name == "resnet50":
            o64, g64 = run(model, x, y, dtype=torch.float64)
            print(f"  fp32 vs float64: gradient cosine {cos(flat(g), flat(g64)):.5f}; bf16 autocast vs float64: "
                  f"{cos(flat(g_bf), flat(g64)):.4f}, logits {float((o_bf - o64).abs().max()):.2f} off "
                  f"(max |logit| {float(o64.abs().max()):.2f})")
            top = sorted(((float(v.norm()), k) for k, v in g64.items()), reverse=True)[:2]
            print(f"  largest gradient norms: {top}; fc.weight {float(g64['fc.weight'].norm()):.2f}")
