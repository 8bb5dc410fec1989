"""K students of one architecture trained in lock-step as one stacked model (``torch.func``).

A small student keeps a GPU busy a few percent of the time: stacking K of them (their parameters
and buffers stacked along a new first dimension, ``stack_module_state``) and running them with
``vmap`` over ``functional_call`` turns K small launches into one large one. Each member keeps
what it would have alone: its initial weights (built by the caller under its seed), its batch
order (``batch_indices`` with a generator seeded like ``fit``'s), its own method, T and alpha (the
loss is ``vmap``-ed per method over the members that use it, parameters as tensors), its own
BatchNorm running statistics (stacked buffers, updated in place under ``vmap``) and its own Adam
state and step count (Adam is per element, written out here so that members that joined at
different times keep their own bias corrections), and its own dropout masks: every ``nn.Dropout`` of the
stacked copy draws its mask from a counter-based hash of the member's seed, its step and the layer, not
from the global RNG, so a member's result does not depend on how many or which students share its stack. Members join and leave between epochs
(``add``/``remove``), so a pruned trial's slot is refilled at the next epoch boundary.

What cannot stack (feature methods, a live teacher, streamed images, an op without a ``vmap``
rule) is the caller's to run one at a time: see ``stack_refusal`` and ``probe``.
"""

from __future__ import annotations

import copy
import warnings
from dataclasses import dataclass, field, replace
from typing import Callable, Hashable

import torch
from torch import Tensor, nn
from torch.func import functional_call, stack_module_state, vmap

from ..data import ImageStore, Split
from ..errors import first_line, out_of_memory
from ..signals import raise_if_stop_requested
from .methods import DistillBatch, Method
from .metrics import accuracy, auc
from .train import EpochResult, TrainSet, TrialPlan, _autocast, batch_indices

BETAS = (0.9, 0.999)  # torch.optim.Adam's defaults, as fit uses them
EPS = 1e-8
VAL_CHUNK = 1024  # validation rows scored at once after each epoch
LOSS_DTYPE = torch.float32  # losses are computed on float32 logits, as in fit (hyperparameters as tensors of it)


DROPOUTS = (nn.Dropout, nn.Dropout1d, nn.Dropout2d, nn.Dropout3d)
_MASK32 = 0xFFFFFFFF


def _hash32(x: Tensor) -> Tensor:
    """A 32-bit integer mix (``lowbias32``) of each element of an int64 tensor, kept in [0, 2**32)."""
    x = x & _MASK32
    x = x ^ (x >> 16)
    x = (x * 0x7FEB352D) & _MASK32
    x = x ^ (x >> 15)
    x = (x * 0x846CA68B) & _MASK32
    return x ^ (x >> 16)


def member_uniform(key: Tensor, layer: int, shape: tuple[int, ...], device: torch.device) -> Tensor:
    """Uniforms in [0, 1) of ``shape``, a pure function of ``key`` = (seed, step) (int64, batched under ``vmap``
    over the members), the ``layer`` number and the position: the same numbers at any stack size."""
    n = 1
    for d in shape:
        n *= d
    base = _hash32(_hash32(_hash32(key[0]) ^ key[1]) ^ layer)
    bits = _hash32(base + torch.arange(n, device=device, dtype=torch.int64) * 0x9E3779B9)
    return ((bits >> 8).to(torch.float32) * (1.0 / (1 << 24))).reshape(shape)


class MemberDropout(nn.Module):
    """``nn.Dropout`` (or ``Dropout1d/2d/3d``, whole channels) whose mask comes from ``member_uniform`` with the
    stack's current member keys (``StudentStack.keybox``) instead of the global RNG."""

    def __init__(self, keybox: list, original: nn.Module, layer: int) -> None:
        super().__init__()
        self.p = float(original.p)
        self.channelwise = not isinstance(original, nn.Dropout)
        self.layer = layer
        self.keybox = keybox  # [the (seed, step) key of the member being run, or None], set by the stack

    def forward(self, x: Tensor) -> Tensor:
        key = self.keybox[0]
        if not self.training or self.p == 0.0 or key is None:
            return x
        if self.p >= 1.0:
            return x * 0
        shape = tuple(x.shape[:2]) + (1,) * (x.dim() - 2) if self.channelwise else tuple(x.shape)
        keep = member_uniform(key, self.layer, shape, x.device) >= self.p
        return x * keep.to(x.dtype) / (1.0 - self.p)


