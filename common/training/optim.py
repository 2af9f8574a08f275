"""Optimizers as tf.Modules with explicit slots: LARS (DeepMind's and the release's form), SGD, Adam.

Each optimizer is built from the list of variables it will update and creates one slot variable per
variable and slot at construction, so `tf.train.Checkpoint(optimizer=...)` saves and restores it
before the first step (slots are matched to variables by list position). Build it inside the
strategy scope the variables were built in. `apply_gradients(grads, lr)` takes gradients aligned with
that list and already summed (or averaged) across replicas; it can be called in a replica context
(inside `strategy.run`), where every replica applies the same update to its own copy, or with no
strategy at all.

LARS (You et al. 2017), as DeepMind's BYOL applies it (docs/DECISIONS.md 6), for a parameter p
with gradient g, momentum buffer mu, weight decay wd, trust coefficient eta and momentum m:
    g1 = g + wd p                     (weight decay, unless p is excluded)
    tr = eta ||p|| / ||g1||            (1 if either norm is 0; whole-tensor norms, no epsilon)
    g2 = tr g1                         (unless p is excluded from adaptation)
    mu = m mu + g2;  p = p - lr mu
The release's form keeps lr inside the buffer: v = m v + lr tr g1; p = p - v. The two agree while lr
is constant and differ when it changes between steps.

Which variables are excluded is decided by name rules for biases and batch norm only; any other
special treatment comes as an explicit list of variables (`excluded_from_adaptation`), e.g. the
trainer's online linear probe treated as the release's supervised head: the release kept its head
out of LARS and added wd/2 ||W||^2 on the head's kernel to the loss, so the kernel gets g + wd W
with no trust ratio and the bias neither (exactly `excluded_from_adaptation` plus the bias rule).
"""
from __future__ import annotations

import dataclasses
import re
from typing import Callable, Iterable, Sequence, Union

import tensorflow as tf

ExclusionSpec = Union[Callable[[str], bool], Sequence[str], None]

_NORM_PARAMS = ("offset", "scale", "beta", "gamma")

# The release excluded 'batch_normalization' and 'bias' variables by re.search on their names (and
# its supervised head, which the trainer hands over as variables, `excluded_from_adaptation`; EMA
# copies are never given to the optimizer). The same roles under this project's names: BN modules
# are named '...batchnorm...' (leaves scale/offset) and dense biases are the leaf 'b'.
RELEASE_EXCLUDE_PATTERNS = (
    "batchnorm", "batch_norm", "batch_normalization", "bias", r"(^|/)b(:\d+)?$")


def _leaf_path(name: str) -> list[str]:
    """'net/linear/b:0' -> ['net', 'linear', 'b']."""
    return re.sub(r":\d+$", "", name).split("/")


def exclude_bias_and_norm(name: str) -> bool:
    """True (no weight decay, no trust ratio) for biases and normalisation parameters.

    Excluded: a leaf named 'b' or 'bias', and a leaf 'offset'/'scale'/'beta'/'gamma' of a module
    whose name contains 'norm' (e.g. 'resnet/block_0/batchnorm_1/scale:0', or the haiku path
    'net/~/batchnorm/offset'). Conv and dense kernels ('w', 'kernel') are included.
    """
    parts = _leaf_path(name)
    leaf = parts[-1].lower()
    module = parts[-2].lower() if len(parts) > 1 else ""
    return leaf in ("b", "bias") or ("norm" in module and leaf in _NORM_PARAMS)


def _excluder(spec: ExclusionSpec, what: str) -> Callable[[str], bool]:
    """A name -> excluded predicate from a callable, a sequence of regex patterns, or None (nothing)."""
    if spec is None:
        return lambda name: False
    if callable(spec):
        return spec
    if isinstance(spec, str):
        spec = (spec,)
    try:
        patterns = [re.compile(p) for p in spec]
    except (TypeError, re.error) as e:
        raise ValueError(f"{what} must be a callable name -> bool, a sequence of regex patterns or "
                         f"None; got {spec!r} ({e}).") from e
    return lambda name: any(p.search(name) for p in patterns)


def _is_distributed(variable) -> bool:
    return isinstance(variable, tf.distribute.DistributedValues)


