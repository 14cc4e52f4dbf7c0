"""PyTorch <-> latent weight interop, checked with PyTorch itself.

The three notebook VAE classes below are written as the notebooks write them (CIS-522 W8
ConvVAE, the Coursera lab's DCGAN VAE, the stride-2 VAE), at small sizes.

    python scripts/torch_interop.py export tests/fixtures/interop
        PyTorch -> latent: builds each model (seeded), moves the BatchNorm running
        statistics with a few train-mode passes, and writes NAME.torch.safetensors with
        `save_file(model.state_dict())`, plus NAME.torch_io.safetensors: an input x, noise
        eps and the eval-mode outputs (mu, logvar, the decoder's output at mu + std * eps).
        `cargo test --test interop` loads them into latent and compares.

    LATENT_INTEROP_OUT=/tmp/io cargo test --test interop
    python scripts/torch_interop.py check /tmp/io
        latent -> PyTorch: the test takes one Adam step in latent from the PyTorch weights,
        writes NAME.latent.safetensors with `checkpoint::save_weights` and its own
        eval-mode outputs in NAME.latent_io.safetensors; this loads the weights into the
        notebook classes with load_state_dict(strict=True) and compares the outputs.

Needs torch and safetensors (pip install torch safetensors).
"""

import json
import sys
from pathlib import Path

import torch
import torch.nn as nn
import torch.nn.functional as F
from safetensors.torch import load_file, save_file


# ---- CIS-522 W8: ConvVAE -------------------------------------------------------------
class BiasLayer(nn.Module):
    def __init__(self, shape):
        super().__init__()
        self.bias = nn.Parameter(torch.randn(shape) * 0.1, requires_grad=True)

    def forward(self, x):
        return x + self.bias


class ConvVAE(nn.Module):
    def __init__(self, K, num_filters=32, filter_size=5, image=(1, 28, 28)):
        super().__init__()
        c, h, w = image
        h2, w2 = h - 2 * (filter_size - 1), w - 2 * (filter_size - 1)
        self.shape_after_conv = (num_filters, h2, w2)
        flat = num_filters * h2 * w2
        self.q_bias = BiasLayer(image)
        self.q_conv_1 = nn.Conv2d(c, num_filters, filter_size)
        self.q_conv_2 = nn.Conv2d(num_filters, num_filters, filter_size)
        self.q_flatten = nn.Flatten()
        self.q_fc_phi = nn.Linear(flat, K + 1)
        self.p_fc_upsample = nn.Linear(K, flat)
        self.p_unflatten = nn.Unflatten(-1, self.shape_after_conv)
        self.p_deconv_1 = nn.ConvTranspose2d(num_filters, num_filters, filter_size)
        self.p_deconv_2 = nn.ConvTranspose2d(num_filters, c, filter_size)
        self.p_bias = BiasLayer(image)
        self.log_sig_x = nn.Parameter(torch.zeros(()))

    def infer(self, x):
        s = self.q_bias(x)
        s = F.relu(self.q_conv_1(s))
        s = F.relu(self.q_conv_2(s))
        return self.q_fc_phi(self.q_flatten(s))

    def generate(self, zs):
        s = F.relu(self.p_fc_upsample(zs))
        s = self.p_unflatten(s)
        s = F.relu(self.p_deconv_1(s))
        s = self.p_deconv_2(s)
        return self.p_bias(s)

    def posterior(self, x):
        phi = self.infer(x)
        mu, log_sig = phi[:, :-1], phi[:, -1:]
        return mu, (2 * log_sig).expand_as(mu)


# ---- Coursera lab: the DCGAN-style VAE -----------------------------------------------
class Encoder(nn.Module):
    def __init__(self, im_chan=1, output_chan=32, hidden_dim=16):
        super().__init__()
        self.z_dim = output_chan
        self.disc = nn.Sequential(
            self.make_disc_block(im_chan, hidden_dim),
            self.make_disc_block(hidden_dim, hidden_dim * 2),
            self.make_disc_block(hidden_dim * 2, output_chan * 2, final_layer=True),
        )

    def make_disc_block(self, input_channels, output_channels, kernel_size=4, stride=2, final_layer=False):
        if not final_layer:
            return nn.Sequential(
                nn.Conv2d(input_channels, output_channels, kernel_size, stride),
                nn.BatchNorm2d(output_channels),
                nn.LeakyReLU(0.2, inplace=True),
            )
        return nn.Sequential(nn.Conv2d(input_channels, output_channels, kernel_size, stride))

    def forward(self, image):
        enc = self.disc(image).view(len(image), -1)
        return enc[:, : self.z_dim], enc[:, self.z_dim :].exp()


class Decoder(nn.Module):
    def __init__(self, z_dim=32, im_chan=1, hidden_dim=64):
        super().__init__()
        self.z_dim = z_dim
        self.gen = nn.Sequential(
            self.make_gen_block(z_dim, hidden_dim * 4),
            self.make_gen_block(hidden_dim * 4, hidden_dim * 2, kernel_size=4, stride=1),
            self.make_gen_block(hidden_dim * 2, hidden_dim),
            self.make_gen_block(hidden_dim, im_chan, kernel_size=4, final_layer=True),
        )

    def make_gen_block(self, input_channels, output_channels, kernel_size=3, stride=2, final_layer=False):
        if not final_layer:
            return nn.Sequential(
                nn.ConvTranspose2d(input_channels, output_channels, kernel_size, stride),
                nn.BatchNorm2d(output_channels),
                nn.ReLU(inplace=True),
            )
        return nn.Sequential(nn.ConvTranspose2d(input_channels, output_channels, kernel_size, stride), nn.Sigmoid())

    def forward(self, noise):
        return self.gen(noise.view(len(noise), self.z_dim, 1, 1))


