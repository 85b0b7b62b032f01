"""Feature Flow (graph over residual, MLP and attention SAEs; per-layer coefficients), the `flow` and `corrsteer`
finders, and `polysteer sae flow`."""

import json

import pytest
import torch

from polysteer import Direction, PolysteerError, make_finder
from polysteer.plugins.sae.flow import best_match, flow_graph
from polysteer.plugins.sae.flow_finder import label_correlation
from polysteer.plugins.sae.model import SAE

D, N = 64, 96


def hp(layer, site="resid_post"):
    return f"text.blocks.{layer}.{site}"


def sae_at(point, seed, d_in=D, d_sae=N):
    sae = SAE(d_in, d_sae, "topk", k=4, metadata={"hook_name": point})
    sae.reset_parameters(seed)
    return sae


def copy_rows(into, source, pairs, noise=0.05, seed=0):
    """Plant ``source`` decoder rows into ``into`` at new indices (``{source_index: into_index}``)."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for src, dst in pairs.items():
            into.W_dec[dst] = source.W_dec[src] + noise * torch.randn(source.d_in, generator=g)
            into.W_enc[:, dst] = into.W_dec[dst]


@pytest.fixture
def planted():
    """Residual SAEs at blocks 0-3 where feature 5 of block 2 was copied from block 1 (index 40) and on into block 3
    (index 11); block 0 is unrelated. Block 2's MLP SAE holds the feature (index 7); its attention SAE does not."""
    saes = {hp(i): sae_at(hp(i), seed=i) for i in range(4)}
    saes[hp(2, "mlp_out")] = sae_at(hp(2, "mlp_out"), seed=10)
    saes[hp(2, "attn_out")] = sae_at(hp(2, "attn_out"), seed=11)
    copy_rows(saes[hp(1)], saes[hp(2)], {5: 40})
    copy_rows(saes[hp(3)], saes[hp(2)], {5: 11}, seed=1)
    copy_rows(saes[hp(2, "mlp_out")], saes[hp(2)], {5: 7}, noise=0.08, seed=2)
    return saes


def test_graph_links_copied_features_and_leaves_unrelated_ones_out(planted):
    graph = flow_graph(planted, hp(2), 5, threshold=0.6)
    nodes = {(n.hook_point, n.feature, n.module) for n in graph.nodes}
    assert nodes == {(hp(1), 40, "resid"), (hp(2), 5, "resid"), (hp(3), 11, "resid"), (hp(2, "mlp_out"), 7, "mlp")}
    edges = {(s, t) for s, t, _ in graph.edges}
    assert edges == {(f"{hp(1)}:40", f"{hp(2)}:5"), (f"{hp(2)}:5", f"{hp(3)}:11"),
                     (f"{hp(2, 'mlp_out')}:7", f"{hp(2)}:5")}
    assert all(c > 0.8 for *_, c in graph.edges)  # copied rows: cosine near 1; random ones stay far below 0.6
    assert best_match(planted[hp(1)], 40, planted[hp(0)])[1] < 0.6 and graph.nodes[0].hook_point == hp(1)
    assert [n.hook_point for n in flow_graph(planted, hp(2), 5, threshold=0.6, forward=False).nodes] == [
        hp(1), hp(2, "mlp_out"), hp(2)]
    assert len(flow_graph(planted, hp(2), 5, threshold=0.999).nodes) == 1  # thresholds cut the links


def test_encoder_matching_links_through_the_target_encoder(planted):
    with torch.no_grad():  # the start feature's decoder row no longer resembles anything; its encoder column does
        planted[hp(2)].W_dec[5] = torch.randn(D)
    assert len(flow_graph(planted, hp(2), 5, threshold=0.6, forward=False).nodes) == 1
    nodes = flow_graph(planted, hp(2), 5, threshold=0.6, match="encoder", forward=False).nodes
    assert {(n.hook_point, n.feature) for n in nodes} == {(hp(1), 40), (hp(2), 5), (hp(2, "mlp_out"), 7)}


