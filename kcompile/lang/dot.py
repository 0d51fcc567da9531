"""A model's layer graph -> Graphviz DOT text (`kcompile ... --emit dot`).

One box per layer call, coloured by the device the call runs on; inputs and outputs are ellipses;
edges carry tensor shapes. A call of a nested model (a model used as a layer) is drawn as a
cluster holding that model's own layer calls, so `replicas` shows the classifier twice, once
per device. A call without a device of its own runs where its enclosing call runs, as in the IR.
"""

from __future__ import annotations

from ..errors import ModelError
from ..layers.base import KTensor
from ..model import Model

# Fill colours for devices in order of first appearance; unplaced calls stay white.
PALETTE = ("#cfe2f3", "#d9ead3", "#fce5cd", "#ead1dc", "#fff2cc", "#d0e0e3", "#f4cccc", "#d9d2e9")
UNPLACED = "#ffffff"


def _quote(text: str) -> str:
    return '"' + text.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n") + '"'


def _shape(t: KTensor) -> str:
    dims = ["None" if d is None else str(d) for d in t.shape]
    return "(" + ", ".join(dims) + ("," if len(dims) == 1 else "") + ")"


class _Dot:
    def __init__(self) -> None:
        self.lines: list[str] = []
        self.edges: list[str] = []
        self.colours: dict[str, str] = {}
        self.count = 0

    def colour(self, device: str | None) -> str:
        if device is None:
            return UNPLACED
        if device not in self.colours:
            self.colours[device] = PALETTE[len(self.colours) % len(PALETTE)]
        return self.colours[device]

    def node(self, indent: str, label: str, device: str | None, shape: str = "box") -> str:
        self.count += 1
        name = f"n{self.count}"
        attrs = f"label={_quote(label)}, fillcolor={_quote(self.colour(device))}"
        if shape != "box":
            attrs += f", shape={shape}"
        if device:
            attrs += f", tooltip={_quote(device)}"
        self.lines.append(f"{indent}{name} [{attrs}];")
        return name

    def edge(self, src: str, dst: str, t: KTensor) -> None:
        self.edges.append(f"  {src} -> {dst} [label={_quote(_shape(t))}];")

    def calls(self, model: Model, env: dict[int, str], device: str | None, indent: str) -> None:
        """Draw `model`'s recorded layer calls; `env` maps its tensors to the nodes producing them."""
        for call in model._order:
            dev = call.device or device
            layer = call.layer
            if isinstance(layer, Model):
                self.count += 1
                self.lines.append(f"{indent}subgraph cluster_{self.count} {{")
                label = f"{layer.name} ({type(layer).__name__})" + (f" on {dev}" if dev else "")
                self.lines.append(f"{indent}  label={_quote(label)}; style=dashed;")
                inner: dict[int, str] = {}
                for t_inner, t_outer in zip(layer.inputs, call.inputs, strict=False):
                    inner[id(t_inner)] = env[id(t_outer)]
                self.calls(layer, inner, dev, indent + "  ")
                self.lines.append(f"{indent}}}")
                for t_out, t_inner in zip(call.outputs, layer.outputs, strict=False):
                    env[id(t_out)] = inner[id(t_inner)]
                continue
            label = f"{layer.name}\n{type(layer).__name__}" + (f"\n{dev}" if dev else "")
            name = self.node(indent, label, dev)
            for t in call.inputs:
                if id(t) in env:
                    self.edge(env[id(t)], name, t)
            for t in call.outputs:
                env[id(t)] = name


def model_to_dot(model: Model) -> str:
    """The layer graph of `model` as a Graphviz digraph (render with `dot -Tsvg`)."""
    if not model.outputs:
        raise ModelError(f"model '{model.name}' has no inputs yet: give it an Input or call it on a tensor first")
    dot = _Dot()
    env: dict[int, str] = {}
    for t in model.inputs:
        env[id(t)] = dot.node("  ", f"{t.name}\nInput {_shape(t)}", None, "ellipse")
    dot.calls(model, env, None, "  ")
    for t in model.outputs:
        out = dot.node("  ", f"output\n{t.name} {_shape(t)}", None, "ellipse")
        dot.edge(env[id(t)], out, t)
    head = [
        f"digraph {_quote(model.name)} {{",
        "  rankdir=TB;",
        '  node [shape=box, style="rounded,filled", fontname="Helvetica", fontsize=11];',
        '  edge [fontname="Helvetica", fontsize=9];',
    ]
    legend: list[str] = []
    if dot.colours:
        legend.append('  subgraph cluster_legend { label="devices"; style=solid;')
        for i, (device, colour) in enumerate(dot.colours.items()):
            legend.append(f"    legend{i} [label={_quote(device)}, fillcolor={_quote(colour)}];")
        legend.append("  }")
    return "\n".join(head + dot.lines + dot.edges + legend + ["}"]) + "\n"
