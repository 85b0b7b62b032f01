"""VTI: the rank-1 PCA formula, visual directions against a direct reimplementation, files and plans."""

from contextlib import nullcontext

import numpy as np
import pytest
import torch
from sklearn.decomposition import PCA

from polysteer import Direction, PolysteerError, steer
from polysteer.manager import registry
from polysteer.modalities.vision_language.dataset import Sample, scene_samples
from polysteer.modalities.vision_language.generation import encode, format_prompt
from polysteer.modalities.vision_language.tiny import tiny_vlm
from polysteer.modalities.vision_language.vti import (
    VTI,
    TokenRotate,
    joint_rank1,
    mask_patches,
    rank1_direction,
    visual_directions,
    visual_shifts,
    vti_plan,
)
from polysteer.modalities.vision_language.workflow import caption_direction, direction_plan, find_vti


@pytest.fixture(scope="module")
def llava():
    return tiny_vlm("llava")


@pytest.fixture(scope="module")
def demos():
    return scene_samples(4, seed=2)


def sklearn_rank1(diffs: np.ndarray) -> np.ndarray:
    """PC1 (signed to agree with the mean) + mean of the rows, with scikit-learn's PCA."""
    pca = PCA(n_components=1).fit(diffs)
    pc1, mean = pca.components_[0], pca.mean_
    return (pc1 if pc1 @ mean >= 0 else -pc1) + mean


def reference_rank1(rows: np.ndarray) -> np.ndarray:
    """The VTI reference recipe by hand: PCA by SVD of the centred rows, ``svd_flip`` on U, then PC1 + mean."""
    mean = rows.mean(0)
    u, _, vt = np.linalg.svd(rows - mean, full_matrices=False)
    sign = np.sign(u[np.argmax(np.abs(u[:, 0])), 0])
    return sign * vt[0] + mean


def cosine(a, b) -> float:
    a, b = np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64)
    return float(a @ b / np.linalg.norm(a) / np.linalg.norm(b))


def layered_pairs(layers=3, n=6, d=8, seed=5):
    """Paired states per layer whose shifts vary strongly (so PC1 matters next to the mean) and differ by layer."""
    g = torch.Generator().manual_seed(seed)
    X_neg = {f"text.blocks.{i}.resid_post": torch.randn(n, d, generator=g) for i in range(layers)}
    X_pos = {hp: x + 0.6 + (i + 1) * torch.randn(n, 1, generator=g) * torch.randn(d, generator=g)
             for i, (hp, x) in enumerate(X_neg.items())}
    return X_pos, X_neg


def test_joint_pca_is_the_reference_recipe_across_layers_and_differs_from_per_token():
    X_pos, X_neg = layered_pairs()
    points = list(X_pos)
    joint = VTI().fit_layers(X_pos, X_neg)
    per_token = VTI(pca="per-token").fit_layers(X_pos, X_neg)
    stacked = np.concatenate([(X_pos[hp] - X_neg[hp]).double().numpy() for hp in points], axis=1)  # [demos, L*d]
    want = reference_rank1(stacked).reshape(len(points), -1)  # one PCA, one direction per layer
    cosines = []
    for i, hp in enumerate(points):
        oriented = want[i] if want[i] @ (X_pos[hp] - X_neg[hp]).mean(0).double().numpy() > 0 else -want[i]
        np.testing.assert_allclose(joint[hp].direction_.numpy(), oriented / np.linalg.norm(oriented), atol=1e-5)
        cosines.append(cosine(joint[hp].direction_, per_token[hp].direction_))
    assert min(cosines) < 0.99  # the joint PC1 is unit across layers, so each layer mixes it with its mean differently
    torch.testing.assert_close(joint_rank1(torch.as_tensor(stacked)), torch.as_tensor(want.reshape(-1)).float())
    single = VTI().fit(X_pos[points[0]], X_neg[points[0]])  # one layer alone: its own joint PCA
    alone = VTI().fit_layers({points[0]: X_pos[points[0]]}, {points[0]: X_neg[points[0]]})[points[0]]
    torch.testing.assert_close(single.direction_, alone.direction_)
    with pytest.raises(PolysteerError, match="pca"):
        VTI(pca="global").fit(X_pos[points[0]], X_neg[points[0]])


def test_rank1_direction_is_pc1_plus_mean():
    torch.manual_seed(0)
    diffs = torch.randn(3, 7, 5, 12)  # [layers, tokens, demos, d]
    got = rank1_direction(diffs)
    assert got.shape == (3, 7, 12)
    for layer in range(3):
        for token in range(7):
            want = sklearn_rank1(diffs[layer, token].double().numpy())
            np.testing.assert_allclose(got[layer, token].numpy(), want, rtol=1e-5, atol=1e-5)
    single = torch.randn(1, 12)
    torch.testing.assert_close(rank1_direction(single), single[0])  # one demo: just its difference