class _Optimizer(tf.Module):
    """Slots, masks, gradient checks and the (distributed) update loop shared by the optimizers."""

    _SLOTS: tuple[str, ...] = ()

    def __init__(self, variables, name: str):
        super().__init__(name=name)
        variables = list(variables)
        if not variables:
            raise ValueError(f"{name}: the variable list is empty; pass the variables to optimize.")
        seen = set()
        for v in variables:
            if not isinstance(v, tf.Variable):
                raise TypeError(f"{name}: expected tf.Variable objects, got {type(v).__name__}.")
            if v.ref() in seen:
                raise ValueError(f"{name}: variable {v.name} appears twice in the variable list.")
            seen.add(v.ref())
        if any(_is_distributed(v) for v in variables) and not tf.distribute.has_strategy():
            raise ValueError(f"{name}: the variables belong to a tf.distribute strategy; build the "
                             "optimizer inside the same `strategy.scope()`.")
        # References, not the variables, so that the optimizer's checkpoint holds only its own state.
        self._refs = [v.ref() for v in variables]
        self._names = [v.name for v in variables]
        with self.name_scope:
            self.iterations = tf.Variable(
                0, dtype=tf.int64, trainable=False, name="iterations",
                aggregation=tf.VariableAggregation.ONLY_FIRST_REPLICA)
            for slot in self._SLOTS:
                setattr(self, slot, [
                    tf.Variable(tf.zeros(v.shape, v.dtype), trainable=False,
                                name="/".join(_leaf_path(v.name)) + "/" + slot,
                                aggregation=tf.VariableAggregation.ONLY_FIRST_REPLICA)
                    for v in variables])

    @property
    def variables_to_update(self) -> list[tf.Variable]:
        """The variables given at construction, in order."""
        return [r.deref() for r in self._refs]

    def _mask(self, spec: ExclusionSpec, include_mask, what: str) -> list[bool]:
        """Per-variable True = treated (weight decay / adaptation applied)."""
        if include_mask is not None:
            mask = [bool(m) for m in include_mask]
            if len(mask) != len(self._refs):
                raise ValueError(f"include_mask has {len(mask)} entries for {len(self._refs)} variables.")
            return mask
        excluded = _excluder(spec, what)
        return [not excluded(n) for n in self._names]

    def _refs_among(self, variables: Iterable[tf.Variable], what: str) -> set:
        """The refs of `variables`, each of which must be one of the optimizer's variables."""
        refs = set()
        own = set(self._refs)
        for v in variables:
            if not isinstance(v, tf.Variable):
                raise TypeError(f"{self.name}: {what} must hold tf.Variable objects, got "
                                f"{type(v).__name__}.")
            if v.ref() not in own:
                raise ValueError(f"{self.name}: {what} lists {v.name}, which is not among the "
                                 "variables this optimizer updates.")
            refs.add(v.ref())
        return refs

    def _check_gradients(self, grads) -> list[tf.Tensor]:
        grads = list(grads)
        if len(grads) != len(self._refs):
            raise ValueError(f"{self.name}: got {len(grads)} gradients for {len(self._refs)} variables; "
                             "pass them in the order of the construction variable list.")
        out = []
        for g, ref, name in zip(grads, self._refs, self._names):
            if g is None:
                raise ValueError(f"{self.name}: the gradient of variable {name} is None (it does not "
                                 "affect the loss); drop it from the optimizer's variable list.")
            var = ref.deref()
            g = tf.convert_to_tensor(g, dtype_hint=var.dtype)
            if g.dtype != var.dtype:
                g = tf.cast(g, var.dtype)
            if not g.shape.is_compatible_with(var.shape):
                raise ValueError(f"{self.name}: gradient of shape {g.shape} for variable {name} of "
                                 f"shape {var.shape}.")
            out.append(g)
        return out

    def apply_gradients(self, grads, lr, skip=None) -> None:
        """Applies one step with learning rate `lr` (scalar) to every variable; increments `iterations`.

        Args:
          grads: one gradient per construction variable, same order and shapes, already reduced
            across replicas.
          lr: the learning rate, a float or a scalar tensor.
          skip: None, or a scalar bool tensor (the same on every replica): when True no variable
            or slot changes and only `iterations` advances (a float16 step whose gradients
            overflowed, common.training.precision.LossScale).
        """
        grads = self._check_gradients(grads)
        lr = tf.convert_to_tensor(lr, dtype_hint=tf.float32)
        if not tf.distribute.has_strategy():
            self._apply(_LocalUpdater(), grads, lr, skip)
        elif tf.distribute.in_cross_replica_context():
            self._apply(tf.distribute.get_strategy().extended, grads, lr, skip)
        else:
            # Every replica holds the same reduced gradients; merge_call hands them to the strategy,
            # which runs each update on every device's copy of the variable and of its slots.
            tf.distribute.get_replica_context().merge_call(
                lambda strategy, g, rate, s: self._apply(strategy.extended, g, rate, s),
                args=(grads, lr, skip))

    def _apply(self, updater, grads, lr, skip=None) -> None:
        def update_all():
            extra = self._step_constants()
            for i, ref in enumerate(self._refs):
                slots = tuple(getattr(self, s)[i] for s in self._SLOTS)
                updater.update(ref.deref(), self._update_variable,
                               args=(grads[i], lr, extra, i) + slots, group=False)

        if skip is None:
            update_all()
        else:
            tf.cond(skip, lambda: None, update_all)
        updater.update(self.iterations, lambda it: it.assign_add(1), group=False)

    def _step_constants(self):
        """Values computed once per step before any variable changes (Adam's bias corrections)."""
        return ()

    def _update_variable(self, var, grad, lr, extra, index, *slots):
        raise NotImplementedError


