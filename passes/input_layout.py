"""ChannelsFirstInputsPass (`--input-layout NCHW`): image inputs (rank 3 to 5) are taken
channels-first, so a conv net's input needs no transpose at all.

    x: float32[N, H, W, C]   becomes   x: float32[N, C, H, W] followed by transpose(x, (0, 2, 3, 1))

and the layout pass cancels that transpose against the one the first conv layer emits. The
graph's interface changes: callers feed channels-first arrays.
"""

from __future__ import annotations

from kcompile.ir.graph import Graph, Node, Value

from .base import Pass, PassResult


class ChannelsFirstInputsPass(Pass):
    name = "channels-first-inputs"

    def run(self, graph: Graph) -> PassResult:
        changed = 0
        for i, old in enumerate(list(graph.inputs)):
            r = old.type.rank
            if not 3 <= r <= 5:
                continue
            to_first = (0, r - 1, *range(1, r - 1))
            new = Value(old.name, old.type.with_shape(tuple(old.type.shape[p] for p in to_first)))
            back = Value(graph.fresh_name(f"{old.name}/channels_last"), old.type)
            node = Node("transpose", [new], {"perm": (0, *range(2, r), 1)}, [back])
            back.producer = node
            graph.inputs[i] = new
            graph.nodes.insert(0, node)
            graph.replace_uses(old, back)
            changed += 1
        return PassResult(graph, changed > 0, {"inputs": changed} if changed else {})