def test_per_layer_coefficients_reach_the_plan_and_the_file(planted, tmp_path):
    graph = flow_graph(planted, hp(2), 5, threshold=0.6)
    weights = graph.weights(normalize=False)
    assert weights[hp(2)] == 1.0 and len(set(weights.values())) == len(weights)  # one coefficient per layer
    by_node = {n.hook_point: n for n in graph.nodes}
    assert weights[hp(1)] == pytest.approx(by_node[hp(1)].similarity)
    plan = graph.plan(planted, 3.0, normalize=True)
    normalized = graph.weights(normalize=True)
    assert sum(normalized.values()) == pytest.approx(1.0)
    for iv in plan.interventions:
        assert iv.coefficient == pytest.approx(3.0 * normalized[iv.hook_point])
    graph.direction(planted, {"name": "tiny"}, normalize=True).save(tmp_path / "flow.safetensors")
    loaded = Direction.load(tmp_path / "flow.safetensors")
    for iv in loaded.to_plan(3.0).interventions:  # coefficient * ||W_dec row|| * weight along the unit row
        row = planted[iv.hook_point].W_dec[by_node[iv.hook_point].feature].detach()
        assert torch.allclose(iv.coefficient * iv.direction, 3.0 * normalized[iv.hook_point] * row, atol=1e-5)
    assert loaded.provenance["flow_graph"]["start"]["feature"] == 5


def test_bad_graph_input_is_refused(planted):
    with pytest.raises(PolysteerError, match="out of range"):
        flow_graph(planted, hp(2), N)
    with pytest.raises(PolysteerError, match="resid_post"):
        flow_graph(planted, hp(2, "mlp_out"), 0)
    with pytest.raises(PolysteerError, match="no SAE"):
        flow_graph(planted, hp(5), 0)


def test_flow_finder_picks_the_start_feature_and_builds_its_graph(planted):
    start = planted[hp(2)]
    row = start.W_dec[5].detach()
    X_neg = torch.randn(300, D)
    X_pos = torch.randn(300, D) + 4 * row
    finder = make_finder("flow", sae=start, saes=[planted[hp(1)], planted[hp(2, "mlp_out")]], threshold=0.6)
    finder.fit(X_pos, X_neg)
    assert finder.feature_ == 5 and torch.allclose(finder.direction_, row / row.norm(), atol=1e-6)
    assert {n.hook_point for n in finder.graph_.nodes} == {hp(1), hp(2), hp(2, "mlp_out")}
    direction = finder.to_direction({"name": "tiny"})
    assert direction.hook_points == [hp(1), hp(2, "mlp_out"), hp(2)] and len(set(direction.weights.values())) == 3


def test_corrsteer_finder_variants(planted):
    sae = planted[hp(2)]
    g = torch.Generator().manual_seed(0)
    X_neg = torch.randn(400, D, generator=g)
    X_pos = torch.randn(400, D, generator=g) + 3 * sae.W_dec[5].detach()
    r, positive_mean = label_correlation(sae, X_pos, X_neg)
    z = torch.cat([sae.encode(X_pos), sae.encode(X_neg)])
    y = torch.cat([torch.ones(400), torch.zeros(400)])
    assert torch.allclose(r[5], torch.corrcoef(torch.stack([z[:, 5], y]))[0, 1], atol=1e-4)
    single = make_finder("corrsteer", sae=sae).fit(X_pos, X_neg)
    assert single.features_.tolist() == [5] and single.coefficients_[0] == pytest.approx(float(positive_mean[5]))
    every = make_finder("corrsteer", sae=sae, variant="A", n_features=4).fit(X_pos, X_neg)
    pruned = make_finder("corrsteer", sae=sae, variant="P", n_features=4, min_correlation=0.3).fit(X_pos, X_neg)
    assert len(every.features_) == 4 and 5 in pruned.features_.tolist()
    assert set(pruned.features_.tolist()) < set(every.features_.tolist())  # weakly correlated ones fail held out
    with pytest.raises(PolysteerError, match="variant"):
        make_finder("corrsteer", sae=sae, variant="Q").fit(X_pos, X_neg)