class _LocalUpdater:
    """The `strategy.extended.update` interface without a strategy: call fn on the variable."""

    @staticmethod
    def update(var, fn, args=(), group=False):
        del group
        return fn(var, *args)


class LARS(_Optimizer):
    """Layer-wise adaptive rate scaling with momentum (see the module docstring for the math).

    Args:
      variables: the variables to optimize (their order is the gradient and slot order).
      momentum: m. weight_decay: wd. eta: trust coefficient.
      form: 'deepmind' (mu = m mu + g2; p -= lr mu) or 'release' (v = m v + lr tr g1; p -= v).
      exclude_from_weight_decay, exclude_from_adaptation: a callable `(variable_name) -> bool`
        (True = excluded), a sequence of regex patterns searched in the name, or None (exclude
        nothing). Both default to `exclude_bias_and_norm`; use RELEASE_EXCLUDE_PATTERNS for the
        release's behaviour.
      include_mask: optional per-variable booleans (True = weight decay and adaptation applied) that
        override both name rules.
      excluded_from_adaptation: variables (a subset of `variables`) that never get the trust
        ratio, whatever the rules and mask say; their weight decay still follows the rules.
    """

    _SLOTS = ("momentum",)
    FORMS = ("deepmind", "release")

    def __init__(self, variables, momentum: float = 0.9, weight_decay: float = 1e-6,
                 eta: float = 1e-3, form: str = "deepmind",
                 exclude_from_weight_decay: ExclusionSpec = exclude_bias_and_norm,
                 exclude_from_adaptation: ExclusionSpec = exclude_bias_and_norm,
                 include_mask: Sequence[bool] | None = None,
                 excluded_from_adaptation: Iterable[tf.Variable] = (), name: str = "lars"):
        if form not in self.FORMS:
            raise ValueError(f"Unknown LARS form {form!r}; choose one of {self.FORMS}.")
        super().__init__(variables, name)
        self.momentum_coefficient = float(momentum)
        self.weight_decay = float(weight_decay)
        self.eta = float(eta)
        self.form = form
        self.decay_mask = self._mask(exclude_from_weight_decay, include_mask,
                                     "exclude_from_weight_decay")
        self.adapt_mask = self._mask(exclude_from_adaptation, include_mask, "exclude_from_adaptation")
        excluded = self._refs_among(excluded_from_adaptation, "excluded_from_adaptation")
        self.adapt_mask = [a and r not in excluded for a, r in zip(self.adapt_mask, self._refs)]

    def _update_variable(self, var, grad, lr, extra, index, buf):
        del extra
        p = tf.convert_to_tensor(var)
        g = grad
        if self.decay_mask[index]:
            g = g + self.weight_decay * p
        trust = tf.ones([], p.dtype)
        if self.adapt_mask[index]:
            p_norm = tf.norm(p)
            g_norm = tf.norm(g)
            ok = tf.logical_and(p_norm > 0.0, g_norm > 0.0)
            trust = tf.where(ok, self.eta * p_norm / tf.where(ok, g_norm, 1.0), 1.0)
        lr = tf.cast(lr, p.dtype)
        if self.form == "deepmind":
            if self.adapt_mask[index]:
                g = g * trust
            new_buf = self.momentum_coefficient * buf + g
            buf.assign(new_buf)
            var.assign_sub(lr * new_buf)
        else:
            new_buf = self.momentum_coefficient * buf + lr * trust * g
            buf.assign(new_buf)
            var.assign_sub(new_buf)


