"""PyTorch reference values for the two-stochastic-layer VAE trained with the DReG
estimator (Tucker, Lawson, Gu & Maddison 2018), in float64: a case of the fixture kind
`model_hvae2` (see ../shared/fixtures/torch/README.md) with objective `iwae_dreg`.

    python scripts/torch_fixture_hvae2_dreg.py [--out tests/fixtures/torch] [--seed 0]

The encoder's gradients (`q_h1`, `q_h2`) are those of -mean_b sum_k w~^2 log w, with
w~ = softmax_k(log w) held fixed and q's own parameters held fixed inside log q(h1|x) and
log q(h2|h1): h1 and h2 keep their dependence through the samples, h1 also through
q_h2's network. The decoder's (`p_h1`, `p_x`) are the IWAE gradient. Needs torch and
safetensors.
"""

import argparse
import json
import math
from pathlib import Path

import torch
import torch.nn as nn
import torch.nn.functional as F
from safetensors.torch import save_file
from torch.func import functional_call

HALF_LN_2PI = 0.5 * math.log(2 * math.pi)


class Gaussian(nn.Module):
    """A Tanh MLP to (mu, logvar): `net`, `mu`, `logvar`."""

    def __init__(self, inp, hidden, out):
        super().__init__()
        self.net = nn.Sequential(nn.Linear(inp, hidden), nn.Tanh(), nn.Linear(hidden, hidden), nn.Tanh())
        self.mu = nn.Linear(hidden, out)
        self.logvar = nn.Linear(hidden, out)

    def forward(self, x):
        h = self.net(x)
        return self.mu(h), self.logvar(h)


class TwoLayers(nn.Module):
    def __init__(self, x_dim, hx, h1, hh, h2):
        super().__init__()
        self.q_h1 = Gaussian(x_dim, hx, h1)
        self.q_h2 = Gaussian(h1, hh, h2)
        self.p_h1 = Gaussian(h2, hh, h1)
        self.p_x = nn.Sequential(nn.Linear(h1, hx), nn.Tanh(), nn.Linear(hx, hx), nn.Tanh(), nn.Linear(hx, x_dim))


def log_normal(v, mu, logvar):
    return (-HALF_LN_2PI - 0.5 * logvar - 0.5 * (v - mu) ** 2 * torch.exp(-logvar)).sum(-1)


def log_weights(m, x, eps1, eps2, stop_q):
    """log w [b, k]; with `stop_q` both q densities use detached parameters."""
    mu1, lv1 = m.q_h1(x)
    h1 = mu1[:, None] + torch.exp(0.5 * lv1)[:, None] * eps1
    mu2, lv2 = m.q_h2(h1)
    h2 = mu2 + torch.exp(0.5 * lv2) * eps2
    if stop_q:
        q_mu1, q_lv1 = mu1.detach(), lv1.detach()
        fixed = {n: p.detach() for n, p in m.q_h2.named_parameters()}
        q_mu2, q_lv2 = functional_call(m.q_h2, fixed, (h1,))
    else:
        q_mu1, q_lv1, q_mu2, q_lv2 = mu1, lv1, mu2, lv2
    mp, lvp = m.p_h1(h2)
    logits = m.p_x(h1)
    log_px = -F.binary_cross_entropy_with_logits(logits, x[:, None].expand_as(logits), reduction="none").sum(-1)
    log_w = (log_px + log_normal(h1, mp, lvp) + log_normal(h2, 0.0, torch.zeros(()))
             - log_normal(h1, q_mu1[:, None], q_lv1[:, None]) - log_normal(h2, q_mu2, q_lv2))
    return log_w, h1, h2, logits


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--out", default=str(Path(__file__).resolve().parent.parent / "tests" / "fixtures" / "torch"))
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()
    torch.manual_seed(args.seed)
    torch.set_default_dtype(torch.float64)
    settings = {"x_dim": 24, "hx": 10, "h1_dim": 6, "hh": 5, "h2_dim": 3, "k": 4}
    b, k = 3, settings["k"]
    m = TwoLayers(settings["x_dim"], settings["hx"], settings["h1_dim"], settings["hh"], settings["h2_dim"])
    with torch.no_grad():
        for p in m.parameters():
            p.copy_(0.4 * torch.randn_like(p))
    x = torch.bernoulli(torch.full((b, settings["x_dim"]), 0.5))
    eps1 = torch.randn(b, k, settings["h1_dim"])
    eps2 = torch.randn(b, k, settings["h2_dim"])

    log_w, h1, h2, logits = log_weights(m, x, eps1, eps2, stop_q=False)
    loss = -(torch.logsumexp(log_w, 1) - math.log(k)).mean()
    dec = [p for n, p in m.named_parameters() if n.startswith(("p_h1", "p_x"))]
    enc = [p for n, p in m.named_parameters() if n.startswith(("q_h1", "q_h2"))]
    dec_grads = torch.autograd.grad(loss, dec)
    log_w_fixed_q, _, _, _ = log_weights(m, x, eps1, eps2, stop_q=True)
    w_tilde = torch.softmax(log_w, 1).detach()
    enc_loss = -(w_tilde ** 2 * log_w_fixed_q).sum(1).mean()
    enc_grads = torch.autograd.grad(enc_loss, enc)
    grads = dict(zip([id(p) for p in dec + enc], dec_grads + enc_grads))

    tensors = {
        "x": x, "eps1": eps1, "eps2": eps2, "h1": h1, "h2": h2, "logits": logits,
        "log_w": log_w, "w_tilde": w_tilde, "loss": loss,
    }
    for n, p in m.named_parameters():
        tensors[f"param.{n}"] = p
        tensors[f"grad.{n}"] = grads[id(p)]
    tensors = {n: t.detach().contiguous() for n, t in tensors.items()}
    settings.update({
        "objective": "iwae_dreg",
        "loss": "-(bound) averaged over the batch; log w = log p(x|h1) + log p(h1|h2) + log p(h2) - log q(h1|x) "
                "- log q(h2|h1); encoder gradients DReG's (q's parameters fixed inside both log q terms, "
                "w~ fixed), decoder gradients IWAE's",
        "source": "Burda et al. 2015, two stochastic layers (tanh MLPs, Bernoulli on logits); "
                  "Tucker et al. 2018, DReG; scripts/torch_fixture_hvae2_dreg.py",
    })
    out = Path(args.out) / f"model_hvae2_dreg_k{k}.safetensors"
    save_file(tensors, str(out), metadata={"kind": "model_hvae2", "settings": json.dumps(settings, sort_keys=True)})
    print(f"wrote {out}: loss {loss.item():.6f}")


if __name__ == "__main__":
    main()
