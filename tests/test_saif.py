"""SAIF: consistent-latent selection, the steering vector, instruction checks, the data file and the workflow."""

from pathlib import Path

import pytest
import torch
from click.testing import CliRunner
from tiny import random_sae

from polysteer import Direction, PolysteerError, make_finder, registry
from polysteer.modalities.text.cli.sae_guided import saif
from polysteer.modalities.text.evaluators.instructions import (
    InstructionFollowing,
    ends_with_question,
    is_all_capitals,
    is_french,
    is_short,
    read_instructions,
)
from polysteer.modalities.text.sae.guided import fit_saif, saif_prompts
from polysteer.plugins.sae.saif import SAIF

HP = "text.blocks.1.resid_post"
D = 32
DATA_FILE = Path(__file__).parent.parent / "benchmarks" / "data" / "saif_instructions.json"


def planted_pairs(sae, latent=17, n=60, seed=1):
    """[content] rows and the same rows with a consistent push along one latent's decoder row."""
    g = torch.Generator().manual_seed(seed)
    X_neg = torch.randn(n, D, generator=g)
    X_pos = X_neg + 4.0 * sae.W_dec[latent].detach() + 0.05 * torch.randn(n, D, generator=g)
    return X_pos, X_neg


def test_saif_selects_the_planted_consistent_latent():
    sae = random_sae(D, 64, "standard")
    X_pos, X_neg = planted_pairs(sae)
    finder = make_finder("saif", sae=sae, top_k=3).fit(X_pos, X_neg)
    assert int(finder.latents_[0]) == 17 and finder.fractions_[17] >= 0.9
    assert (finder.fractions_[finder.latents_] >= 0.9).all() and (finder.differences_[finder.latents_] > 0).all()
    assert finder.score(X_pos).mean() > finder.score(X_neg).mean()


def test_saif_vector_is_the_sum_of_mean_activation_times_decoder_row():
    sae = random_sae(D, 64, "standard")
    X_pos, X_neg = planted_pairs(sae)
    finder = SAIF(sae, top_k=4, min_fraction=0.8).fit(X_pos, X_neg)
    z = sae.encode(X_pos)
    expected = sum(z[:, j].mean() * sae.W_dec[j] for j in finder.latents_.tolist())
    assert torch.allclose(finder.vector_, expected.detach(), atol=1e-5)
    assert torch.allclose(finder.direction_ * finder.scale_, expected.detach(), atol=1e-5)
    assert torch.allclose(finder.activations_, z[:, finder.latents_].mean(0).detach())


def test_saif_refuses_unpaired_or_uninformative_data():
    sae = random_sae(D, 64, "standard")
    X_pos, X_neg = planted_pairs(sae)
    with pytest.raises(PolysteerError, match="paired"):
        SAIF(sae).fit(X_pos, X_neg[:-1])
    with pytest.raises(PolysteerError, match="no SAE latent rises"):
        SAIF(sae).fit(X_neg, X_neg)
    with pytest.raises(PolysteerError, match="polysteer sae saif"):
        SAIF().fit(X_pos, X_neg)
    assert registry("direction_finders")["saif"] is SAIF


@pytest.mark.parametrize("text, expected", [
    ("Le chat est sur la table et il dort.", True),
    ("Je pense que c'est une bonne idée pour les enfants.", True),
    ("The cat is on the table and it sleeps.", False),
    ("Paris", False),
    ("Bonjour! The weather is nice and the sun is out today.", False),
])
def test_french_check(text, expected):
    assert is_french(text) is expected


def test_capitals_short_and_question_checks():
    assert is_all_capitals("THE OCEAN IS VERY BIG, AND 42 FISH LIVE THERE.")
    assert not is_all_capitals("The ocean is very big.") and not is_all_capitals("OK") and not is_all_capitals("123")
    assert is_short("A short answer of six words.") and not is_short("") and not is_short("word " * 20)
    assert is_short("word " * 19)
    # degenerate run-together output is not a short answer; acronyms and contractions stay one word
    assert not is_short("YouYouMakeA" * 10) and is_short("NASA sent 3 rockets. I'm sure of it.")
    assert ends_with_question("Do you like the sea?") and ends_with_question('He asked: "why?" ')
    assert ends_with_question("What about you?**\n") and not ends_with_question("Is it? No, it is not.")


