"""The ELBO gradient of a fully connected VAE, differentiated by hand: the CPU training step's fast path.

On a CPU the seed model's step is five 128 x 400 x 784 matrix products plus about a hundred small
operations that autograd records, allocates for and replays; the latter cost as much as the products.
Written out, the backward pass is a handful of products and fused element-wise updates:

    logits l = dec(z),  z = mu + sigma * eps,  (mu, log sigma^2) = enc(x)
    d loss / d l      = (sigmoid(l) - x) / B      (Bernoulli; likelihoods.py writes each one's out)
    d loss / d mu     = dz + beta * mu / B
    d loss / d logvar = dz * eps * sigma / 2 + beta * (sigma^2 - 1) / (2 B)   (0 where the clamp holds)

and through each linear layer W: dW = g^T h, db = sum g, dh = g W, times the activation's derivative read
from its output. The posterior noise is drawn exactly as ``torch.distributions.Normal.rsample`` draws it,
so a step gives autograd's gradients to float rounding (tests/test_fused.py) and runs are reproducible
either way. Used by default where it applies (``blocker`` says why not otherwise); ``train.fused_step =
false`` restores autograd.

With ``bf16`` the matrix products take bfloat16 operands (weights cast each step from their float32 masters)
and round their outputs to bfloat16, as autocast does; hidden activations stay in bfloat16, the output layers
add their float32 bias in float32, and the likelihood, the posterior, the KL, the loss and the bias gradients
are computed in float32.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from vaekit.config import TrainConfig
from vaekit.model import VAE, likelihoods
from vaekit.model.posteriors import LOGVAR_MAX, LOGVAR_MIN
from vaekit.objectives import ELBOTerms, FreeBits, per_layer

# the parts whose gradients this step writes out: (arch, stochastic layers, posterior, prior)
PARTS = ("mlp", 1, "diagonal-gaussian", "standard-normal")
# the likelihoods whose negative log-likelihood gradient likelihoods.py writes out
LIKELIHOODS = tuple(name for name, lik in likelihoods.LIKELIHOODS.items() if lik.nll_and_grad is not None)


def _leaky_relu_grad(h: Tensor, g: Tensor) -> Tensor:
    return torch.where(h > 0, g, g * 0.01)  # nn.LeakyReLU's default slope


def _elu_grad(h: Tensor, g: Tensor) -> Tensor:
    return g.mul_(torch.where(h > 0, 1.0, h + 1))  # alpha = 1: d/da (exp(a) - 1) = exp(a) = h + 1


# activation module of the network (as vaekit.model.nets builds them, with their defaults) -> (the same
# function, in place where torch has it; g times its derivative, written from the output h alone, in g's memory)
ACTIVATIONS: dict[type[nn.Module], tuple[Callable[[Tensor], Tensor], Callable[[Tensor, Tensor], Tensor]]] = {
    nn.ReLU: (torch.relu_, lambda h, g: torch.ops.aten.threshold_backward(g, h, 0)),  # one kernel, not a mask
    nn.LeakyReLU: (F.leaky_relu_, _leaky_relu_grad),
    nn.Tanh: (torch.tanh_, lambda h, g: g.mul_(1 - h * h)),
    nn.ELU: (F.elu_, _elu_grad),
    nn.Softplus: (F.softplus, lambda h, g: g.mul_(-torch.expm1(-h))),  # sigmoid(a) = 1 - exp(-softplus(a))
}


def blocker(model: VAE, tc: TrainConfig, device: torch.device, world_size: int) -> str | None:
    """Why the hand-differentiated step cannot train this model and run, or None when it can."""
    arch, layers, posterior, prior, likelihood = model.parts
    leaves = [m for net in (model.encoder, model.decoder) for m in net.modules() if not any(m.children())]
    unknown = sorted({type(m).__name__ for m in leaves if not isinstance(m, nn.Linear) and type(m) not in ACTIVATIONS})
    reasons = [
        (not tc.fused_step, "disabled by train.fused_step = false"),
        (device.type != "cpu", f"device is {device.type}: the fused step is the CPU path"),
        ((arch, layers, posterior, prior) != PARTS,
         f"the model is (arch, layers, posterior, prior) = {(arch, layers, posterior, prior)}, not {PARTS}"),
        (likelihood not in LIKELIHOODS, f"likelihood {likelihood} is not one of {LIKELIHOODS}"),
        (bool(unknown), f"activation {', '.join(unknown)} is not one of {[a.__name__ for a in ACTIVATIONS]}"),
        (tc.objective != "elbo", f"objective is {tc.objective}, not elbo"),
        (world_size > 1, "DistributedDataParallel needs autograd's gradient hooks"),
    ]
    return next((why for blocked, why in reasons if blocked), None)


def multiply_adds(model: VAE, batch_size: int) -> int:
    """The multiply-adds of one step's forward products: the batch times the networks' weights."""
    return batch_size * sum(m.weight.numel() for net in (model.encoder, model.decoder) for m in net.modules()
                            if isinstance(m, nn.Linear))


class _Dense:
    """The linear layers of one of the model's MLPs, with what its backward pass needs from the forward.

    ``dtype`` is that of the matrix products' operands and outputs (None: the weights' own); the output and the
    input gradient come back in the weights' dtype whatever it is.
    """

    def __init__(self, net: nn.Sequential, dtype: torch.dtype | None = None) -> None:
        self.layers = [m for m in net if isinstance(m, nn.Linear)]
        acts = {type(m) for m in net if not isinstance(m, nn.Linear)}
        self.act, self.act_grad = ACTIVATIONS[acts.pop()] if acts else (None, None)
        self.master = self.layers[0].weight.dtype
        self.dtype = dtype or self.master
        self.inputs: list[Tensor] = []  # each layer's input, kept for the weight gradients
        self.weights: list[Tensor] = []  # each layer's weight in self.dtype, cast once per step
        self.biases: list[Tensor] = []  # likewise its bias
        self.weight_grads: list[Tensor] = []  # each weight's gradient in self.dtype, before its cast

    def _cast_weights(self) -> None:
        """This step's weights and biases in self.dtype, copied into buffers kept from step to step: fresh
        tensors of this size would cost their allocation (and page faults) every step."""
        if not self.weights:
            self.weights = [torch.empty_like(m.weight, dtype=self.dtype) for m in self.layers]
            self.biases = [torch.empty_like(m.bias, dtype=self.dtype) for m in self.layers]
            self.weight_grads = [torch.empty_like(w) for w in self.weights]
        masters = [m.weight for m in self.layers] + [m.bias for m in self.layers]
        torch._foreach_copy_(self.weights + self.biases, masters)

    def forward(self, h: Tensor) -> Tensor:
        self.inputs = []
        if self.dtype != self.master:
            return self._forward_cast(h)
        for i, layer in enumerate(self.layers):
            self.inputs.append(h)
            h = torch.addmm(layer.bias, h, layer.weight.t())
            if i < len(self.layers) - 1:
                h = self.act(h)
        return h

    def _forward_cast(self, h: Tensor) -> Tensor:
        self._cast_weights()
        h = h.to(self.dtype)
        last = len(self.layers) - 1
        for i, (w, b) in enumerate(zip(self.weights, self.biases, strict=True)):
            self.inputs.append(h)
            h = torch.mm(h, w.t())  # oneDNN's bfloat16 addmm is slower than its product and an add
            if i < last:
                h = self.act(h.add_(b))
        return h.add(self.layers[last].bias)  # the float32 bias: one pass gives the output in float32

    def backward(self, g: Tensor, input_grad: bool) -> Tensor | None:
        """Set each weight's and bias's ``.grad`` from g = d/d output; return d/d input when asked."""
        cast = self.dtype != self.master
        for i in range(len(self.layers) - 1, -1, -1):
            layer, h = self.layers[i], self.inputs[i]
            layer.bias.grad = g.sum(0, dtype=self.master)
            if cast:
                g = g.to(self.dtype)
                _set_grad(layer.weight, torch.mm(g.t(), h, out=self.weight_grads[i]))
            else:
                layer.weight.grad = torch.mm(g.t(), h)
            if i == 0 and not input_grad:
                return None
            g = torch.mm(g, self.weights[i] if cast else layer.weight)
            if i > 0:
                g = self.act_grad(h, g)
        return g.to(self.master)


def _set_grad(p: nn.Parameter, g: Tensor) -> None:
    """p.grad = g in p's dtype, into the gradient tensor p already has where it can."""
    if p.grad is None or p.grad.dtype != p.dtype or p.grad.shape != p.shape:
        p.grad = g.to(p.dtype)
    else:
        p.grad.copy_(g)


