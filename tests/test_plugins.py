"""The plugin system: registration, restriction, broken and duplicate plugins, the `plugins` command."""

import inspect
import re
from pathlib import Path

import pytest
import torch
from click.testing import CliRunner

from polysteer import DirectionFinder, PolysteerError, hookimpl, hookspecs, make_finder, manager, registry
from polysteer.cli import add_plugin_commands, get_cli

ROOT = Path(__file__).parent.parent


class Negated(DirectionFinder):
    name = "negated-diffmean"

    def fit(self, X_pos, X_neg):
        self.direction_ = (X_neg.mean(0) - X_pos.mean(0)) / (X_neg.mean(0) - X_pos.mean(0)).norm()
        self.scale_ = 1.0
        return self


class FinderPlugin:
    __name__ = "finder-plugin"

    @staticmethod
    @hookimpl
    def register_direction_finders(register):
        register(Negated)


def test_register_and_unregister_a_finder_plugin():
    manager.pm.register(FinderPlugin, name="finder-plugin")
    try:
        reg = registry("direction_finders")
        assert reg["negated-diffmean"] is Negated
        assert reg.owners["negated-diffmean"] == "finder-plugin"
        X_pos, X_neg = torch.ones(4, 3), torch.zeros(4, 3)
        assert make_finder("negated-diffmean").fit(X_pos, X_neg).direction_.sum() < 0
    finally:
        manager.pm.unregister(name="finder-plugin")
    assert "negated-diffmean" not in registry("direction_finders")


def test_a_bare_function_registers_under_the_name_given_and_never_silently(monkeypatch):
    monkeypatch.setattr(manager, "broken_plugins", {})

    def mean_gap(X_pos, X_neg):
        return X_pos.mean(0) - X_neg.mean(0)

    class Named:
        @staticmethod
        @hookimpl
        def register_direction_finders(register):
            register(mean_gap, name="mean-gap")

    class Unnamed:
        @staticmethod
        @hookimpl
        def register_direction_finders(register):
            register(mean_gap)

    manager.pm.register(Named, name="named-plugin")
    manager.pm.register(Unnamed, name="unnamed-plugin")
    try:
        reg = registry("direction_finders")
        assert reg["mean-gap"] is mean_gap and "mean_gap" not in reg
        finder = make_finder("mean-gap").fit(torch.ones(3, 2), torch.zeros(3, 2))
        assert finder.name == "mean-gap" and finder.direction_.tolist() == pytest.approx([2 ** -0.5] * 2)
        assert "register(mean_gap, name='...')" in manager.broken_plugins["unnamed-plugin"]
        with pytest.raises(PolysteerError, match="'mean-gap' has no parameter 'trim'; it takes none"):
            make_finder("mean-gap", trim=0.1)
    finally:
        manager.pm.unregister(name="named-plugin")
        manager.pm.unregister(name="unnamed-plugin")


def test_an_unknown_finder_parameter_names_the_accepted_ones():
    with pytest.raises(PolysteerError, match="'probe' has no parameter 'rank'; its parameters: C, max_iter, standard"):
        make_finder("probe", rank=2)


def test_a_duplicate_name_is_skipped_and_reported_naming_both_plugins(monkeypatch):
    monkeypatch.setattr(manager, "broken_plugins", {})

    class Imposter:
        name = "add"

    class Dup:
        @staticmethod
        @hookimpl
        def register_operators(register):
            register(Imposter)

    manager.pm.register(Dup, name="dup-plugin")
    try:
        reg = registry("operators")
        assert reg["add"] is not Imposter and reg.owners["add"] == "polysteer.plugins.operators"
        assert re.search(r"'add'.*polysteer\.plugins\.operators.*dup-plugin", manager.broken_plugins["dup-plugin"])
        output = CliRunner().invoke(get_cli(), ["plugins"]).output
        assert "dup-plugin\n  problem: duplicate operator name 'add'" in output
    finally:
        manager.pm.unregister(name="dup-plugin")


def test_a_failing_hook_is_reported_with_the_plugin_name(monkeypatch):
    monkeypatch.setattr(manager, "broken_plugins", {})

    class Failing:
        @staticmethod
        @hookimpl
        def register_schedules(register):
            raise PolysteerError("needs a config file")

    class Exiting:
        @staticmethod
        @hookimpl
        def register_schedules(register):
            raise SystemExit(3)

    manager.pm.register(Failing, name="failing-plugin")
    manager.pm.register(Exiting, name="exiting-plugin")
    try:
        assert "constant" in registry("schedules")  # the built-ins still register
        assert "PolysteerError: needs a config file" in manager.broken_plugins["failing-plugin"]
        assert "SystemExit: 3" in manager.broken_plugins["exiting-plugin"]
    finally:
        manager.pm.unregister(name="failing-plugin")
        manager.pm.unregister(name="exiting-plugin")