def test_mask_patches_replaces_the_chosen_patches_by_the_channel_mean():
    torch.manual_seed(1)
    pixels = torch.randn(4, 3, 32, 32)
    masked = mask_patches(pixels, 8, 0.75, torch.Generator().manual_seed(0))
    mean = pixels.mean(dim=(-2, -1), keepdim=True)
    patches = (masked == mean).all(1).unfold(1, 8, 8).unfold(2, 8, 8).all(-1).all(-1)  # [4, 4, 4] masked?
    assert (patches.flatten(1).sum(1) == int(0.75 * 16)).all()
    untouched = ~patches.repeat_interleave(8, 1).repeat_interleave(8, 2)
    assert torch.equal(masked.permute(0, 2, 3, 1)[untouched], pixels.permute(0, 2, 3, 1)[untouched])
    again = mask_patches(pixels, 8, 0.75, torch.Generator().manual_seed(0))
    assert torch.equal(masked, again)


def test_visual_directions_equal_a_direct_pca_on_the_same_tensors(llava, demos):
    model, processor = llava
    images = [d.load_image() for d in demos]
    trials, ratio, seed = 6, 0.75, 3
    got = visual_directions(model, processor, images, trials=trials, ratio=ratio, batch_size=4, seed=seed,
                            pca="per-token")
    joint = visual_directions(model, processor, images, trials=trials, ratio=ratio, batch_size=4, seed=seed)
    assert sorted(got) == sorted(joint) == [f"vision.blocks.{i}.resid_post" for i in range(3)]
    tower = model.model.vision_tower
    diffs = []
    with torch.no_grad():
        for k, image in enumerate(images):
            pixels = processor.image_processor(images=[image], return_tensors="pt")["pixel_values"]
            copies = mask_patches(pixels.expand(trials, -1, -1, -1), 8, ratio, torch.Generator().manual_seed(seed + k))
            clean = tower(pixels, output_hidden_states=True).hidden_states[1:]  # skip the embeddings
            masked = tower(copies, output_hidden_states=True).hidden_states[1:]
            diffs.append([(m.mean(0) - c[0]).numpy() for m, c in zip(masked, clean)])
    for layer in range(3):
        for token in range(17):
            stack = np.stack([diffs[k][layer][token] for k in range(len(images))]).astype(np.float64)
            np.testing.assert_allclose(got[f"vision.blocks.{layer}.resid_post"][token].numpy(),
                                       sklearn_rank1(stack), rtol=1e-4, atol=1e-5)
    for token in range(17):  # joint: per token, one PCA over all layers' shifts concatenated
        rows = np.stack([np.concatenate([diffs[k][layer][token] for layer in range(3)]) for k in range(len(images))])
        want = reference_rank1(rows.astype(np.float64)).reshape(3, -1)
        for layer in range(3):
            np.testing.assert_allclose(joint[f"vision.blocks.{layer}.resid_post"][token].numpy(), want[layer],
                                       rtol=1e-4, atol=1e-5)


def test_vti_finder_is_the_normalised_rank1_direction():
    torch.manual_seed(2)
    X_neg = torch.randn(6, 10)
    X_pos = X_neg + torch.tensor([2.0] + [0.0] * 9) + 0.3 * torch.randn(6, 10)
    fitted = VTI(pca="per-token").fit(X_pos, X_neg)
    want = torch.as_tensor(sklearn_rank1((X_pos - X_neg).double().numpy()), dtype=torch.float32)
    torch.testing.assert_close(fitted.direction_, want / want.norm(), rtol=1e-5, atol=1e-5)
    assert fitted.scale_ > 0 and fitted.direction_[0] > 0.8  # mean shift (norm 2) plus unit PC1
    with pytest.raises(PolysteerError, match="paired"):
        VTI().fit(X_pos, X_neg[:3])
    assert registry("direction_finders")["vti"] is VTI


@pytest.fixture(scope="module")
def vti_file(llava, demos, tmp_path_factory):
    model, processor = llava
    direction = find_vti(model, processor, demos, trials=4, mask_ratio=0.9, alpha_vision=0.7, alpha_text=0.8)
    return direction.save(tmp_path_factory.mktemp("vti") / "vti.safetensors")