class SGDMomentum(_Optimizer):
    """SGD with momentum: g1 = g + wd p (unless excluded); mu = m mu + g1;
    p -= lr (g1 + m mu) with Nesterov, else p -= lr mu.

    Args as LARS; weight decay defaults to 0 (off).
    """

    _SLOTS = ("momentum",)

    def __init__(self, variables, momentum: float = 0.9, nesterov: bool = False,
                 weight_decay: float = 0.0,
                 exclude_from_weight_decay: ExclusionSpec = exclude_bias_and_norm,
                 include_mask: Sequence[bool] | None = None, name: str = "sgd_momentum"):
        super().__init__(variables, name)
        self.momentum_coefficient = float(momentum)
        self.nesterov = bool(nesterov)
        self.weight_decay = float(weight_decay)
        self.decay_mask = self._mask(exclude_from_weight_decay, include_mask,
                                     "exclude_from_weight_decay")

    def _update_variable(self, var, grad, lr, extra, index, buf):
        del extra
        p = tf.convert_to_tensor(var)
        g = grad
        if self.weight_decay and self.decay_mask[index]:
            g = g + self.weight_decay * p
        new_buf = self.momentum_coefficient * buf + g
        buf.assign(new_buf)
        step = g + self.momentum_coefficient * new_buf if self.nesterov else new_buf
        var.assign_sub(tf.cast(lr, p.dtype) * step)


class Adam(_Optimizer):
    """Adam (Kingma & Ba) with bias correction and optional decoupled weight decay (AdamW).

    m = b1 m + (1-b1) g;  v = b2 v + (1-b2) g^2;  t = iterations + 1;
    p -= lr (m/(1-b1^t) / (sqrt(v/(1-b2^t)) + eps) + wd p)   (wd p only for included variables).
    """

    _SLOTS = ("first_moment", "second_moment")

    def __init__(self, variables, beta1: float = 0.9, beta2: float = 0.999, epsilon: float = 1e-8,
                 weight_decay: float = 0.0,
                 exclude_from_weight_decay: ExclusionSpec = exclude_bias_and_norm,
                 include_mask: Sequence[bool] | None = None, name: str = "adam"):
        super().__init__(variables, name)
        self.beta1, self.beta2, self.epsilon = float(beta1), float(beta2), float(epsilon)
        self.weight_decay = float(weight_decay)
        self.decay_mask = self._mask(exclude_from_weight_decay, include_mask,
                                     "exclude_from_weight_decay")

    def _step_constants(self):
        t = tf.cast(self.iterations + 1, tf.float32)
        return (1.0 - tf.pow(self.beta1, t), 1.0 - tf.pow(self.beta2, t))

    def _update_variable(self, var, grad, lr, extra, index, m, v):
        correction1, correction2 = (tf.cast(c, var.dtype) for c in extra)
        p = tf.convert_to_tensor(var)
        new_m = self.beta1 * m + (1.0 - self.beta1) * grad
        new_v = self.beta2 * v + (1.0 - self.beta2) * tf.square(grad)
        m.assign(new_m)
        v.assign(new_v)
        step = (new_m / correction1) / (tf.sqrt(new_v / correction2) + self.epsilon)
        if self.weight_decay and self.decay_mask[index]:
            step = step + self.weight_decay * p
        var.assign_sub(tf.cast(lr, p.dtype) * step)


