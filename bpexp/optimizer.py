"""First-order update rules, one signature for all: ``optimizer.step(w, g, state)``.

``w`` is the flat parameter vector and ``g`` the gradient of the batch-mean cost; the step
updates ``w`` and ``state`` in place. ``state = optimizer.init(w)`` is a plain dict of arrays and
the step counter ``t``: everything the rule remembers is there to inspect.
Forms, conventions and the identities between them: docs/science.md#update-rules.

- ``sgd``:       w ← w − η g
- ``momentum``, ``form="classical"``: v ← β v − η g;  w ← w + v
  (identical to torch.optim.SGD(momentum=β, dampening=0) with lr = η).
- ``momentum``, ``form="ema"``: v ← β v + (1 − β) g;  w ← w − η v, or with ``bias_correction``
  w ← w − η v / (1 − β^t). EMA(η, β) ≡ classical with η(1 − β).
- ``nesterov``:  the reformulated form whose stored weights are the look-ahead point:
  v ← β v − η g(w);  w ← w − β v_prev + (1 + β) v, i.e. w ← w + β v − η g
  (identical to torch.optim.SGD(momentum=β, nesterov=True)).
- ``rmsprop``:   s ← ρ s + (1 − ρ) g²;  w ← w − η g / (√s + ε), with ρ = ``beta2``.
- ``adam``:      m ← β m + (1 − β) g;  s ← β₂ s + (1 − β₂) g²;
  w ← w − η m̂ / (√ŝ + ε), m̂ = m / (1 − β^t), ŝ = s / (1 − β₂^t).

The first rules multiply the gradient by a constant before anything else (sgd, classical
momentum and Nesterov by −η, EMA momentum by 1 − β): ``gradient_scale``. Each rule is written on
that scaled gradient ``s``, so ``update(w, s, state)`` is the rule itself and
``step(w, g, state)`` is ``update(w, gradient_scale · g, state)``. The trainer has backprop fold
the scale into δ^L (where it already folds 1/m) and calls ``update`` directly: on a 784-100-10
network at batch 10 that saves one pass over every parameter, about 40% of the update.

L2 regularisation (``weight_decay`` = λ, Nielsen's chapter 3) belongs to the cost, not to a
rule: every rule descends C + λ/(2n) Σ_l ‖W^l‖², over weights only, n the training-set size,
whose gradient adds (λ/n) W to ∂C/∂W. For sgd that is the decoupled step
w ← (1 − ηλ/n) w − η g exactly. PyTorch's ``weight_decay`` wd adds wd · w to the gradient of
every parameter it is given, biases included: bpexp's λ is torch's wd = λ/n on a parameter
group of the weights, with wd = 0 for the biases (and for Adam, torch.optim.Adam, not AdamW).

Adding a rule is one function and entries in ``RULES``, ``BUFFERS`` and ``gradient_scale``.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from bpexp.errors import ConfigError, bad_value

Array = np.ndarray
State = dict[str, object]

FORMS = ("classical", "ema")


def label(name: str, form: str = "classical", bias_correction: bool = False) -> str:
    """The name of an update rule in run names, reports and plots: ``sgd``,
    ``momentum/classical``, ``momentum/ema+bc``, ``nesterov`` (the form only for momentum)."""
    if name != "momentum":
        return name
    return f"momentum/{form}" + ("+bc" if bias_correction else "")


def effective_step(name: str, form: str, lr: float, beta: float) -> float:
    """The long-run step per unit of a constant gradient: η/(1 − β) for classical momentum and
    Nesterov (their velocity sums a geometric series), η for SGD and the EMA forms (the EMA
    averages, it does not sum) and for RMSprop and Adam (whose steps are scaled per coordinate).
    Arms line up by this, not by ``optimizer.lr``, when comparing learning rates."""
    if name == "nesterov" or (name == "momentum" and form == "classical"):
        return lr / (1.0 - beta)
    return lr


@dataclass(frozen=True)
class Optimizer:
    name: str
    lr: float
    beta: float = 0.9
    form: str = "classical"
    bias_correction: bool = False
    beta2: float = 0.999
    eps: float = 1e-8
    # λ of the L2-regularised cost C + λ/(2n) Σ_l ‖W^l‖² (weights only, n = training-set
    # size); its gradient (λ/n) W is added by the trainer (bpexp.network.add_l2_gradient).
    weight_decay: float = 0.0

    def __post_init__(self) -> None:
        if self.name not in RULES:
            raise bad_value("optimizer.name", self.name, RULES)
        if not (self.lr > 0 and np.isfinite(self.lr)):
            raise bad_value("optimizer.lr", self.lr, "a finite number > 0")
        if not 0 <= self.beta < 1:
            raise bad_value("optimizer.beta", self.beta, "0 <= beta < 1")
        if not 0 <= self.beta2 < 1:
            raise bad_value("optimizer.beta2", self.beta2, "0 <= beta2 < 1")
        if self.form not in FORMS:
            raise bad_value("optimizer.form", self.form, FORMS)
        if self.eps <= 0:
            raise bad_value("optimizer.eps", self.eps, "a number > 0")
        if not (self.weight_decay >= 0 and np.isfinite(self.weight_decay)):
            raise bad_value("optimizer.weight_decay", self.weight_decay, "a finite number >= 0")
        # Settings a rule would silently ignore are refused: two runs that compute the same
        # thing must not look different in the store.
        if self.form != "classical" and self.name != "momentum":
            raise ConfigError(
                f"optimizer.form={self.form!r} applies to optimizer.name='momentum' only; "
                f"{self.name} has one form (leave optimizer.form=classical)"
            )
        if self.bias_correction and not (self.name == "momentum" and self.form == "ema"):
            raise ConfigError(
                "optimizer.bias_correction=true needs optimizer.name='momentum' with "
                "optimizer.form='ema': the classical form has no average to correct, and adam "
                "always corrects its moments"
            )

    @property
    def gradient_scale(self) -> float:
        """The constant the rule multiplies the gradient by first: the s of ``update``."""
        if self.name in ("sgd", "nesterov") or (
            self.name == "momentum" and self.form == "classical"
        ):
            return -self.lr
        if self.name == "momentum":  # ema
            return 1.0 - self.beta
        return 1.0  # rmsprop, adam: not linear in g

    def init(self, w: Array) -> State:
        """Zero state for parameters shaped like ``w``: velocity/moments, step count, scratch."""
        state: State = {"t": 0, "scratch": np.zeros_like(w)}
        for key in BUFFERS[self.name]:
            state[key] = np.zeros_like(w)
        return state

    def step(self, w: Array, g: Array, state: State) -> None:
        """One update of ``w`` (in place) from the gradient ``g``."""
        scale = self.gradient_scale
        s = g if scale == 1.0 else np.multiply(g, scale, out=state["scratch"])
        self.update(w, s, state)

    def update(self, w: Array, s: Array, state: State) -> None:
        """One update of ``w`` (in place) from ``s = gradient_scale · g``; ``s`` is not changed
        unless it is ``state["scratch"]``."""
        state["t"] += 1
        RULES[self.name](self, w, s, state)


def _sgd(opt: Optimizer, w: Array, s: Array, state: State) -> None:
    w += s  # s = −η g


def _momentum(opt: Optimizer, w: Array, s: Array, state: State) -> None:
    v = state["v"]
    v *= opt.beta
    v += s  # classical: s = −η g, v ← β v − η g;  ema: s = (1 − β) g
    if opt.form == "classical":
        w += v
    else:
        lr = opt.lr / (1.0 - opt.beta ** state["t"]) if opt.bias_correction else opt.lr
        w -= np.multiply(v, lr, out=state["scratch"])


def _nesterov(opt: Optimizer, w: Array, s: Array, state: State) -> None:
    v = state["v"]
    v *= opt.beta
    v += s  # v ← β v − η g  (s = −η g)
    w += s
    w += np.multiply(v, opt.beta, out=state["scratch"])  # w ← w + β v − η g


def _rmsprop(opt: Optimizer, w: Array, g: Array, state: State) -> None:
    s, scratch = state["s"], state["scratch"]
    s *= opt.beta2
    s += np.multiply(np.square(g, out=scratch), 1.0 - opt.beta2, out=scratch)
    np.sqrt(s, out=scratch)
    scratch += opt.eps
    np.divide(g, scratch, out=scratch)
    scratch *= opt.lr
    w -= scratch


def _adam(opt: Optimizer, w: Array, g: Array, state: State) -> None:
    m, s, scratch, t = state["m"], state["s"], state["scratch"], state["t"]
    m *= opt.beta
    m += np.multiply(g, 1.0 - opt.beta, out=scratch)
    s *= opt.beta2
    s += np.multiply(np.square(g, out=scratch), 1.0 - opt.beta2, out=scratch)
    # √ŝ + ε = √s / √(1 − β₂^t) + ε; the step is η m̂ / (√ŝ + ε).
    np.sqrt(s, out=scratch)
    scratch /= np.sqrt(1.0 - opt.beta2**t)
    scratch += opt.eps
    np.divide(m, scratch, out=scratch)
    scratch *= opt.lr / (1.0 - opt.beta**t)
    w -= scratch


def sharpness_threshold(opt: Optimizer) -> float | None:
    """The largest curvature λ at which the rule is stable on the quadratic f(w) = λw²/2, or
    None where no such bound on the Hessian's top eigenvalue exists (rmsprop, adam).

    Linear recurrences on f' = λw, with h = ηλ (derivations in docs/instruments-curvature.md):
    - sgd: w' = (1 − h) w, stable iff h < 2: λ < 2/η;
    - classical momentum: w_{t+1} = (1 + β − h) w_t − β w_{t−1}; the roots of
      r² − (1 + β − h) r + β leave the unit circle through r = −1 at h = 2 + 2β: λ < (2 + 2β)/η;
    - nesterov (torch's form): state (w, v) with matrix [[1 − h(1 + β), β²], [−h, β]],
      characteristic r² − (1 + β − h(1 + β)) r + β(1 − h), whose root crosses −1 at
      h = 2(1 + β)/(1 + 2β): λ < 2(1 + β)/((1 + 2β) η);
    - ema momentum ≡ classical with η(1 − β): λ < (2 + 2β)/(η(1 − β)); with bias correction
      the step η_t = η(1 − β)/(1 − β^t) tends to η(1 − β), so the same bound holds in the long
      run (the first steps are larger: step 1 is plain η g);
    - rmsprop, adam divide each coordinate's step by its own √ŝ: their bound is on the
      preconditioned Hessian diag(√ŝ + ε)^{-1} H, not on H, so none is given for H.
    """
    if opt.name == "sgd":
        return 2.0 / opt.lr
    if opt.name == "nesterov":
        return 2.0 * (1.0 + opt.beta) / ((1.0 + 2.0 * opt.beta) * opt.lr)
    if opt.name == "momentum":
        lr = opt.lr if opt.form == "classical" else opt.lr * (1.0 - opt.beta)
        return (2.0 + 2.0 * opt.beta) / lr
    return None


RULES: dict[str, Callable[[Optimizer, Array, Array, State], None]] = {
    "sgd": _sgd,
    "momentum": _momentum,
    "nesterov": _nesterov,
    "rmsprop": _rmsprop,
    "adam": _adam,
}
BUFFERS: dict[str, tuple[str, ...]] = {
    "sgd": (),
    "momentum": ("v",),
    "nesterov": ("v",),
    "rmsprop": ("s",),
    "adam": ("m", "s"),
}
