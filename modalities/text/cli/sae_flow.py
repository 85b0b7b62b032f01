"""``polysteer sae flow``: the Feature Flow graph of an SAE feature; a multi-layer direction with per-layer weights."""

from __future__ import annotations

import click

from polysteer.errors import PolysteerError
from polysteer.modalities.text.cli import text_model_options
from polysteer.option_types import NONNEGATIVE_INT, POSITIVE_INT, CheckedChoice, CheckedFloat, input_type, output_type
from polysteer.options import coef_option, output_option
from polysteer.plugins.sae.pretrained import sae_type

COSINE = CheckedFloat(min=-1, max=1)


@click.command()
@text_model_options
@click.option("--sae", "sae_path", type=sae_type(), help="Start SAE, a resid_post SAE (default: the shipped SmolLM2 "
              "SAE).")
@click.option("--with", "others", multiple=True, type=sae_type(), help="Another SAE of the graph, repeatable: "
              "resid_post SAEs of other blocks, mlp_out and attn_out SAEs (each read from its cfg's hook point).")
@click.option("--feature", type=NONNEGATIVE_INT, help="Start feature (or pick it from --data).")
@click.option("--data", type=input_type(), help="Contrastive JSONL: start from the latent whose mean activation "
              "differs most between the classes (loads the model).")
@click.option("--threshold", type=COSINE, default=0.5, show_default=True, help="Minimum cosine of a residual link.")
@click.option("--module-threshold", type=COSINE, help="Minimum cosine of an MLP/attention link (default: "
              "--threshold).")
@click.option("--match", type=CheckedChoice(["decoder", "encoder"]), default="decoder", show_default=True,
              help="Compare the target's decoder row or encoder column with the candidates' decoder rows.")
@click.option("--depth", type=POSITIVE_INT, help="At most this many residual links each way.")
@click.option("--backward-only", is_flag=True, help="Follow predecessors only, not residual successors.")
@click.option("--normalize/--no-normalize", default=True, show_default=True,
              help="Divide the per-layer weights by their sum (the graph adds what one layer would).")
@coef_option(1.0, help="The file's default coefficient, in latent units of the start feature.")
@click.option("--graph", "graph_path", type=output_type(), help="Also write the graph as JSON here.")
@output_option(help="Direction file to write (.safetensors), one vector per node with its weight.")
def flow(model_name, device, dtype, sae_path, others, feature, data, threshold, module_threshold, match, depth,
         backward_only, normalize, coef, graph_path, output):
    """Build the flow graph of an SAE feature across layers and modules; write a multi-layer direction.

    The graph is data-free (cosines of SAE weights); the model is loaded only to pick the start feature from
    --data. Each node steers with its own weight: the product of the cosines on its path to the start.
    """
    from polysteer.modalities.text.cli.sae import _sae_path
    from polysteer.plugins.sae.flow import check_saes, flow_graph, saes_by_hook_point
    from polysteer.plugins.sae.model import SAE

    if (feature is None) == (data is None):
        raise PolysteerError("give exactly one of --feature N or --data FILE (to pick the start feature)")
    start = SAE.load(_sae_path(sae_path))
    saes = saes_by_hook_point([start, *(SAE.load(path) for path in others)])
    if feature is not None:
        check_saes(saes, start.hook_point, feature)
        model = dict(start.metadata.get("model", {}))
    else:
        feature, model = _feature_from_data(model_name, device, dtype, data, start)
    graph = flow_graph(saes, start.hook_point, feature, threshold, module_threshold, match, not backward_only, depth)
    direction = graph.direction(saes, model, normalize, coef, provenance={"data": str(data or "")})
    direction.save(output)
    if graph_path:
        from polysteer.io import write_json_atomic

        write_json_atomic(graph_path, graph.to_json())
    for hp, weight in graph.weights(normalize).items():
        node = next(n for n in graph.nodes if n.hook_point == hp)
        click.echo(f"{hp}  feature {node.feature}  ({node.module}, cosine {node.similarity:.3f})  weight {weight:.3f}")
    click.echo(f"wrote {output}: {len(graph.nodes)} nodes, {len(graph.edges)} edges")


def _feature_from_data(model_name, device, dtype, data, start) -> tuple[int, object]:
    """The start latent with the largest mean difference on the data's two classes, and the model's identity."""
    from polysteer.data import read_contrastive
    from polysteer.modalities.text.modality import TextModality
    from polysteer.modalities.text.models import load_text_model
    from polysteer.plugins.sae.flow_finder import FeatureFlow

    positives, negatives = read_contrastive(data)  # a bad file fails before the model loads
    model, tokenizer = load_text_model(model_name, device, dtype)
    modality = TextModality()
    start.check_width(modality.d_model(model, start.hook_point), "this model's activations")
    X = [modality.capture(model, tokenizer, examples, [start.hook_point], pooling="tokens")[start.hook_point]
         for examples in (positives, negatives)]
    return FeatureFlow(sae=start).fit(*X).feature_, model