def _member_dropouts(model: nn.Module, keybox: list) -> None:
    """Replace every dropout module of ``model`` by a ``MemberDropout`` (in place)."""
    found = [(name, m) for name, m in model.named_modules() if isinstance(m, DROPOUTS)]
    for layer, (name, m) in enumerate(found):
        parent, _, attr = name.rpartition(".")
        setattr(model.get_submodule(parent) if parent else model, attr, MemberDropout(keybox, m, layer))


def _meta_copy(template: nn.Module) -> nn.Module:
    """A copy of ``template`` on the meta device with its tied parameters still tied (``.to`` unties them), so
    that ``functional_call`` reads every alias of a tied weight from the one stacked tensor."""
    base = copy.deepcopy(template).to("meta")
    first: dict[int, str] = {}
    for name, p in template.named_parameters(remove_duplicate=False):
        if id(p) in first:
            owner, _, attr = name.rpartition(".")
            setattr(base.get_submodule(owner) if owner else base, attr, base.get_parameter(first[id(p)]))
        else:
            first[id(p)] = name
    return base


def stack_refusal(plan: TrialPlan) -> str | None:
    """Why a student trained as ``plan`` says cannot join a stack (one line), or None when it can."""
    if plan.method.needs_features:
        return f"{plan.method.name} reads feature maps through hooks, which the stacked path does not tap"
    if plan.live_teacher is not None:
        return "the teacher runs live on augmented batches (teacher_mode = consistent)"
    if plan.augment is not None:
        return "its batches are augmented (teacher_mode = consistent), which the stacked path does not do"
    if len(plan.train) < plan.batch_size:
        return "its training rows are fewer than one batch"
    if isinstance(plan.train.x, ImageStore):
        return "the images are streamed from disk (data.stream)"
    return None


@dataclass
class Member:
    """One student of the stack: who it is for (``key``), how it learns, where it is."""

    key: Hashable
    method: Method
    params: dict[str, float]
    train: TrainSet
    generator: torch.Generator  # batch order, seeded like fit's
    seed: int = 0  # its dropout masks' key, with its step count
    epochs_done: int = 0
    history: list[EpochResult] = field(default_factory=list)