class FusedELBO:
    """Sets the parameters' ``.grad`` to those of the beta-weighted negative ELBO and returns its terms.

    Same quantities as ``objectives.elbo`` (free bits included) for the models ``blocker`` lets through; the
    posterior and its KL come from the model's own parts. ``bf16``: the products in bfloat16 (module docstring).
    """

    def __init__(self, model: VAE, free_bits: FreeBits = 0.0, bf16: bool = False) -> None:
        self.model, (self.free_bits,) = model, per_layer(free_bits, 1)
        dtype = torch.bfloat16 if bf16 else None
        self.encoder, self.decoder = _Dense(model.encoder, dtype), _Dense(model.decoder, dtype)
        self.nll_and_grad = likelihoods.get(model.config.likelihood).nll_and_grad
        self.obs_std = model.config.obs_std

    @torch.no_grad()
    def __call__(self, x: Tensor, beta: float, y: Tensor | None = None) -> ELBOTerms:
        model, n = self.model, len(x)
        c = model.condition(y, n)
        x = x.flatten(1)  # (B, D)
        out = self.encoder.forward(x if c is None else torch.cat([x, c], dim=1))  # (B, 2L): mu, log sigma^2
        mu, logvar_raw, sigma, logvar = _posterior(out)  # (B, L) each
        eps = torch.randn_like(mu)  # what Normal.rsample draws, from the same generator
        z = torch.addcmul(mu, sigma, eps)
        params = self.decoder.forward(z if c is None else torch.cat([z, c], dim=1))  # (B, D) logits or means
        recon_sum, g = self.nll_and_grad(params, x, self.obs_std)  # sum over the batch, d/d params
        var = sigma * sigma
        kl_j = _kl_standard_normal(mu, var).mean(0)  # (L,) batch-mean KL per dimension
        recon, kl = recon_sum / n, kl_j.sum()
        active = kl_j >= self.free_bits if self.free_bits > 0 else None  # clamped dimensions get no KL gradient
        loss = recon + beta * (kl_j.clamp(min=self.free_bits).sum() if active is not None else kl)

        dz = self.decoder.backward(g.div_(n), input_grad=True)[:, : mu.shape[1]]
        kl_scale = beta / n if active is None else active.to(mu.dtype) * (beta / n)
        d_out = torch.empty_like(out)
        d_mu, d_logvar = d_out.chunk(2, dim=1)
        torch.add(dz, mu * kl_scale, out=d_mu)
        torch.mul(dz * eps, 0.5 * sigma, out=d_logvar)
        d_logvar.add_((var - 1) * (0.5 * kl_scale))
        d_logvar.mul_(logvar == logvar_raw)  # clamp's gradient: 1 inside the bounds, 0 where it clamped (or NaN)
        self.encoder.backward(d_out, input_grad=False)
        return ELBOTerms(loss, recon, kl)


def _posterior(out: Tensor) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """(mu, log sigma^2 as the encoder gave it, sigma, log sigma^2 clamped) from the encoder's output: the
    arithmetic of ``posteriors.DiagonalGaussian``, without building its distribution objects every step."""
    mu, logvar_raw = out.chunk(2, dim=1)
    logvar = logvar_raw.clamp(LOGVAR_MIN, LOGVAR_MAX)
    return mu, logvar_raw, torch.exp(0.5 * logvar), logvar


def _kl_standard_normal(mu: Tensor, var: Tensor) -> Tensor:
    """KL(N(mu, var) || N(0, 1)) per element, in the order of operations of torch.distributions' Normal-Normal
    KL (so the same floats): (var + mu^2 - 1 - log var) / 2. Written out because building the distributions
    every step cost 5-7% of the bf16 step (alternating blocks, 2-core AMD EPYC); torch.distributions stays the oracle
    (tests/test_fused.py compares this step's terms with the model's own)."""
    return 0.5 * (var + mu * mu - 1 - var.log())
