"""Feature Flow (Laptev et al., 2025): a graph linking an SAE feature to its matches in the SAEs of other modules.

A residual feature ``f`` at block ``L`` (``resid_post``) is matched, data-free, against the SAEs that can have
written it: the residual SAE one block earlier (``resid_post`` of ``L-1``, or ``resid_pre`` of ``L``), and the MLP
and attention-output SAEs of block ``L`` (``mlp_out``, ``attn_out``). Each candidate SAE contributes its top-1
latent by cosine between the target's decoder row (``match='decoder'``) or encoder column (``match='encoder'``) and
the candidate's decoder rows; a link is kept when the cosine reaches ``threshold``. The chain continues backwards
through linked residual predecessors and forwards through residual successors, and every residual node gets its
own MLP/attention predecessors, so the graph is the paper's flow graph around the start feature.

Multi-layer steering adds ``c * weight * W_dec[f]`` at every node, where a node's weight is the product of the
cosines on its path to the start (1 for the start), optionally divided by the sum of weights so the total added
equals one single-layer step of ``c``.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any, Mapping

import torch

from polysteer.direction import Direction
from polysteer.engine import Intervention, Plan
from polysteer.errors import PolysteerError
from polysteer.hookpoints import HookPoint, hook_point
from polysteer.plugins.sae.model import SAE

MATCHES = ("decoder", "encoder")


@dataclass(frozen=True)
class FlowNode:
    """One feature of the graph: where it lives, its index, how it links to its parent and its steering weight."""

    hook_point: str
    feature: int
    module: str  # resid, mlp or attn
    similarity: float  # cosine to the node it was matched from (1 for the start)
    weight: float  # product of the cosines on the path to the start
    parent: str | None = None  # "hook_point:feature" of that node


@dataclass
class FlowGraph:
    """The flow graph of one start feature: nodes in layer order, edges as ``(source, target, cosine)``."""

    start: FlowNode
    nodes: list[FlowNode]
    edges: list[tuple[str, str, float]] = field(default_factory=list)

    def weights(self, normalize: bool = True) -> dict[str, float]:
        """Per-hook-point weight of the coefficient (summing to 1 with ``normalize``)."""
        total = sum(n.weight for n in self.nodes) if normalize else 1.0
        return {n.hook_point: n.weight / total for n in self.nodes}

    def to_json(self) -> dict[str, Any]:
        return {"start": asdict(self.start), "nodes": [asdict(n) for n in self.nodes],
                "edges": [{"source": s, "target": t, "cosine": c} for s, t, c in self.edges]}

    def plan(self, saes: Mapping[str, SAE], coefficient: float, normalize: bool = True, **kwargs: Any) -> Plan:
        """Add ``coefficient * weight * W_dec[f]`` at every node (per-layer coefficients)."""
        weights = self.weights(normalize)
        return Plan([Intervention(saes[n.hook_point].W_dec[n.feature].detach().float(), n.hook_point,
                                  coefficient * weights[n.hook_point], "add", **kwargs) for n in self.nodes])

    def direction(self, saes: Mapping[str, SAE], model: Any, normalize: bool = True, coefficient: float = 1.0,
                  provenance: dict | None = None) -> Direction:
        """A multi-hook-point Direction: decoder rows, their norms as scales and the node weights as ``weights``."""
        rows = {n.hook_point: saes[n.hook_point].W_dec[n.feature].detach().float() for n in self.nodes}
        start = self.start
        return Direction.from_fitted(
            rows, model=model, modality="text", coefficient=coefficient, weights=self.weights(normalize),
            finder={"name": "flow", "params": {"feature": start.feature, "start": start.hook_point}},
            provenance={"flow_graph": self.to_json(), **(provenance or {})},
        )


def _key(node: FlowNode) -> str:
    return f"{node.hook_point}:{node.feature}"


def _unit(t: torch.Tensor, dim: int) -> torch.Tensor:
    return torch.nn.functional.normalize(t.detach().float(), dim=dim)


def best_match(target: SAE, feature: int, source: SAE, match: str = "decoder") -> tuple[int, float]:
    """The ``source`` latent that best explains ``target``'s feature: top-1 cosine between the target's decoder
    row (or encoder column, ``match='encoder'``) and the source's decoder rows."""
    _check_pair(target, source, match)
    vector = target.W_dec[feature] if match == "decoder" else target.W_enc[:, feature]
    cosine = _unit(source.W_dec, 1) @ _unit(vector, 0)
    best = int(cosine.argmax())
    return best, float(cosine[best])


def best_successor(source: SAE, feature: int, target: SAE, match: str = "decoder") -> tuple[int, float]:
    """The ``target`` latent that ``source``'s feature best explains (the mirror of :func:`best_match`)."""
    _check_pair(target, source, match)
    rows = _unit(target.W_dec, 1) if match == "decoder" else _unit(target.W_enc, 0).T
    cosine = rows @ _unit(source.W_dec[feature], 0)
    best = int(cosine.argmax())
    return best, float(cosine[best])


