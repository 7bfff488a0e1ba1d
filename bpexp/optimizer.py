"""First-order update rules, one signature for all: ``optimizer.step(w, g, state)``.

``w`` is the flat parameter vector and ``g`` the gradient of the batch-mean cost; the step
updates ``w`` and ``state`` in place. ``state = optimizer.init(w)`` is a plain dict of arrays and
the step counter ``t``: everything the rule remembers is there to inspect.
Forms, conventions and the identities between them: docs/science.md#update-rules.

The rules are ``sgd``, ``momentum`` (``form`` classical or ema, the latter with or without
``bias_correction``), ``nesterov``, ``rmsprop`` and ``adam``.

Each rule is one small class below (what a rule holds is said above ``Sgd``); ``RULES`` maps
``optimizer.name`` to it, and adding a rule is a class and its line there
(docs/where-to-add.md#a-new-update-rule).

``gradient_scale`` is the constant a rule multiplies the gradient by before anything else (sgd,
classical momentum and Nesterov −η, EMA momentum 1 − β, rmsprop and adam 1: they are not
linear in g). Each rule is written on that scaled gradient ``s``, so ``update(w, s, state)`` is
the rule itself and ``step(w, g, state)`` is ``update(w, gradient_scale · g, state)``. The
trainer has backprop fold the scale into δ^L (where it already folds 1/m) and calls ``update``
directly: on a 784-100-10 network at batch 10 that saves one pass over every parameter, about
40% of the update.

L2 regularisation (``weight_decay`` = λ, Nielsen's chapter 3) belongs to the cost, not to a
rule: every rule descends C + λ/(2n) Σ_l ‖W^l‖², over weights only, n the training-set size,
whose gradient adds (λ/n) W to ∂C/∂W. For sgd that is the decoupled step
w ← (1 − ηλ/n) w − η g exactly. PyTorch's ``weight_decay`` wd adds wd · w to the gradient of
every parameter it is given, biases included: bpexp's λ is torch's wd = λ/n on a parameter
group of the weights, with wd = 0 for the biases (and for Adam, torch.optim.Adam, not AdamW).
"""

from __future__ import annotations

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


@dataclass(frozen=True)
class Optimizer:
    """The settings of an update rule (the ``optimizer`` config group), checked, and the rule
    they select, ``rule`` (one of the classes of ``RULES``), to which it hands each step."""

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
        # Not a field: the rule is derived from the fields, so it stays out of eq, repr and
        # the config schema; object.__setattr__ because the dataclass is frozen.
        object.__setattr__(self, "rule", RULES[self.name](self))

    @property
    def gradient_scale(self) -> float:
        """The constant the rule multiplies the gradient by first: the s of ``update``."""
        return self.rule.gradient_scale

    def init(self, w: Array) -> State:
        """Zero state for parameters shaped like ``w``: the rule's buffers, step count, scratch."""
        state: State = {"t": 0, "scratch": np.zeros_like(w)}
        for key in self.rule.buffers:
            state[key] = np.zeros_like(w)
        return state

    def step(self, w: Array, g: Array, state: State) -> None:
        """One update of ``w`` (in place) from the gradient ``g``."""
        scale = self.rule.gradient_scale
        s = g if scale == 1.0 else np.multiply(g, scale, out=state["scratch"])
        self.update(w, s, state)

    def update(self, w: Array, s: Array, state: State) -> None:
        """One update of ``w`` (in place) from ``s = gradient_scale · g``; ``s`` is not changed
        unless it is ``state["scratch"]``."""
        state["t"] += 1
        self.rule.update(w, s, state)


# Each rule: ``buffers`` (the state arrays it keeps), ``gradient_scale``, ``effective_step``,
# ``sharpness_threshold`` (see the functions of those names below) and ``update(w, s, state)``,
# which changes ``w`` and the buffers in place from s = gradient_scale · g; ``state["t"]`` is
# the step number (1 at the first step), ``state["scratch"]`` a free array shaped like ``w``.
# Stability bounds: f(w) = λw²/2, h = ηλ (derivations in docs/instruments-curvature.md).


class Sgd:
    """w ← w − η g."""

    buffers = ()

    def __init__(self, opt: Optimizer) -> None:
        self.gradient_scale = -opt.lr
        self.effective_step = opt.lr
        self.sharpness_threshold = 2.0 / opt.lr  # w' = (1 − h) w: stable iff h < 2

    def update(self, w: Array, s: Array, state: State) -> None:
        w += s  # s = −η g


class Momentum:
    """``form="classical"``: v ← β v − η g;  w ← w + v (identical to
    torch.optim.SGD(momentum=β, dampening=0) with lr = η).
    ``form="ema"``: v ← β v + (1 − β) g;  w ← w − η v, or with ``bias_correction``
    w ← w − η v / (1 − β^t). EMA(η, β) ≡ classical with η(1 − β)."""

    buffers = ("v",)

    def __init__(self, opt: Optimizer) -> None:
        self.lr, self.beta, self.bias_correction = opt.lr, opt.beta, opt.bias_correction
        self.classical = opt.form == "classical"
        self.gradient_scale = -opt.lr if self.classical else 1.0 - opt.beta
        # The classical velocity sums a geometric series; the EMA averages, it does not sum.
        self.effective_step = opt.lr / (1.0 - opt.beta) if self.classical else opt.lr
        # Classical: w_{t+1} = (1 + β − h) w_t − β w_{t−1}, whose roots leave the unit circle
        # through r = −1 at h = 2 + 2β. EMA ≡ classical with η(1 − β); with bias correction
        # η_t = η(1 − β)/(1 − β^t) tends to η(1 − β), so the same bound holds in the long run
        # (the first steps are larger: step 1 is plain η g).
        classical_lr = opt.lr if self.classical else opt.lr * (1.0 - opt.beta)
        self.sharpness_threshold = (2.0 + 2.0 * opt.beta) / classical_lr

    def update(self, w: Array, s: Array, state: State) -> None:
        v = state["v"]
        v *= self.beta
        v += s  # classical: s = −η g, v ← β v − η g;  ema: s = (1 − β) g
        if self.classical:
            w += v
        else:
            lr = self.lr / (1.0 - self.beta ** state["t"]) if self.bias_correction else self.lr
            w -= np.multiply(v, lr, out=state["scratch"])


