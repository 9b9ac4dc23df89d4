"""Per-example gradients from one batched backward pass.

LESS needs the gradient of every example's own loss with respect to the LoRA weights. The
reference code runs one backward pass per example; here a batch runs forward and backward
once, and each example's gradient is rebuilt from what the pass already computes. For a
linear layer ``y = x W^T + b`` applied to the inputs ``x_i`` of example ``i`` (one row per
token), ``dL_i/dW = sum_t g_{i,t} x_{i,t}^T`` and ``dL_i/db = sum_t g_{i,t}``, where
``g_{i,t}`` is the gradient of the summed batch loss with respect to that output row. The
sum of per-example losses makes ``g_{i,t}`` depend on example ``i`` alone, so nothing
leaks between examples (padding rows have ``g = 0``: their loss terms are masked out).

This is the method Opacus uses for per-sample gradients. It covers every trainable
parameter of ``torch.nn.Linear`` layers, which is all of LoRA (``lora_A``/``lora_B``) and
of MLPs; a trainable parameter anywhere else is refused with its name rather than
silently left out. ``torch.func.vmap`` over ``grad`` was the other option, but the
mask-building code of Hugging Face models branches on tensor values, which ``vmap``
cannot trace, and its attention kernels fall back to a per-example loop under ``vmap``.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import torch

from dataselect.errors import InputError


class LinearGradients:
    """Per-example gradients of a model's trainable Linear weights, one backward pass per
    batch: :meth:`per_example` registers the hooks, runs the batch and removes them."""

    def __init__(self, model: torch.nn.Module):
        self.model = model
        self.layers: dict[str, torch.nn.Linear] = {}
        covered: set[str] = set()
        for module_name, module in model.named_modules():
            if isinstance(module, torch.nn.Linear) and any(
                p.requires_grad for p in module.parameters(recurse=False)
            ):
                self.layers[module_name] = module
                for param_name, p in module.named_parameters(recurse=False):
                    if p.requires_grad:
                        covered.add(f"{module_name}.{param_name}" if module_name else param_name)
        trainable = [n for n, p in model.named_parameters() if p.requires_grad]
        others = [n for n in trainable if n not in covered]
        if others:
            raise InputError(
                "per-example gradients cover trainable torch.nn.Linear weights only; freeze "
                f"or remove: {', '.join(others[:5])}" + (" …" if len(others) > 5 else "")
            )
        if not trainable:
            raise InputError("the model has no trainable parameters")
        self.names = trainable  # the order every flattened gradient follows

    @contextmanager
    def capture(self) -> Iterator[_Capture]:
        """Record layer inputs and output gradients while the batch runs forward and
        backward inside the block; read the gradients with ``capture.gradients()``."""
        capture = _Capture(self)
        handles = [layer.register_forward_hook(capture.forward_hook(name))
                   for name, layer in self.layers.items()]
        try:
            yield capture
        finally:
            for handle in handles:
                handle.remove()

    def per_example(self, batch_size: int, run_forward: Any) -> dict[str, torch.Tensor]:
        """Run ``run_forward()`` (which returns per-example losses of shape
        ``(batch_size,)``), backpropagate their sum once, and return per-example gradients
        in :attr:`names` order."""
        with self.capture() as capture:
            losses = run_forward()
            if losses.shape != (batch_size,):
                raise ValueError(f"expected {batch_size} per-example losses, got "
                                 f"{tuple(losses.shape)}")
            losses.sum().backward()
        self.model.zero_grad(set_to_none=True)
        return capture.gradients(batch_size)


class _Capture:
    def __init__(self, owner: LinearGradients):
        self.owner = owner
        self.inputs: dict[str, list[torch.Tensor]] = {}
        self.grads: dict[str, list[torch.Tensor | None]] = {}

    def forward_hook(self, name: str) -> Any:
        """Keep the layer's input and catch the gradient of its output, per call (a
        layer that runs twice in one forward pass contributes both calls)."""
        def hook(module: torch.nn.Module, args: tuple, output: torch.Tensor) -> None:
            inputs, grads = self.inputs.setdefault(name, []), self.grads.setdefault(name, [])
            inputs.append(args[0].detach())
            grads.append(None)
            call = len(grads) - 1

            def keep(grad: torch.Tensor) -> None:
                grads[call] = grad.detach()

            if output.requires_grad:
                output.register_hook(keep)
        return hook

    def gradients(self, batch_size: int) -> dict[str, torch.Tensor]:
        out: dict[str, torch.Tensor] = {}
        for module_name, layer in self.owner.layers.items():
            inputs, grads = self.inputs.get(module_name, []), self.grads.get(module_name, [])
            weight = bias = None
            for x, g in zip(inputs, grads):
                if g is None:  # the output did not reach the loss
                    continue
                x = x.reshape(batch_size, -1, x.shape[-1]).to(g.dtype)
                g = g.reshape(batch_size, -1, g.shape[-1])
                w = torch.einsum("bto,bti->boi", g, x)
                weight = w if weight is None else weight + w
                if layer.bias is not None and layer.bias.requires_grad:
                    b = g.sum(1)
                    bias = b if bias is None else bias + b
            prefix = f"{module_name}." if module_name else ""
            if layer.weight.requires_grad:
                out[prefix + "weight"] = _zeros_if_unused(weight, batch_size, layer.weight)
            if layer.bias is not None and layer.bias.requires_grad:
                out[prefix + "bias"] = _zeros_if_unused(bias, batch_size, layer.bias)
        return {name: out[name] for name in self.owner.names}


def _zeros_if_unused(grad: torch.Tensor | None, batch_size: int, param: torch.Tensor
                     ) -> torch.Tensor:
    if grad is None:  # the layer did not run for this batch
        return torch.zeros((batch_size, *param.shape), dtype=param.dtype, device=param.device)
    return grad


def adam_precondition(grad: torch.Tensor, exp_avg: torch.Tensor, exp_avg_sq: torch.Tensor,
                      beta1: float = 0.9, beta2: float = 0.999, eps: float = 1e-8
                      ) -> torch.Tensor:
    """The update direction Adam would take from its stored moments after seeing ``grad``
    (LESS's training-side feature as the paper writes it; the reference code divides by
    ``sqrt(v' + eps)`` instead): ``m' / (sqrt(v') + eps)`` with
    ``m' = beta1 m + (1 - beta1) g`` and ``v' = beta2 v + (1 - beta2) g^2``, no bias
    correction. ``grad`` may carry a leading batch dimension."""
    m = beta1 * exp_avg + (1 - beta1) * grad
    v = beta2 * exp_avg_sq + (1 - beta2) * grad.square()
    return m / (v.sqrt() + eps)