def test_a_plugin_exiting_at_import_is_reported_not_fatal(monkeypatch):
    monkeypatch.setattr(manager, "broken_plugins", {})

    def exit_on_import():
        raise SystemExit("bye")

    manager._register_module("exiting-example", exit_on_import)
    assert manager.broken_plugins["exiting-example"] == "SystemExit: bye"


def test_broken_plugin_is_reported_not_fatal(monkeypatch):
    monkeypatch.setattr(manager, "broken_plugins", {})

    def explode():
        raise ImportError("missing dependency xyz")

    manager._register_module("broken-example", explode)
    assert "missing dependency xyz" in manager.broken_plugins["broken-example"]
    result = CliRunner().invoke(get_cli(), ["plugins"])
    assert result.exit_code == 0
    assert "broken-example  [failed to load] ImportError: missing dependency xyz" in result.output


def test_plugins_command_lists_what_each_plugin_registered():
    output = CliRunner().invoke(get_cli(), ["plugins"]).output
    assert "polysteer.plugins.finders" in output
    assert re.search(r"direction_finders: .*diffmean", output)
    assert re.search(r"modalities: text", output)


def test_unknown_plugin_kind():
    with pytest.raises(PolysteerError, match="unknown plugin kind"):
        registry("widgets")


class EveryKind:
    """One small thing of every kind, registered the way third parties do."""

    @staticmethod
    @hookimpl
    def register_schedules(register):
        from polysteer.plugins.schedules.builtin import Constant

        register(type("Half", (Constant,), {"name": "half", "__call__": lambda self, *a: 0.5}))

    @staticmethod
    @hookimpl
    def register_evaluators(register):
        from polysteer import Evaluator

        def evaluate(self, outs, **context):
            return [len(o) for o in outs]

        register(type("Length", (Evaluator,), {"name": "length", "evaluate": evaluate}))

    @staticmethod
    @hookimpl
    def register_modalities(register):
        from polysteer.modalities.text.modality import TextModality

        register(type("OtherText", (TextModality,), {"name": "other-text", "priority": -1}))

    @staticmethod
    @hookimpl
    def register_commands(cli):
        import click

        cli.add_command(click.Command("hello-plugin", callback=lambda: click.echo("hello from a plugin")))


def test_every_kind_can_be_registered_by_a_plugin():
    import click

    from polysteer import parse_schedule

    manager.pm.register(EveryKind, name="every-kind")
    try:
        assert parse_schedule("half")(3, 0, 0, 1) == 0.5
        assert registry("evaluators")["length"]().evaluate(["abc"]) == [3]
        assert registry("modalities").owners["other-text"] == "every-kind"
        group = click.Group()
        add_plugin_commands(group)
        assert CliRunner().invoke(group, ["hello-plugin"]).output == "hello from a plugin\n"
    finally:
        manager.pm.unregister(name="every-kind")
    assert "half" not in registry("schedules")


HOOKS = [name for name, _ in inspect.getmembers(hookspecs, inspect.isfunction) if name.startswith("register_")]


@pytest.mark.parametrize("hook", HOOKS)
def test_every_hook_is_tested_and_documented(hook):
    """Meta-test (as datasette does): each hookspec is implemented by a test plugin and documented."""
    tests = "".join(p.read_text() for p in (ROOT / "tests").glob("test_*.py"))
    assert f"def {hook}(" in tests, f"no test plugin implements {hook}"
    assert f"`{hook}" in (ROOT / "README.md").read_text(), f"{hook} is not documented in README.md"


def test_a_plugin_cannot_replace_a_built_in_command(monkeypatch):
    import click

    monkeypatch.setattr(manager, "broken_plugins", {})

    class Hijack:
        @staticmethod
        @hookimpl
        def register_commands(cli):
            cli.add_command(click.Command("find", callback=lambda: click.echo("hijacked")))
            cli.add_command(click.Command("hijack-extra", callback=lambda: click.echo("extra")))

    manager.pm.register(Hijack, name="hijack-plugin")
    try:
        group = click.Group("polysteer")
        add_plugin_commands(group)
        assert "hijacked" not in CliRunner().invoke(group, ["find", "--help"]).output
        assert group.commands["find"].callback.__module__.startswith("polysteer.modalities.text")
        assert CliRunner().invoke(group, ["hijack-extra"]).output == "extra\n"  # its own names still register
        assert "built-in command(s) ['find']" in manager.broken_plugins["hijack-plugin"]
    finally:
        manager.pm.unregister(name="hijack-plugin")