class StudentStack:
    """K students of ``template``'s architecture trained together; see the module docstring.

    ``steps`` Adam steps per epoch with ``batch_size`` rows each (every member takes the same number
    of steps, as ``fit`` does with ``steps``); ``val`` is scored for every member after each epoch.
    """

    def __init__(
        self,
        template: nn.Module,
        val: Split,
        *,
        batch_size: int,
        lr: float,
        steps: int,
        device: torch.device,
    ) -> None:
        self.base = _meta_copy(template)
        self.keybox: list[Tensor | None] = [None]  # (seed, step) of the member run, batched under vmap; None: eval
        _member_dropouts(self.base, self.keybox)
        self.val = val
        self.batch_size = batch_size
        self.lr = lr
        self.steps = steps
        self.device = device
        self.members: list[Member] = []
        self.params: dict[str, Tensor] = {}
        self.buffers: dict[str, Tensor] = {}
        self.exp_avg: dict[str, Tensor] = {}
        self.exp_avg_sq: dict[str, Tensor] = {}
        self.adam_steps = torch.zeros(0, device=device)
        self.together: int | None = None  # members trained at once after running out of memory (None: all)
        self.on_shrink: Callable[[int], None] | None = None  # told the new ``together`` when memory ran out
        self.shrink_on_oom = True  # False: running out of memory is raised (the K probe)

    def __len__(self) -> int:
        return len(self.members)

    @property
    def dtype(self) -> torch.dtype:
        """The students' floating-point type (float32 unless a caller builds them otherwise)."""
        return next(iter(self.params.values())).dtype if self.params else torch.get_default_dtype()

    @property
    def keys(self) -> list[Hashable]:
        return [m.key for m in self.members]

    def batch_rows(self, train: TrainSet) -> int:
        return min(self.batch_size, len(train))

    def add(self, key: Hashable, model: nn.Module, plan: TrialPlan) -> None:
        """Add a fresh student (``model``, initialized by the caller under ``plan.seed``) that learns as ``plan``
        says (its method and params, on ``plan.train``, already on this device), its batch order from the seed.
        The plan's batch size, learning rate and steps per epoch must be the stack's (``stack_refusal`` must have
        passed it); its epochs are its own (a member leaves when the caller says)."""
        if (plan.batch_size, plan.lr) != (self.batch_size, self.lr):
            raise ValueError(
                f"a stack of batch size {self.batch_size} and lr {self.lr} cannot take a student planned with "
                f"batch size {plan.batch_size} and lr {plan.lr}"
            )
        train = plan.train
        if self.members and self.batch_rows(train) != self.batch_rows(self.members[0].train):
            raise ValueError("every member of a stack needs the same batch size (a training set smaller than it)")
        if plan.steps_per_epoch != self.steps:
            raise ValueError(
                f"a stack of {self.steps} steps per epoch cannot take a student planned with {plan.steps_per_epoch}"
            )
        model = model.to(self.device)
        new_params, new_buffers = stack_module_state([model])
        member = Member(
            key, plan.method, dict(plan.params), train, torch.Generator().manual_seed(plan.seed), seed=plan.seed
        )

        def grow(old: dict[str, Tensor], new: dict[str, Tensor]) -> dict[str, Tensor]:
            if not old:
                return {k: v.detach().clone() for k, v in new.items()}
            return {k: torch.cat([old[k].detach(), new[k].detach()]) for k, v in new.items()}

        self.params = {k: v.requires_grad_(True) for k, v in grow(self.params, new_params).items()}
        self.buffers = grow(self.buffers, new_buffers)
        zeros = {k: torch.zeros_like(v.detach()) for k, v in new_params.items()}
        self.exp_avg = grow(self.exp_avg, zeros)
        self.exp_avg_sq = grow(self.exp_avg_sq, zeros)
        self.adam_steps = torch.cat(
            [self.adam_steps.to(self.dtype), torch.zeros(1, device=self.device, dtype=self.dtype)]
        )
        self.members.append(member)

    def remove(self, key: Hashable) -> list[EpochResult]:
        """Take member ``key`` out of the stack (pruned, finished or failed); its history."""
        at = self.keys.index(key)
        keep = torch.tensor([i for i in range(len(self.members)) if i != at], dtype=torch.long, device=self.device)

        def shrink(d: dict[str, Tensor]) -> dict[str, Tensor]:
            return {k: v.detach().index_select(0, keep) for k, v in d.items()}

        self.params = {k: v.requires_grad_(True) for k, v in shrink(self.params).items()}
        self.buffers = shrink(self.buffers)
        self.exp_avg = shrink(self.exp_avg)
        self.exp_avg_sq = shrink(self.exp_avg_sq)
        self.adam_steps = self.adam_steps.index_select(0, keep)
        return self.members.pop(at).history

    def member_model(self, key: Hashable, template: nn.Module) -> nn.Module:
        """Member ``key``'s weights and buffers loaded into ``template`` (a model of the same architecture)."""
        at = self.keys.index(key)
        with torch.no_grad():  # by name, not load_state_dict: tied weights and non-persistent buffers load too
            for name, value in self.params.items():
                template.get_parameter(name).copy_(value[at])
            for name, value in self.buffers.items():
                template.get_buffer(name).copy_(value[at])
        return template

    # ----------------------------------------------------------------------------------------- training

    def _forward(self, params: dict[str, Tensor], buffers: dict[str, Tensor], x: Tensor) -> Tensor:
        return functional_call(self.base, (params, buffers), (x,))

    def _forward_keyed(self, params: dict[str, Tensor], buffers: dict[str, Tensor], x: Tensor, key: Tensor) -> Tensor:
        """``_forward`` with ``key`` (this member's (seed, step)) seen by its ``MemberDropout`` layers."""
        self.keybox[0] = key
        try:
            return self._forward(params, buffers, x)
        finally:
            self.keybox[0] = None

    def _member_keys(self) -> Tensor:
        """(K, 2) int64: each member's (seed, optimizer steps taken so far), its dropout key for the next step."""
        steps = self.adam_steps.detach().round().to(torch.int64)
        seeds = torch.tensor([m.seed for m in self.members], dtype=torch.int64, device=self.device)
        return torch.stack([seeds, steps], dim=1)

    def _batch_plan(self, epoch_rows: list[Tensor]) -> tuple[list[tuple[TrainSet, Tensor]], Tensor | None]:
        """Per training set: (the set, its members' row indices as (steps, K_set, B)), and the permutation
        that puts the concatenated sets back in member order (None when every member shares one set)."""
        groups: dict[int, list[int]] = {}
        for i, m in enumerate(self.members):
            groups.setdefault(id(m.train), []).append(i)
        plan = [(self.members[g[0]].train, torch.stack([epoch_rows[i] for i in g], dim=1)) for g in groups.values()]
        if len(plan) == 1:
            return plan, None
        order = [i for g in groups.values() for i in g]
        return plan, torch.argsort(torch.tensor(order, device=self.device))

    def _gather(
        self, plan: list[tuple[TrainSet, Tensor]], inverse: Tensor | None, step: int
    ) -> tuple[Tensor, Tensor, Tensor, Tensor | None]:
        """(x, y, labeled, teacher logits) of every member's batch at ``step``, stacked (K, B, ...); a member
        whose set has no teacher logits (``scratch``) gets zeros, which its loss does not read."""
        parts = []
        for train, rows in plan:
            r = rows[step]
            parts.append(
                (
                    train.x[r],
                    train.y[r],
                    train.labeled[r],
                    None if train.teacher_logits is None else train.teacher_logits[r],
                )
            )
        if inverse is None:
            return parts[0]
        like = next((p[3] for p in parts if p[3] is not None), None)
        teacher = None
        if like is not None:
            filled = [p[3] if p[3] is not None else like.new_zeros((len(p[0]), *like.shape[1:])) for p in parts]
            teacher = torch.cat(filled)[inverse]
        return (
            torch.cat([p[0] for p in parts])[inverse],
            torch.cat([p[1] for p in parts])[inverse],
            torch.cat([p[2] for p in parts])[inverse],
            teacher,
        )

    def _method_groups(self) -> list[tuple[Method, Tensor, dict[str, Tensor]]]:
        """(method, member positions, params as (K_m,) tensors) per method in the stack."""
        by_name: dict[str, list[int]] = {}
        for i, m in enumerate(self.members):
            by_name.setdefault(m.method.name, []).append(i)
        groups = []
        for positions in by_name.values():
            method = self.members[positions[0]].method
            names = self.members[positions[0]].params.keys()
            params = {
                n: torch.tensor([self.members[i].params[n] for i in positions], device=self.device, dtype=LOSS_DTYPE)
                for n in names
            }
            groups.append((method, torch.tensor(positions, device=self.device), params))
        return groups

    def run_epoch(self) -> dict[Hashable, EpochResult]:
        """One epoch for every member (``steps`` lock-step Adam steps), then one validation pass for all;
        each member's ``EpochResult`` by key.

        Out of memory, the epoch starts again from its boundary with the members trained ``together`` at a time
        (halved until it fits, down to 1; ``on_shrink`` is told): each member's result is what it would have
        been in one stack, since members share nothing but the launch."""
        if not self.members:
            return {}
        while True:
            together = self.together or len(self.members)
            snapshot = self._snapshot()
            try:
                if together >= len(self.members):
                    return self._epoch_of_all()
                return self._epoch_in_chunks(together)
            except RuntimeError as err:
                if not out_of_memory(err) or together == 1 or not self.shrink_on_oom:
                    raise
                self._restore(snapshot)
                self.together = max(1, min(together, len(self.members)) // 2)
                _release_cached_memory(self.device)
                if self.on_shrink is not None:
                    self.on_shrink(self.together)

    def _snapshot(self) -> dict:
        """What an epoch changes, copied (on the CPU), so that an epoch that ran out of memory can start again."""

        def cpu(d: dict[str, Tensor]) -> dict[str, Tensor]:
            return {k: v.detach().to("cpu", copy=True) for k, v in d.items()}

        return {
            "params": cpu(self.params),
            "buffers": cpu(self.buffers),
            "exp_avg": cpu(self.exp_avg),
            "exp_avg_sq": cpu(self.exp_avg_sq),
            "adam_steps": self.adam_steps.detach().to("cpu", copy=True),
            "generators": [m.generator.get_state() for m in self.members],
        }

    def _restore(self, snapshot: dict) -> None:
        def back(d: dict[str, Tensor]) -> dict[str, Tensor]:
            return {k: v.to(self.device) for k, v in d.items()}

        self.params = {k: v.requires_grad_(True) for k, v in back(snapshot["params"]).items()}
        self.buffers = back(snapshot["buffers"])
        self.exp_avg = back(snapshot["exp_avg"])
        self.exp_avg_sq = back(snapshot["exp_avg_sq"])
        self.adam_steps = snapshot["adam_steps"].to(self.device)
        for m, state in zip(self.members, snapshot["generators"]):
            m.generator.set_state(state)

    def _epoch_in_chunks(self, together: int) -> dict[Hashable, EpochResult]:
        """``run_epoch`` for ``together`` members at a time, each chunk a stack of its own sharing this one's
        state (taken out, trained, put back)."""
        out: dict[Hashable, EpochResult] = {}
        for start in range(0, len(self.members), together):
            at = torch.arange(start, min(start + together, len(self.members)), device=self.device)
            part = StudentStack.__new__(StudentStack)
            part.__dict__.update(self.__dict__)
            part.members = self.members[start : start + together]
            part.together = None
            part.on_shrink = None
            for name in ("params", "buffers", "exp_avg", "exp_avg_sq"):
                setattr(part, name, {k: v.detach().index_select(0, at) for k, v in getattr(self, name).items()})
            part.params = {k: v.requires_grad_(True) for k, v in part.params.items()}
            part.adam_steps = self.adam_steps.index_select(0, at)
            out.update(part._epoch_of_all())
            with torch.no_grad():
                for name in ("params", "buffers", "exp_avg", "exp_avg_sq"):
                    mine, theirs = getattr(self, name), getattr(part, name)
                    for k in mine:
                        mine[k].index_copy_(0, at, theirs[k].detach())
                self.adam_steps.index_copy_(0, at, part.adam_steps)
        return out

    def _epoch_of_all(self) -> dict[Hashable, EpochResult]:
        """One epoch for every member at once (see ``run_epoch``)."""
        k = len(self.members)
        epoch_rows = [batch_indices(len(m.train), self.batch_size, self.steps, m.generator) for m in self.members]
        plan, inverse = self._batch_plan([r.to(self.device) for r in epoch_rows])
        groups = self._method_groups()
        done = torch.tensor([float(m.epochs_done) for m in self.members], device=self.device, dtype=LOSS_DTYPE)
        total = torch.zeros(k, device=self.device, dtype=LOSS_DTYPE)
        forward = vmap(self._forward_keyed, randomness="different")
        member_losses_of: dict[tuple[str, bool], Callable] = {}  # each group's vmapped loss, built once per epoch
        self.base.train()
        params = list(self.params.values())
        for step in range(self.steps):
            x, y, labeled, t_logits = self._gather(plan, inverse, step)
            progress = done + (step + 1) / self.steps
            with _autocast(self.device):
                logits = forward(self.params, self.buffers, x, self._member_keys()).float()
                losses = torch.zeros(k, device=self.device, dtype=LOSS_DTYPE)
                for method, at, hp in groups:
                    every = len(at) == k
                    inputs = (logits, y, labeled, t_logits, progress)
                    if not every:
                        inputs = tuple(None if t is None else t.index_select(0, at) for t in inputs)
                    key = (method.name, inputs[3] is None)
                    if key not in member_losses_of:
                        dims = (0, 0, 0, None if inputs[3] is None else 0, 0, 0)  # scratch: no teacher logits
                        member_losses_of[key] = vmap(_member_loss(method), in_dims=dims)
                    member_losses = member_losses_of[key](*inputs[:4], hp, inputs[4])
                    losses = member_losses if every else losses.to(member_losses.dtype).index_add(0, at, member_losses)
            for p in params:
                p.grad = None
            losses.sum().backward()
            self._adam_step()
            total += losses.detach().to(total.dtype)
            raise_if_stop_requested()
        results = self._evaluate()
        out: dict[Hashable, EpochResult] = {}
        for i, m in enumerate(self.members):
            m.epochs_done += 1
            acc, roc = results[i]
            r = EpochResult(m.epochs_done, acc, roc, float(total[i]) / self.steps)
            m.history.append(r)
            out[m.key] = r
        return out

    @torch.no_grad()
    def _adam_step(self) -> None:
        """``torch.optim.Adam`` (defaults, no weight decay) on every member at once, with per-member step counts."""
        self.adam_steps += 1
        b1, b2 = BETAS
        bias1 = 1 - b1**self.adam_steps
        bias2_sqrt = (1 - b2**self.adam_steps).sqrt()
        for name, p in self.params.items():
            if p.grad is None:
                continue
            shape = (-1,) + (1,) * (p.dim() - 1)
            g = p.grad
            m, v = self.exp_avg[name], self.exp_avg_sq[name]
            m.lerp_(g, 1 - b1)
            v.mul_(b2).addcmul_(g, g, value=1 - b2)
            denom = (v.sqrt() / bias2_sqrt.view(shape)).add_(EPS)
            p.addcdiv_(m, denom * (bias1.view(shape) / self.lr), value=-1.0)

    @torch.no_grad()
    def _evaluate(self, chunk: int = VAL_CHUNK) -> list[tuple[float, float]]:
        """(accuracy, AUC) of every member on ``val``, in fp32 like ``train.predict``."""
        self.base.eval()
        forward = vmap(self._forward, in_dims=(0, 0, None))
        logits = torch.cat([forward(self.params, self.buffers, x).float() for x in self.val.x.split(chunk)], dim=1)
        self.base.train()
        return [(accuracy(member, self.val.y), auc(member, self.val.y)) for member in logits]


def _release_cached_memory(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.empty_cache()


def _member_loss(method: Method):
    """``method``'s loss for one member's batch, as a function ``vmap`` can map over the members."""

    def loss(logits: Tensor, labels: Tensor, labeled: Tensor, teacher: Tensor | None, params, progress) -> Tensor:
        return method.loss(DistillBatch(logits, labels, labeled, teacher, progress=progress), params)

    return loss


def probe(template: nn.Module, plan: TrialPlan, val: Split) -> str | None:
    """Why ``template`` cannot be trained stacked as ``plan`` says (an op without a ``vmap`` rule, data-dependent
    control flow), from one step of a two-member stack on copies; None when it can."""
    stack = StudentStack(
        template,
        Split(val.x[:2], val.y[:2]),
        batch_size=2,
        lr=1e-3,
        steps=1,
        device=plan.train.x.device,
    )
    try:
        for key in (0, 1):
            stack.add(key, copy.deepcopy(template), replace(plan, seed=key, batch_size=2, lr=1e-3, steps=1))
        with warnings.catch_warnings():  # two validation rows: AUC warns about a missing class
            warnings.simplefilter("ignore", UserWarning)
            stack.run_epoch()
    except (RuntimeError, ValueError, NotImplementedError, TypeError) as err:
        return first_line(err)
    return None