def test_instruction_evaluator():
    judge = registry("evaluators")["instruction-following"]("capitals")
    assert isinstance(judge, InstructionFollowing)
    assert judge.evaluate(["HELLO THERE", "Hello there"]) == [1.0, 0.0]
    with pytest.raises(PolysteerError, match="french, capitals, short, question"):
        InstructionFollowing("rhyme")


def test_the_instruction_file_is_valid_and_bad_files_are_refused(tmp_path):
    data = read_instructions(DATA_FILE)
    assert len(data.contents) >= 24 and set(data.instructions) == {"french", "capitals", "short", "question"}
    assert all(len(i.wordings) >= 8 for i in data.instructions.values())
    bad = tmp_path / "bad.json"
    for text, match in (("[", "not valid JSON"), ('{"contents": []}', "contents"),
                        ('{"contents": ["a"], "instructions": {"x": {"wordings": ["w"]}}}', "check 'x'"),
                        ('{"contents": ["a"], "instructions": {"short": {"wordings": []}}}', "wordings")):
        bad.write_text(text)
        with pytest.raises(PolysteerError, match=match):
            read_instructions(bad)


def test_saif_prompts_are_paired_by_index():
    pos, neg = saif_prompts(["tell me about the ocean", "describe a park"], ["Answer in French.", "Use French."])
    assert pos == ["tell me about the ocean Answer in French.", "tell me about the ocean Use French.",
                   "describe a park Answer in French.", "describe a park Use French."]
    assert neg == ["tell me about the ocean"] * 2 + ["describe a park"] * 2


def test_workflow_direction_adds_the_saif_vector(llama, tokenizer, tmp_path):
    random_sae(D, 64, "standard").save(tmp_path / "sae")
    contents = ["tell me about the ocean", "describe a good day", "what is your favorite food", "write a short note"]
    direction, finder = fit_saif(llama, tokenizer, contents, ["le la les", "une des pour", "je vous est"],
                                 tmp_path / "sae", top_k=5, min_fraction=0.75)
    direction.save(tmp_path / "saif.safetensors")
    iv = Direction.load(tmp_path / "saif.safetensors").to_plan(1.0).interventions[0]
    assert iv.hook_point == HP and iv.operator == "add"
    assert torch.allclose(iv.direction * iv.coefficient, finder.vector_, atol=1e-4)


def test_cli_writes_a_saif_direction(llama, tokenizer, tmp_path):
    llama.save_pretrained(tmp_path / "model")
    tokenizer.save_pretrained(tmp_path / "model")
    random_sae(D, 64, "standard").save(tmp_path / "sae")
    (tmp_path / "data.json").write_text('{"contents": ["tell me about the ocean", "describe a good day", "the city"], '
                                        '"instructions": {"french": {"check": "french", "wordings": '
                                        '["le la les", "une des pour", "je vous est"]}}}')
    base = ["--model", str(tmp_path / "model"), "--sae", str(tmp_path / "sae"), "--data", str(tmp_path / "data.json")]
    result = CliRunner().invoke(saif, [*base, "--instruction", "french", "--min-fraction", "0.6",
                                       "-o", str(tmp_path / "s.safetensors")], catch_exceptions=False)
    assert "wrote" in result.output and Direction.load(tmp_path / "s.safetensors").finder["name"] == "saif"
    result = CliRunner().invoke(saif, [*base, "--instruction", "rhyme", "-o", str(tmp_path / "r.safetensors")])
    assert result.exit_code != 0 and "no instruction 'rhyme'" in str(result.exception)
