"""A network made ready for the engine once: its private copy, traced graph and float32 screen.

Every call of :func:`pipeline.engine.lines.discover` on a plain module copies it into the working
dtype, swaps in the engine's fast layers, traces it (``method="subdivide"``) and makes the
float32 copy its certificate screens with. On a short segment that set-up is a large part of
the time (the MLP 3072-1024x3-10: about 60 ms against 100 ms of work). Prepare once and pass
the result instead of the module::

    from pipeline.engine.lines import discover, prepare
    ready = prepare(net)                  # float64, the device of net's parameters
    for x0, x1 in lines:
        res = discover(ready, x0, x1)     # no copy, no trace

The prepared copies are checked against the source module at every use (each parameter's and
buffer's identity, storage and version counter, which in-place updates bump), and rebuilt when
it has changed, so a prepared network never answers for weights it no longer has.
"""

from __future__ import annotations

import copy

import torch

from pipeline.engine.allowlist import Assumed
from pipeline.engine.fastops import with_fast_layers

__all__ = ["PreparedModel", "prepare", "as_prepared", "preflight"]


def _signature(model: torch.nn.Module) -> tuple:
    tensors = [*model.parameters(), *model.buffers()]
    return tuple((id(p), p.data_ptr(), p._version, p.dtype, tuple(p.shape), p.device) for p in tensors) + tuple(
        m.training for m in model.modules())


def _check_model(model):
    if not isinstance(model, torch.nn.Module):
        raise TypeError(f"model must be a torch.nn.Module, got {type(model).__name__}")
    training = [name or type(model).__name__ for name, m in model.named_modules() if m.training]
    if training:
        raise ValueError(
            f"the model is in training mode ({', '.join(training[:3])}{'...' if len(training) > 3 else ''}): "
            "BatchNorm and dropout are not fixed affine maps there. Call model.eval() first."
        )


def _resolve_device(model, device):
    if device is None:
        p = next(iter(model.parameters()), None)
        device = p.device if p is not None else torch.device("cpu")
    device = torch.device(device)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise RuntimeError("device='cuda' was asked for but no CUDA device is available here; "
                           "use device='cpu'")
    return device


def _private_copy(model, dtype, device):
    # converted while copied: the parameters are not copied twice
    memo = {}
    for t in (*model.parameters(), *model.buffers()):
        v = t.detach().to(device=device, dtype=dtype if t.is_floating_point() else t.dtype, copy=True)
        memo[id(t)] = torch.nn.Parameter(v, requires_grad=False) if isinstance(t, torch.nn.Parameter) else v
    work = copy.deepcopy(model, memo)
    for p in work.parameters():
        p.requires_grad_(False)
    return with_fast_layers(work, device)


class PreparedModel:
    """The engine's view of one network in one dtype on one device (see the module docstring).

    ``work`` is the private copy the engine runs; ``plan`` (the traced graph), ``screen``
    (the float32 copy of the certificate) and ``screen_plan`` are made when first needed.
    """

    def __init__(self, model: torch.nn.Module, dtype=torch.float64, device=None, assume_affine=()):
        _check_model(model)
        if dtype not in (torch.float32, torch.float64):
            raise ValueError(f"dtype must be torch.float64 (default, as the paper) or torch.float32, got {dtype}")
        self.source, self.dtype = model, dtype
        self.device = _resolve_device(model, device)
        self.assumed = Assumed(assume_affine)
        self._build()

    def _build(self):
        self.signature = _signature(self.source)
        self.work = _private_copy(self.source, self.dtype, self.device)
        self._plan = self._screen = self._screen_plan = None
        self._trace_error = None
        self._concrete: dict = {}  # input shape -> plan traced with an example input
        self.checked: set = set()  # (input shape, dtype) that passed preflight()

    def assumed_affine_report(self) -> str:
        """The ops declared affine (``assume_affine``) that the network was seen to apply to its
        input, first one first ("" when none): what a failing certificate points at."""
        return self.assumed.report()

    @property
    def traceable(self) -> bool:
        """Whether a plain symbolic trace works (else :meth:`plan_for` traces with an example)."""
        return self._trace_error is None

    def plan_for(self, example: torch.Tensor):
        """The traced graph, for inputs shaped like ``example`` (one or more rows, in the working
        dtype): a plain symbolic trace where torch.fx manages one; else a trace that runs
        ``example`` alongside, so that code branching on a shape takes the example's branch."""
        if self._trace_error is None:
            try:
                return self.plan
            except ValueError as err:
                self._trace_error = err
        key = tuple(example.shape[1:])
        if key not in self._concrete:
            from pipeline.engine.graph import Plan
            from pipeline.engine.tracing import trace_concrete

            self._concrete[key] = Plan(trace_concrete(self.work, example[:1], self._trace_error))
        return self._concrete[key]

    def refresh(self) -> "PreparedModel":
        """Rebuild the copies if the source module changed since they were made."""
        _check_model(self.source)
        if _signature(self.source) != self.signature:
            self._build()
        return self

    @property
    def plan(self):
        if self._plan is None:
            from pipeline.engine.graph import Plan
            from pipeline.engine.tracing import trace

            self._plan = Plan(trace(self.work))
        return self._plan

    @property
    def screen_plan(self):
        """The traced graph of :attr:`screen`."""
        if self._screen_plan is None:
            from pipeline.engine.graph import Plan
            from pipeline.engine.tracing import trace

            self._screen_plan = self.plan if self.dtype == torch.float32 else Plan(trace(self.screen))
        return self._screen_plan

    @property
    def screen(self):
        if self._screen is None:
            self._screen = self.work if self.dtype == torch.float32 else _private_copy(
                self.source, torch.float32, self.device)
        return self._screen


def prepare(model: torch.nn.Module, dtype=torch.float64, device=None, assume_affine=()) -> PreparedModel:
    """Make ``model`` ready for repeated :func:`pipeline.engine.lines.discover` calls (see the
    module docstring). ``dtype``, ``device`` and ``assume_affine`` as in ``discover``."""
    return PreparedModel(model, dtype, device, assume_affine)


def as_prepared(model, dtype, device=None, assume_affine=()) -> PreparedModel:
    """``model`` ready for the engines: a :class:`PreparedModel` is checked against ``dtype``
    and ``device`` and refreshed (rebuilt if its source changed); a plain module is prepared."""
    if isinstance(model, PreparedModel):
        if model.dtype != dtype or (device is not None and torch.device(device) != model.device):
            raise ValueError(f"this model was prepared for {model.dtype} on {model.device}; pass the same dtype "
                             f"and device (got {dtype} on {device}) or prepare it again")
        if assume_affine and tuple(assume_affine) != model.assumed.funcs:
            raise ValueError("assume_affine is given to prepare(), not to each call on a prepared model")
        return model.refresh()
    return prepare(model, dtype, device, assume_affine)


def preflight(prepared: PreparedModel, x0: torch.Tensor, x1: torch.Tensor) -> None:
    """One linearising pass of the network at ``x0`` towards ``x1`` (one row each), with every
    op checked (:mod:`pipeline.engine.allowlist`): an op the engine cannot follow is refused by name
    before any work. Once per input shape and dtype of a prepared model."""
    key = (tuple(x0.shape[1:]), x0.dtype)
    if key in prepared.checked:
        return
    from pipeline.engine.linearize import linearize

    linearize(prepared.work, x0.to(device=prepared.device, dtype=prepared.dtype),
              (x1 - x0).to(device=prepared.device, dtype=prepared.dtype), track=False,
              assumed=prepared.assumed, check_output=True)
    prepared.checked.add(key)