def _check_pair(target: SAE, source: SAE, match: str) -> None:
    if match not in MATCHES:
        raise PolysteerError(f"match must be one of {', '.join(MATCHES)}, got {match!r}")
    if target.d_in != source.d_in:
        raise PolysteerError(f"cannot match SAEs of widths {target.d_in} and {source.d_in}: they read other models")


def _predecessors(point: str, saes: Mapping[str, SAE]) -> dict[str, str]:
    """``module -> hook point`` of the given SAEs that can write a ``resid_post`` feature of this block."""
    layer = HookPoint.parse(point).layer
    found = {}
    for module, candidate in (("resid", hook_point(layer - 1, "resid_post")), ("resid", hook_point(layer, "resid_pre")),
                              ("mlp", hook_point(layer, "mlp_out")), ("attn", hook_point(layer, "attn_out"))):
        if candidate in saes and module not in found:
            found[module] = candidate
    return found


def check_saes(saes: Mapping[str, SAE], start: str, feature: int) -> None:
    """Refuse graphs that cannot be built: a start that is not a residual SAE, a feature out of range."""
    if start not in saes:
        raise PolysteerError(f"no SAE for the start hook point {start}; the SAEs read {', '.join(sorted(saes))}")
    if HookPoint.parse(start).site != "resid_post":
        raise PolysteerError(f"the start SAE must read a resid_post hook point, got {start}")
    if not 0 <= feature < saes[start].d_sae:
        raise PolysteerError(f"feature {feature} out of range: the SAE at {start} has {saes[start].d_sae} latents")


def flow_graph(saes: Mapping[str, SAE], start: str, feature: int, threshold: float = 0.5,
               module_threshold: float | None = None, match: str = "decoder", forward: bool = True,
               depth: int | None = None) -> FlowGraph:
    """Build the flow graph of ``feature`` of the SAE at ``start`` from SAEs keyed by their hook points.

    Args:
        saes: hook point -> SAE; residual SAEs (``resid_post``/``resid_pre``) chain across blocks, ``mlp_out`` and
            ``attn_out`` SAEs feed the residual feature of their block.
        threshold: minimum cosine of a residual link; module_threshold: of an MLP/attention link (default: same).
        match: compare the target's ``decoder`` row or ``encoder`` column with the candidates' decoder rows.
        forward: also follow residual successors; depth: at most this many residual links each way.
    """
    check_saes(saes, start, feature)
    root = FlowNode(start, int(feature), "resid", 1.0, 1.0)
    graph = FlowGraph(root, [root])
    _follow(graph, saes, root, threshold, match, depth, backward=True)
    if forward:
        _follow(graph, saes, root, threshold, match, depth, backward=False)
    limit = threshold if module_threshold is None else module_threshold
    for node in [n for n in graph.nodes if n.module == "resid" and HookPoint.parse(n.hook_point).site == "resid_post"]:
        for module, point in _predecessors(node.hook_point, saes).items():
            if module != "resid":
                index, cosine = best_match(saes[node.hook_point], node.feature, saes[point], match)
                if cosine >= limit:
                    _add(graph, node, point, module, index, cosine, upstream=True)
    graph.nodes.sort(key=lambda n: (HookPoint.parse(n.hook_point).layer, _ORDER[HookPoint.parse(n.hook_point).site]))
    return graph


_ORDER = {"resid_pre": 0, "attn_out": 1, "mlp_out": 2, "resid_post": 3}


def _add(graph: FlowGraph, parent: FlowNode, point: str, module: str, feature: int, cosine: float,
         upstream: bool) -> FlowNode:
    node = FlowNode(point, feature, module, cosine, parent.weight * cosine, _key(parent))
    graph.nodes.append(node)
    graph.edges.append((_key(node), _key(parent), cosine) if upstream else (_key(parent), _key(node), cosine))
    return node


def _follow(graph, saes, node, threshold, match, depth, backward: bool) -> None:
    """Chain residual links from ``node`` backwards (predecessors) or forwards (successors) while they hold."""
    steps = 0
    while depth is None or steps < depth:
        if backward:
            point = _predecessors(node.hook_point, saes).get("resid")
            if point is None:
                return
            index, cosine = best_match(saes[node.hook_point], node.feature, saes[point], match)
        else:
            point = hook_point(HookPoint.parse(node.hook_point).layer + 1, "resid_post")
            if point not in saes:
                return
            index, cosine = best_successor(saes[node.hook_point], node.feature, saes[point], match)
        if cosine < threshold:
            return
        node, steps = _add(graph, node, point, "resid", index, cosine, upstream=backward), steps + 1
        if HookPoint.parse(point).site != "resid_post":
            return  # a resid_pre SAE ends the chain: its own predecessors are not residual SAEs of this graph


def saes_by_hook_point(saes: Any) -> dict[str, SAE]:
    """SAEs (instances or directories, a list or a mapping) keyed by the hook point each records."""
    from polysteer.plugins.sae.model import load_sae

    items = saes.values() if isinstance(saes, Mapping) else saes
    out: dict[str, SAE] = {}
    for item in items:
        sae = load_sae(item)
        point = sae.hook_point
        if point in out:
            raise PolysteerError(f"two SAEs read {point}; give one SAE per hook point")
        out[point] = sae
    return out
