"""``sweep.md`` and ``sweep.png`` read without the code: column definitions, sample texts, plain tick labels."""

from polysteer.modalities.text.sweep import COLUMNS, _plain_numbers, plot, summarize, sweep_markdown

ROWS = [
    {"hook_point": "text.blocks.1.resid_post", "coef": coef, "prompt": prompt, "text": f"{prompt} | coef {coef} *",
     "perplexity": ppl, "distinct": 1.0, "keyword": float(coef > 0)}
    for coef, ppls in ((0.0, (3.5, 4.0, 90.0)), (4.0, (5.5, 6.0, 7.0)))
    for prompt, ppl in zip(("first prompt", "second prompt", "third prompt"), ppls)
]


def test_sweep_markdown_defines_every_column_and_shows_samples():
    table = summarize([dict(r) for r in ROWS])
    assert table[0]["perplexity"] == 4.0  # the median, not the mean of 3.5, 4 and 90
    text = sweep_markdown(table, ROWS, {"direction": "`w.safetensors`"}, samples=2)
    assert text.startswith("# Steering sweep\n") and "- direction: `w.safetensors`" in text
    assert "| text.blocks.1.resid_post | 4.000 | 3 | 6.000 | 1.000 | 1.000 |" in text
    for key in table[0]:
        assert f"- `{key}`: {COLUMNS[key]}" in text
    assert "**median**" in COLUMNS["perplexity"] and "3-grams" in COLUMNS["distinct"]
    samples = text.split("## Sample texts")[1]
    for coef in ("0", "4"):
        cell = samples.split(f"### text.blocks.1.resid_post, coef {coef}\n")[1].split("###")[0]
        assert f"- *first prompt* -> first prompt \\| coef {float(coef)} \\*" in cell
        assert "second prompt" in cell and "third prompt" not in cell
    assert "## Sample texts" not in sweep_markdown(table, ROWS, {}, samples=0)


def test_log_axis_ticks_are_plain_numbers():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots()
    ax.plot([3.5, 7.0], [0, 1])
    ax.set_xscale("log")
    _plain_numbers(ax)
    fig.canvas.draw()
    labels = [t.get_text() for t in ax.get_xticklabels(minor=True) + ax.get_xticklabels() if t.get_text()]
    plt.close(fig)
    assert {"4", "5", "6"} <= set(labels) and not any("times" in label or "^" in label for label in labels)


def test_plot_writes_a_png(tmp_path):
    plot(summarize([dict(r) for r in ROWS]), tmp_path / "sweep.png", "keyword")
    assert (tmp_path / "sweep.png").read_bytes()[:4] == b"\x89PNG"