class DcganVAE(nn.Module):
    def __init__(self, z_dim=32, im_chan=1, enc_hidden=16, dec_hidden=64):
        super().__init__()
        self.encode = Encoder(im_chan, z_dim, enc_hidden)
        self.decode = Decoder(z_dim, im_chan, dec_hidden)

    def posterior(self, x):
        mean, std = self.encode(x)
        return mean, 2 * std.log()

    def generate(self, z):
        return self.decode(z)


# ---- "Variational Autoencoders (VAE)": the stride-2 VAE ------------------------------
class StridedVAE(nn.Module):
    def __init__(self, latent_dim=32):
        super().__init__()
        self.encoder = nn.Sequential(
            nn.Conv2d(1, 8, 3, stride=2, padding=1),
            nn.ReLU(),
            nn.Conv2d(8, 16, 3, stride=2, padding=1),
            nn.ReLU(),
            nn.Conv2d(16, 32, 3, stride=2, padding=1),
            nn.ReLU(),
            nn.Flatten(),
        )
        self.fc_mu = nn.Linear(32 * 4 * 4, latent_dim)
        self.fc_logvar = nn.Linear(32 * 4 * 4, latent_dim)
        self.fc_decode = nn.Linear(latent_dim, 32 * 4 * 4)
        self.decoder = nn.Sequential(
            nn.Unflatten(1, (32, 4, 4)),
            nn.ConvTranspose2d(32, 16, 3, stride=2, padding=1, output_padding=0),
            nn.ReLU(),
            nn.ConvTranspose2d(16, 8, 3, stride=2, padding=1, output_padding=1),
            nn.ReLU(),
            nn.ConvTranspose2d(8, 1, 3, stride=2, padding=1, output_padding=1),
            nn.Sigmoid(),
        )

    def posterior(self, x):
        h = self.encoder(x)
        return self.fc_mu(h), self.fc_logvar(h)

    def generate(self, z):
        return self.decoder(self.fc_decode(z))


# The sizes tests/interop.rs builds its latent models with.
MODELS = {
    "conv_vae": (lambda: ConvVAE(K=3, num_filters=4, filter_size=5), {"K": 3, "filters": 4, "kernel": 5}),
    "dcgan_vae": (lambda: DcganVAE(z_dim=8, enc_hidden=4, dec_hidden=8), {"z_dim": 8, "enc_hidden": 4, "dec_hidden": 8}),
    "strided_vae": (lambda: StridedVAE(latent_dim=32), {"latent": 32}),
}


def outputs(model, x, eps):
    model.eval()
    with torch.no_grad():
        mu, logvar = model.posterior(x)
        out = model.generate(mu + (0.5 * logvar).exp() * eps)
    return {"mu": mu.contiguous(), "logvar": logvar.contiguous(), "out": out.contiguous()}


def export(dir):
    dir.mkdir(parents=True, exist_ok=True)
    for i, (name, (build, settings)) in enumerate(MODELS.items()):
        torch.manual_seed(i)
        model = build()
        # Move the BatchNorm running statistics off their initial values.
        model.train()
        with torch.no_grad():
            for _ in range(3):
                model.posterior(torch.rand(16, 1, 28, 28))
                model.generate(torch.randn(16, model.posterior(torch.rand(2, 1, 28, 28))[0].shape[1]))
        x = torch.rand(5, 1, 28, 28)
        eps = torch.randn(5, model.posterior(x)[0].shape[1])
        save_file(model.state_dict(), str(dir / f"{name}.torch.safetensors"))
        io = {"x": x, "eps": eps, **outputs(model, x, eps)}
        meta = {"settings": json.dumps(settings), "torch": torch.__version__}
        save_file(io, str(dir / f"{name}.torch_io.safetensors"), metadata=meta)
        print(f"wrote {name}: {sum(p.numel() for p in model.parameters())} parameters")


def check(dir):
    worst = 0.0
    for name, (build, _) in MODELS.items():
        model = build()
        missing = model.load_state_dict(load_file(str(dir / f"{name}.latent.safetensors")), strict=True)
        io = load_file(str(dir / f"{name}.latent_io.safetensors"))
        got = outputs(model, io["x"], io["eps"])
        for key, value in got.items():
            err = ((value - io[key]).norm() / io[key].norm()).item()
            worst = max(worst, err)
            print(f"{name}: {key} relative error {err:.2e} ({missing})")
    print(f"largest relative error {worst:.2e}")
    if worst > 1e-5:
        sys.exit(1)


if __name__ == "__main__":
    if len(sys.argv) != 3 or sys.argv[1] not in ("export", "check"):
        sys.exit(__doc__)
    {"export": export, "check": check}[sys.argv[1]](Path(sys.argv[2]))
