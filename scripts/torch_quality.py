"""The test figures of the notebooks' recipes in PyTorch, in the form latent's examples
print them (the conv AE aside), for README's result tables on a data set the issues give
no reference for (Fashion-MNIST):

    python scripts/torch_quality.py --data /usr/share/datasets/fashion-mnist --seed 0 \
        [--models pca,linear,strided,dcgan,conv]

- pca: K = 20 from the float64 covariance; variance explained at K = 10/20/50/100 and the
  test MSE per pixel of the projection (`pca_vs_ae`'s PCA rows).
- linear: the notebook's linear AE (784 -> 20 -> 784), Adam 1e-3, weight decay 1e-5,
  batch 250, 20 epochs; test MSE per pixel.
- strided: the stride-2 VAE, Adam 1e-3, batch 128, 10 epochs, SSE + closed-form KL
  summed; test loss per image (one sample of z, evaluation mode) and its two terms.
- dcgan: the Coursera DCGAN VAE, Adam 2e-3, batch 1024, 10 epochs, BCE + KL summed; the
  same test figures.
- conv: CIS-522's ConvVAE (K = 20), Adam 1e-3, weight decay 1e-6, batch 100, 10 epochs,
  the notebook's loss (Monte-Carlo KL); the test ELBO per image with the normalised
  Gaussian and the closed-form KL, the learned sigma_x and the reconstruction MSE.
"""

import argparse
import math
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parent))
from torch_cpu_speed import linear_ae_and_adam, linear_ae_epoch, mnist, strided_vae_loss  # noqa: E402
from torch_gpu_vae import conv_vae_loss, dcgan_vae_loss  # noqa: E402
from torch_interop import ConvVAE, DcganVAE, StridedVAE  # noqa: E402


def pca(train, test):
    x = train.reshape(len(train), -1).double()
    mu = x.mean(0)
    xc = x - mu
    cov = xc.T @ xc / (len(x) - 1)
    s, v = torch.linalg.eigh(cov)
    s, v = s.flip(0), v.flip(1)
    shares = [f"{100 * s[:k].sum() / s.sum():.2f}%" for k in (10, 20, 50, 100)]
    t = test.reshape(len(test), -1).double() - mu
    v20 = v[:, :20]
    mse = ((t @ v20 @ v20.T - t) ** 2).mean().item()
    print(f"PCA: variance explained K = 10/20/50/100: {' / '.join(shares)}; "
          f"K = 20 test MSE per pixel {mse:.6f}", flush=True)


def linear_ae(train, test, seed):
    torch.manual_seed(seed)
    x = train.reshape(len(train), -1)
    model, opt = linear_ae_and_adam()
    for _ in range(20):
        linear_ae_epoch(model, opt, x, torch.randperm(len(x)))
    with torch.no_grad():
        t = test.reshape(len(test), -1)
        mse = F.mse_loss(model(t), t).item()
    print(f"linear AE (seed {seed}, 20 epochs): test MSE per pixel {mse:.6f}", flush=True)


def vae(name, make, loss_fn, recon_fn, batch, lr, wd, train, test, seed):
    torch.manual_seed(seed)
    model = make()
    opt = torch.optim.Adam(model.parameters(), lr=lr, weight_decay=wd)
    start = time.perf_counter()
    for _ in range(10):
        model.train()
        perm = torch.randperm(len(train))
        for s in range(0, len(train), batch):
            loss = loss_fn(model, train[perm[s : s + batch]])
            opt.zero_grad()
            loss.backward()
            opt.step()
    model.eval()
    recon = kl = sse = 0.0
    with torch.no_grad():
        for s in range(0, len(test), 1000):
            x = test[s : s + 1000]
            mu, logvar = model.posterior(x)
            z = mu + torch.exp(0.5 * logvar) * torch.randn_like(mu)
            out = model.generate(z)
            recon += recon_fn(model, out, x).item()
            sse += (out - x).pow(2).sum().item()
            kl += (-0.5 * (1 + logvar - mu.pow(2) - logvar.exp()).sum()).item()
    n = len(test)
    took = f"{time.perf_counter() - start:.0f} s"
    if isinstance(model, ConvVAE):
        d = test[0].numel()
        print(f"{name} VAE (seed {seed}, 10 epochs, {took}): test ELBO per image {-(recon + kl) / n:.1f} nats "
              f"with the 0.5 log 2pi terms ({-(recon + kl) / n + 0.5 * d * math.log(2 * math.pi):.1f} without), "
              f"KL {kl / n:.2f}, sigma_x {model.log_sig_x.exp().item():.4f}, MSE per pixel {sse / n / d:.5f}",
              flush=True)
    else:
        print(f"{name} VAE (seed {seed}, 10 epochs, {took}): test loss per image "
              f"{(recon + kl) / n:.2f} = {recon / n:.2f} + KL {kl / n:.2f}", flush=True)


def gaussian_nll(model, out, x):
    # -log N(x; out, sigma_x^2 I), normalised, summed: what latent's test ELBO uses.
    d = x[0].numel()
    sse = (out - x).pow(2).flatten(1).sum(1)
    ls = model.log_sig_x
    return (0.5 * sse * torch.exp(-2 * ls) + d * ls + 0.5 * d * math.log(2 * math.pi)).sum()


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--data", default="data/mnist")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--models", default="pca,linear,strided")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    train = mnist(args.data, "train-images-idx3-ubyte.gz")
    test = mnist(args.data, "t10k-images-idx3-ubyte.gz")
    models = args.models.split(",")
    print(f"PyTorch {torch.__version__}, {args.threads} threads, data {args.data}", flush=True)
    if "pca" in models:
        pca(train, test)
    if "linear" in models:
        linear_ae(train, test, args.seed)
    sse = lambda m, out, x: (out - x).pow(2).sum()  # noqa: E731
    bce = lambda m, out, x: F.binary_cross_entropy(out, x, reduction="sum")  # noqa: E731
    if "strided" in models:
        vae("strided", lambda: StridedVAE(32), strided_vae_loss, sse, 128, 1e-3, 0.0, train, test, args.seed)
    if "dcgan" in models:
        vae("DCGAN", lambda: DcganVAE(z_dim=32), dcgan_vae_loss, bce, 1024, 2e-3, 0.0, train, test, args.seed)
    if "conv" in models:
        vae("conv", lambda: ConvVAE(K=20), conv_vae_loss, gaussian_nll, 100, 1e-3, 1e-6, train, test, args.seed)


if __name__ == "__main__":
    main()