def logits(model, processor, images, plan=None):
    batch = encode(processor, images, [format_prompt(processor, "Describe the image.")] * len(images))
    with torch.no_grad(), steer(model, plan) if plan is not None else nullcontext():
        return model(**batch).logits


def test_vti_file_round_trips_into_a_rotate_plan(llava, demos, vti_file):
    model, processor = llava
    direction = Direction.load(vti_file)
    assert direction.finder["name"] == "vti" and direction.operator == "rotate"
    assert direction.hook_points == [f"text.blocks.{i}.mlp_out" for i in range(3)]
    assert sorted(direction.extras) == [f"vision.blocks.{i}.mlp_out" for i in range(3)]
    assert direction.extras["vision.blocks.0.mlp_out"].shape == (17, 32)
    plan = direction_plan(model, vti_file)
    text = [iv for iv in plan if iv.hook_point.startswith("text.")]
    vision = [iv for iv in plan if iv.hook_point.startswith("vision.")]
    assert [iv.operator for iv in text] == ["rotate"] * 3 and {iv.coefficient for iv in text} == {0.8}
    assert all(isinstance(iv.operator, TokenRotate) for iv in vision) and {iv.coefficient for iv in vision} == {0.7}
    assert len(vti_plan(direction, alpha_vision=0.0)) == 3 and len(vti_plan(direction, 1.0, 0.0)) == 3
    images = [d.load_image() for d in demos[:2]]
    base = logits(model, processor, images)
    assert not torch.allclose(base, logits(model, processor, images, plan))
    assert torch.equal(base, logits(model, processor, images, vti_plan(direction, 0.0, 0.0)))


def test_inspect_shows_the_vision_tower_tensors_too(vti_file, invoke):
    out = invoke("inspect", vti_file).output
    assert "6 tensors:" in out
    assert "vector text.blocks.0.mlp_out: shape (48,) float32 norm 1.0000" in out
    assert "extra vision.blocks.2.mlp_out: shape (17, 32)" in out


def test_direction_for_another_model_is_refused(vti_file):
    other, _ = tiny_vlm("idefics3")
    with pytest.raises(PolysteerError, match="made for"):
        direction_plan(other, vti_file)


@pytest.mark.parametrize("finder", ["diffmean", "rfm"])
def test_other_finders_steer_through_the_same_plan(llava, demos, finder):
    model, processor = llava
    params = {"iters": 2, "val_fraction": 0.0} if finder == "rfm" else {}
    direction = caption_direction(model, processor, demos, finder, layers=[1], **params)
    assert direction.hook_points == ["text.blocks.1.resid_post"] and direction.finder["name"] == finder
    images = [d.load_image() for d in demos[:2]]
    steered = logits(model, processor, images, direction.to_plan(4.0))
    assert not torch.allclose(logits(model, processor, images), steered)


def test_demos_need_both_captions(llava):
    model, processor = llava
    with pytest.raises(PolysteerError, match="hallucinated_caption"):
        caption_direction(model, processor, [Sample(scene_samples(1)[0].image, ["sun"], "a sun")])


def test_vti_on_the_idefics3_layout(demos):
    model, processor = tiny_vlm("idefics3")
    direction = find_vti(model, processor, demos[:2], text_layers=[0, 2], vision_layers=[1], trials=3)
    assert direction.hook_points == ["text.blocks.0.mlp_out", "text.blocks.2.mlp_out"]
    assert direction.extras["vision.blocks.1.mlp_out"].shape == (16, 32)  # no CLS token in this tower
    images = [d.load_image() for d in demos[:2]]
    assert not torch.allclose(logits(model, processor, images), logits(model, processor, images, vti_plan(direction)))


def test_idefics3_crops_are_separate_pca_samples(demos):
    model, processor = tiny_vlm("idefics3")
    images = processor.image_processor
    images.do_image_splitting, images.size = True, {"longest_edge": 2 * images.max_image_size["longest_edge"]}
    crops = images(images=[[demos[0].load_image()]], return_tensors="pt")["pixel_values"].shape[1]
    point = "vision.blocks.1.resid_post"
    shifts = visual_shifts(model, processor, [d.load_image() for d in demos[:2]], [point], 2, 0.9, 4, 0)[point]
    assert crops == 5 and shifts.shape == (2 * crops, 16, 32)  # 4 tiles + the global view, each a sample
    assert not torch.allclose(shifts[0], shifts[1])  # not one averaged row repeated
    table = visual_directions(model, processor, [d.load_image() for d in demos[:2]], [1], 2, 0.9, 4, 0)[point]
    torch.testing.assert_close(table, joint_rank1(shifts.transpose(0, 1)))