class Nesterov:
    """The reformulated form whose stored weights are the look-ahead point:
    v ← β v − η g(w);  w ← w − β v_prev + (1 + β) v, i.e. w ← w + β v − η g
    (identical to torch.optim.SGD(momentum=β, nesterov=True))."""

    buffers = ("v",)

    def __init__(self, opt: Optimizer) -> None:
        self.beta = opt.beta
        self.gradient_scale = -opt.lr
        self.effective_step = opt.lr / (1.0 - opt.beta)  # as classical momentum
        # State (w, v) with matrix [[1 − h(1 + β), β²], [−h, β]], characteristic
        # r² − (1 + β − h(1 + β)) r + β(1 − h), whose root crosses −1 at h = 2(1 + β)/(1 + 2β).
        self.sharpness_threshold = 2.0 * (1.0 + opt.beta) / ((1.0 + 2.0 * opt.beta) * opt.lr)

    def update(self, w: Array, s: Array, state: State) -> None:
        v = state["v"]
        v *= self.beta
        v += s  # v ← β v − η g  (s = −η g)
        w += s
        w += np.multiply(v, self.beta, out=state["scratch"])  # w ← w + β v − η g


# rmsprop and adam divide each coordinate's step by its own √ŝ: their stability bound is on the
# preconditioned Hessian diag(√ŝ + ε)^{-1} H, not on H, so none is given for H (None); their
# effective step is η, the step being scaled per coordinate.


class RMSprop:
    """s ← ρ s + (1 − ρ) g²;  w ← w − η g / (√s + ε), with ρ = ``beta2``."""

    buffers = ("s",)
    gradient_scale = 1.0  # not linear in g
    sharpness_threshold = None

    def __init__(self, opt: Optimizer) -> None:
        self.lr, self.beta2, self.eps = opt.lr, opt.beta2, opt.eps
        self.effective_step = opt.lr

    def update(self, w: Array, g: Array, state: State) -> None:
        s, scratch = state["s"], state["scratch"]
        s *= self.beta2
        s += np.multiply(np.square(g, out=scratch), 1.0 - self.beta2, out=scratch)
        np.sqrt(s, out=scratch)
        scratch += self.eps
        np.divide(g, scratch, out=scratch)
        scratch *= self.lr
        w -= scratch


class Adam:
    """m ← β m + (1 − β) g;  s ← β₂ s + (1 − β₂) g²;
    w ← w − η m̂ / (√ŝ + ε), m̂ = m / (1 − β^t), ŝ = s / (1 − β₂^t)."""

    buffers = ("m", "s")
    gradient_scale = 1.0  # not linear in g
    sharpness_threshold = None

    def __init__(self, opt: Optimizer) -> None:
        self.lr, self.beta, self.beta2, self.eps = opt.lr, opt.beta, opt.beta2, opt.eps
        self.effective_step = opt.lr

    def update(self, w: Array, g: Array, state: State) -> None:
        m, s, scratch, t = state["m"], state["s"], state["scratch"], state["t"]
        m *= self.beta
        m += np.multiply(g, 1.0 - self.beta, out=scratch)
        s *= self.beta2
        s += np.multiply(np.square(g, out=scratch), 1.0 - self.beta2, out=scratch)
        # √ŝ + ε = √s / √(1 − β₂^t) + ε; the step is η m̂ / (√ŝ + ε).
        np.sqrt(s, out=scratch)
        scratch /= np.sqrt(1.0 - self.beta2**t)
        scratch += self.eps
        np.divide(m, scratch, out=scratch)
        scratch *= self.lr / (1.0 - self.beta**t)
        w -= scratch


RULES: dict[str, type] = {
    "sgd": Sgd,
    "momentum": Momentum,
    "nesterov": Nesterov,
    "rmsprop": RMSprop,
    "adam": Adam,
}


def effective_step(name: str, form: str, lr: float, beta: float) -> float:
    """The long-run step per unit of a constant gradient: η/(1 − β) for classical momentum and
    Nesterov (their velocity sums a geometric series), η for SGD and the EMA forms (the EMA
    averages, it does not sum) and for RMSprop and Adam (whose steps are scaled per coordinate).
    Arms line up by this, not by ``optimizer.lr``, when comparing learning rates."""
    return Optimizer(name, lr, beta, form).rule.effective_step


def sharpness_threshold(opt: Optimizer) -> float | None:
    """The largest curvature λ at which the rule is stable on the quadratic f(w) = λw²/2, or
    None where no such bound on the Hessian's top eigenvalue exists (rmsprop, adam).
    With h = ηλ: sgd λ < 2/η; classical momentum λ < (2 + 2β)/η; nesterov
    λ < 2(1 + β)/((1 + 2β) η); ema momentum as classical with η(1 − β). Each rule's class
    gives its derivation; docs/instruments-curvature.md works them out."""
    return opt.rule.sharpness_threshold
