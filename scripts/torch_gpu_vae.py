"""Times the notebooks' ConvVAE and DCGAN VAE training epochs in PyTorch on a GPU, the
same recipe as `cargo run --release --example vae -- --model conv|dcgan` (batches drawn
from the training set held in host memory and copied up per step, as latent's GPU path
does), for README's GPU table.

    python scripts/torch_gpu_vae.py --model dcgan --epochs 3 [--tf32 on|off]

--tf32 on is PyTorch's default on Ampere and later (cuDNN convolutions in TF32);
off makes every product true float32, as latent's cuBLAS products are.
Prints one line per epoch and the median of epochs 2.. (the first warms cuDNN up).
"""

import argparse
import gzip
import statistics
import sys
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parent))
from torch_interop import ConvVAE, DcganVAE  # noqa: E402


def mnist_train(root):
    with gzip.open(Path(root) / "train-images-idx3-ubyte.gz") as f:
        raw = np.frombuffer(f.read(), dtype=np.uint8, offset=16)
    return torch.from_numpy(raw.reshape(-1, 1, 28, 28).astype(np.float32) / 255.0)


def conv_vae_loss(m, x):
    # CIS-522: -(log p(x|z) - KL_MC), the Gaussian without 0.5 log 2 pi, mean over the batch.
    phi = m.infer(x)
    mu, log_sig = phi[:, :-1], phi[:, -1:]
    eps = torch.randn_like(mu)
    z = mu + torch.exp(log_sig) * eps
    out = m.generate(z)
    sse = (x - out).pow(2).flatten(1).sum(1)
    d = x[0].numel()
    log_p_x = -0.5 * sse * torch.exp(-2 * m.log_sig_x) - d * m.log_sig_x
    kl = (-0.5 * eps.pow(2) - log_sig + 0.5 * z.pow(2)).sum(1)
    return -(log_p_x - kl).mean()


def dcgan_vae_loss(m, x):
    # Coursera: BCE (sum) + closed-form KL (sum).
    mean, std = m.encode(x)
    z = mean + std * torch.randn_like(mean)
    out = m.decode(z)
    kl = 0.5 * (mean.pow(2) + std.pow(2) - 1 - 2 * std.log()).sum()
    return F.binary_cross_entropy(out, x, reduction="sum") + kl


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", choices=["conv", "dcgan"], required=True)
    ap.add_argument("--epochs", type=int, default=3)
    ap.add_argument("--tf32", choices=["on", "off"], default="on")
    ap.add_argument("--data", default="data/mnist")
    a = ap.parse_args()
    torch.backends.cudnn.allow_tf32 = a.tf32 == "on"
    torch.backends.cuda.matmul.allow_tf32 = False
    torch.manual_seed(0)
    dev = torch.device("cuda")
    train = mnist_train(a.data).pin_memory()
    if a.model == "conv":
        model, loss_fn, batch = ConvVAE(K=20).to(dev), conv_vae_loss, 100
        opt = torch.optim.Adam(model.parameters(), lr=1e-3, weight_decay=1e-6)
    else:
        model, loss_fn, batch = DcganVAE(z_dim=32).to(dev), dcgan_vae_loss, 1024
        opt = torch.optim.Adam(model.parameters(), lr=2e-3)
    model.train()
    times = []
    for epoch in range(a.epochs):
        perm = torch.randperm(len(train))
        torch.cuda.synchronize()
        t = time.perf_counter()
        total, steps = 0.0, 0
        for s in range(0, len(train), batch):
            x = train[perm[s : s + batch]].to(dev, non_blocking=True)
            loss = loss_fn(model, x)
            opt.zero_grad()
            loss.backward()
            opt.step()
            total += loss.item()
            steps += 1
        torch.cuda.synchronize()
        times.append(time.perf_counter() - t)
        print(f"torch {a.model} tf32={a.tf32} epoch {epoch + 1}: {times[-1]:.3f} s, mean loss {total / steps:.3f}", flush=True)
    rest = times[1:] or times
    print(f"torch {a.model} tf32={a.tf32} on {torch.cuda.get_device_name()}: median epoch {statistics.median(rest):.3f} s (torch {torch.__version__})")


if __name__ == "__main__":
    main()