@pytest.fixture
def tiny_saes(tmp_path):
    """A start SAE at block 1 of the tiny Llama (d_model 32) and a block-0 SAE sharing one of its features."""
    saes = {hp(i): sae_at(hp(i), seed=i, d_in=32, d_sae=48) for i in (0, 1)}
    copy_rows(saes[hp(0)], saes[hp(1)], {3: 20})
    paths = {}
    for point, sae in saes.items():
        paths[point] = tmp_path / point.replace(".", "_")
        sae.save(paths[point])
    return paths


def data_file(tmp_path):
    data = tmp_path / "pairs.jsonl"
    data.write_text("\n".join(json.dumps({"positive": f"the ocean and the sea {w}", "negative": f"the city {w}"})
                              for w in ("today", "is big", "was old", "at night")))
    return data


@pytest.mark.parametrize("finder", ["flow", "corrsteer"])
def test_find_runs_the_sae_finders(invoke, model_dir, tmp_path, tiny_saes, finder):
    out = tmp_path / f"{finder}.safetensors"
    result = invoke("find", "--model", model_dir, "--data", data_file(tmp_path), "--layers", 1, "--finder", finder,
                    "--finder-param", f"sae={tiny_saes[hp(1)]}", "-o", out)
    assert result.exit_code == 0, result.output
    direction = Direction.load(out)
    assert direction.finder["name"] == finder and direction.hook_points == [hp(1)]


def test_find_with_the_flow_finder_writes_the_whole_graph(invoke, model_dir, tmp_path, tiny_saes):
    out = tmp_path / "flow.safetensors"
    result = invoke("find", "--model", model_dir, "--data", data_file(tmp_path), "--layers", 1, "--finder", "flow",
                    "--finder-param", f"sae={tiny_saes[hp(1)]}", "--finder-param", "feature=3",
                    "--finder-param", f'saes=["{tiny_saes[hp(0)]}"]', "--finder-param", "threshold=0.6", "-o", out)
    assert result.exit_code == 0, result.output
    direction = Direction.load(out)
    assert direction.hook_points == [hp(0), hp(1)] and direction.finder["name"] == "flow"
    assert 0 < direction.weights[hp(0)] < direction.weights[hp(1)]


def test_sae_flow_command_writes_graph_and_multi_layer_direction(invoke, tmp_path, tiny_saes):
    out, graph = tmp_path / "flow.safetensors", tmp_path / "graph.json"
    result = invoke("sae", "flow", "--sae", tiny_saes[hp(1)], "--with", tiny_saes[hp(0)], "--feature", 3,
                    "--threshold", 0.6, "--no-normalize", "--graph", graph, "-o", out)
    assert result.exit_code == 0, result.output
    direction = Direction.load(out)
    assert direction.hook_points == [hp(0), hp(1)] and direction.weights[hp(1)] == 1.0
    assert 0.9 < direction.weights[hp(0)] < 1.0
    nodes = json.loads(graph.read_text())["nodes"]
    assert {(n["hook_point"], n["feature"]) for n in nodes} == {(hp(0), 20), (hp(1), 3)}


def test_sae_flow_checks_input_before_loading_a_model(invoke, tmp_path, tiny_saes):
    args = ["sae", "flow", "--model", tmp_path / "missing-model", "--sae", tiny_saes[hp(1)], "-o", tmp_path / "o"]
    with pytest.raises(PolysteerError, match="exactly one of --feature"):
        invoke(*args)
    with pytest.raises(PolysteerError, match="out of range"):
        invoke(*args, "--feature", 999)
    bad = tmp_path / "bad.jsonl"
    bad.write_text("not json\n")
    with pytest.raises(PolysteerError, match="bad.jsonl"):
        invoke(*args, "--data", bad)