@dataclasses.dataclass(frozen=True)
class OptimConfig:
    """Optimizer settings.

    Attributes:
      name: 'lars', 'momentum' (alias 'sgd': SGD with momentum, optionally Nesterov) or 'adam'.
      momentum, weight_decay, eta, lars_form: LARS (momentum and weight decay also for SGD;
        weight_decay is Adam's decoupled decay).
      nesterov: SGD only. adam_beta1, adam_beta2, adam_epsilon: Adam only.
      exclude_probe: treat the online linear probe as the release's supervised head: no LARS
        trust ratio on its variables, weight decay wd W on its kernel (as the release's
        wd/2 ||W||^2 loss term) and none on its bias. The trainer implements it by passing the
        probe's variables to `build_optimizer(excluded_from_adaptation=...)`, and does so also for
        lars_form='release'. DeepMind's reference applies LARS to its classifier like any
        other kernel (False).
    """
    name: str = "lars"
    momentum: float = 0.9
    weight_decay: float = 1e-6
    eta: float = 1e-3
    lars_form: str = "deepmind"
    nesterov: bool = False
    adam_beta1: float = 0.9
    adam_beta2: float = 0.999
    adam_epsilon: float = 1e-8
    exclude_probe: bool = False


OPTIMIZERS = ("lars", "momentum", "sgd", "adam")  # "momentum" and "sgd" are the same optimizer
_FORM_DEFAULT = object()


def build_optimizer(name: str, variables, cfg: OptimConfig = OptimConfig(), *,
                    exclude_from_weight_decay=_FORM_DEFAULT, exclude_from_adaptation=_FORM_DEFAULT,
                    include_mask: Sequence[bool] | None = None,
                    excluded_from_adaptation: Iterable[tf.Variable] = ()) -> _Optimizer:
    """The optimizer `name` (one of OPTIMIZERS, usually cfg.name) over `variables`, set from `cfg`.

    Exclusion rules not given explicitly follow the form: RELEASE_EXCLUDE_PATTERNS (batch norm and
    biases) for lars_form='release', `exclude_bias_and_norm` otherwise. `excluded_from_adaptation`
    lists variables (a subset of `variables`) that LARS must not scale by the trust ratio while
    their weight decay follows the rules; the trainer passes the online probe's variables there
    when cfg.exclude_probe is set or lars_form='release' (the release's supervised head). SGD and
    Adam have no trust ratio and only check the list. Call inside the variables' strategy scope.
    """
    if name not in OPTIMIZERS:
        raise ValueError(f"Unknown optimizer {name!r}; choose one of {OPTIMIZERS}.")
    default = RELEASE_EXCLUDE_PATTERNS if (name == "lars" and cfg.lars_form == "release") \
        else exclude_bias_and_norm
    excluded_from_adaptation = list(excluded_from_adaptation)
    wd_rule = default if exclude_from_weight_decay is _FORM_DEFAULT else exclude_from_weight_decay
    adapt_rule = default if exclude_from_adaptation is _FORM_DEFAULT else exclude_from_adaptation
    if name == "lars":
        return LARS(variables, momentum=cfg.momentum, weight_decay=cfg.weight_decay, eta=cfg.eta,
                    form=cfg.lars_form, exclude_from_weight_decay=wd_rule,
                    exclude_from_adaptation=adapt_rule, include_mask=include_mask,
                    excluded_from_adaptation=excluded_from_adaptation)
    if name in ("momentum", "sgd"):
        opt = SGDMomentum(variables, momentum=cfg.momentum, nesterov=cfg.nesterov,
                          weight_decay=cfg.weight_decay, exclude_from_weight_decay=wd_rule,
                          include_mask=include_mask)
    else:
        opt = Adam(variables, beta1=cfg.adam_beta1, beta2=cfg.adam_beta2,
                   epsilon=cfg.adam_epsilon, weight_decay=cfg.weight_decay,
                   exclude_from_weight_decay=wd_rule, include_mask=include_mask)
    opt._refs_among(excluded_from_adaptation, "excluded_from_adaptation")
    return opt
