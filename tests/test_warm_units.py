"""Units of warm apps' fast pulls and framework imports (no Flower processes)."""

from __future__ import annotations

import importlib
import json
import os
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from fedops_common import runconfig as keys
from fedops_common.frameworks import framework_imports, training_imports
from fedops_flower.warmapps import pull


class FakeTime:
    """A ``time`` module whose clock the test moves and whose sleeps are recorded."""

    def __init__(self) -> None:
        self.now = 100.0
        self.slept: list[float] = []

    def monotonic(self) -> float:
        return self.now

    def sleep(self, seconds: float) -> None:
        self.slept.append(seconds)
        self.now += seconds

    def time(self) -> float:
        return 1_700_000_000.0


def test_pull_sleep_is_short_while_active_and_flowers_when_idle() -> None:
    fake = FakeTime()
    clock = pull.PollClock(fake, active_pull_s=0.1, active_window_s=30.0, reply_check_s=0.02)  # type: ignore[arg-type]
    clock.sleep(3)                      # just started: active
    clock.sleep(0.5)                    # the reply check
    clock.sleep(1.25)                   # any other sleep: as asked
    fake.now += 31
    clock.sleep(3)                      # 31 s without a message: Flower's 3 s
    clock.message_pulled()
    clock.sleep(3)
    assert fake.slept == [0.1, 0.02, 1.25, 3.0, 0.1]
    assert clock.time() == 1_700_000_000.0  # every other time function is the real module's


def test_install_patches_this_flowers_supernode_loop() -> None:
    """Fails when a Flower upgrade changes the loop: the patch would then be skipped in agents."""
    from flwr.supernode import start_client_internal as module

    saved = module.time, module._pull_and_store_message
    fake = FakeTime()
    answers = iter([None, 7])
    try:
        module._pull_and_store_message = lambda **_: next(answers)  # stands in for a pull from the SuperLink
        clock = pull.install(pull.PollClock(fake, active_window_s=30.0))  # type: ignore[arg-type]
        assert clock is not None and module.time is clock
        fake.now += 60
        assert module._pull_and_store_message() is None and clock.pull_wait() == 3.0  # idle: Flower's
        assert module._pull_and_store_message() == 7 and clock.pull_wait() == pull.ACTIVE_PULL_S
    finally:
        module.time, module._pull_and_store_message = saved
    assert module.time is time


def test_install_leaves_an_unexpected_loop_alone() -> None:
    from flwr.supernode import start_client_internal as module

    assert pull._expects_flowers_sleeps(module)
    assert not pull._expects_flowers_sleeps(time)  # no such functions: not patched


def test_framework_imports_are_the_installed_dependencies_import_names() -> None:
    names = framework_imports(["numpy>=1.26", "scikit-learn", "flwr[simulation]>=1.42", "PyYAML",
                               "not-installed-anywhere", "!!not a requirement"])
    assert names == ["numpy", "sklearn", "yaml"]


TRAIN_STEP = """
import sys
import torch
for name in sys.argv[1:]:
    __import__(name)
before = set(sys.modules)
model = torch.nn.Linear(4, 2)
optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
torch.nn.functional.cross_entropy(model(torch.randn(3, 4)), torch.tensor([0, 1, 0])).backward()
optimizer.step()
print(len(set(sys.modules) - before))
"""


def test_a_clientapp_template_imports_what_torch_imports_when_a_model_first_trains() -> None:
    """With the training imports, torch's first optimizer step imports nothing more (in a new
    interpreter); without them it imports hundreds of modules. Fails when a torch upgrade moves its
    lazy imports elsewhere."""
    names = training_imports(framework_imports(["numpy", "torch>=2"]))
    assert names == ["numpy", "torch", "torch._dynamo"]

    def new_modules(*imports: str) -> int:
        done = subprocess.run([sys.executable, "-c", TRAIN_STEP, *imports], capture_output=True, text=True,
                              check=True, timeout=120)
        return int(done.stdout.split()[-1])

    assert new_modules() > 100
    assert new_modules(*names) == 0


def test_object_pull_retries_within_milliseconds_after_install() -> None:
    """Flower's pull of an object that is not there yet waits 1 s first; after install, 0.02 s, and
    in a template (local hops) at most 0.05 s between tries. Fails when a Flower upgrade renames the
    arguments (install then returns False)."""
    from flwr.supercore.inflatable import inflatable_utils as flower
    from flwr.supercore.inflatable.inflatable_utils import ObjectUnavailableError

    from fedops_flower.warmapps import objectpull

    functions = (flower.pull_objects, flower.pull_and_inflate_object_from_tree)
    saved = [dict(f.__kwdefaults__ or {}) for f in functions]
    asked: list[float] = []

    def arrives_on_the_third_try(object_id: str) -> bytes:
        asked.append(time.monotonic())
        if len(asked) < 3:
            raise ObjectUnavailableError(object_id)
        return b"chunk"

    try:
        assert objectpull.install()
        assert all(f.__kwdefaults__ and f.__kwdefaults__["initial_backoff"] == objectpull.INITIAL_BACKOFF_S
                   and f.__kwdefaults__["backoff_cap"] == objectpull.BACKOFF_CAP_S for f in functions)
        assert flower.pull_objects(["a"], arrives_on_the_third_try) == {"a": b"chunk"}
        # A template's local hops: the waits stop doubling at 0.05 s (Flower's would reach 0.64 s by
        # the sixth try, the SuperNode's 1 s cap 0.32 s).
        assert objectpull.install(backoff_cap_s=objectpull.LOCAL_BACKOFF_CAP_S)
        asked.clear()

        def arrives_on_the_seventh_try(object_id: str) -> bytes:
            asked.append(time.monotonic())
            if len(asked) < 7:
                raise ObjectUnavailableError(object_id)
            return b"chunk"

        assert flower.pull_objects(["b"], arrives_on_the_seventh_try) == {"b": b"chunk"}
        waits = [later - earlier for earlier, later in zip(asked, asked[1:], strict=False)]
        assert max(waits) < 0.05 * 1.2 + 0.03, waits  # the cap, its 20 % jitter, and scheduling
    finally:
        for function, defaults in zip(functions, saved, strict=True):
            function.__kwdefaults__ = defaults
    assert asked[-1] - asked[0] < 0.5  # Flower's defaults: at least 0.8 + 1.6 s
    assert flower.pull_objects.__kwdefaults__["initial_backoff"] == 1  # restored for the other tests


def test_a_template_keeps_the_library_modules_of_its_first_task_for_the_next_run(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    """What the first task imported from the app's own FAB is not kept (the next run may bring it
    changed); library modules are, and the next run's template imports them before it is ready."""
    from fedops_flower.warmapps import template

    fab = tmp_path / "fab"
    fab.mkdir()
    (fab / "warm_units_app_task.py").write_text("X = 1\n")
    monkeypatch.syspath_prepend(str(fab))
    importlib.import_module("warm_units_app_task")
    importlib.import_module("colorsys")  # a library module (the standard library's, here)
    kept = tmp_path / "agent" / "warm-imports" / "task-1.json"
    names = ["warm_units_app_task", "colorsys", "never_imported", "__main__"]
    monkeypatch.delenv("FLWR_HOME", raising=False)
    template._remember(str(kept), names, [str(fab)])
    assert json.loads(kept.read_text()) == {"modules": ["colorsys"]}
    # With the run's FLWR_HOME (always set in a run), what was loaded from under it is the app's,
    # whatever the task added to sys.path (it can be a directory that holds the virtualenv too).
    monkeypatch.setenv("FLWR_HOME", str(tmp_path))
    template._remember(str(kept), names, [str(tmp_path.parent), str(fab)])
    assert json.loads(kept.read_text()) == {"modules": ["colorsys"]}
    # A later run's template imported colorsys from the file, so its first task sees only the app's
    # modules and one new library module: what was kept stays, the new one is added.
    template._remember(str(kept), ["warm_units_app_task", "json"], [str(fab)])
    assert json.loads(kept.read_text()) == {"modules": ["colorsys", "json"]}
    monkeypatch.delitem(sys.modules, "colorsys")
    template._import_learned(str(kept))
    assert "colorsys" in sys.modules
    assert "imported 1 modules learned in an earlier run" in capsys.readouterr().err
    template._import_learned(str(tmp_path / "none-yet.json"))  # the task's first run on this agent: nothing
    assert "learned" not in capsys.readouterr().err


def test_the_learned_modules_are_kept_per_task_under_the_agents_state() -> None:
    from fedops_agent.warmapps import learned_file

    state = Path("/var/lib/agent")
    assert learned_file(state, {keys.NODE_TASK_ID: '"task-3f2a"'}) == state / "warm-imports" / "task-3f2a.json"
    assert learned_file(state, {keys.NODE_TASK_ID: "task-3f2a"}) == state / "warm-imports" / "task-3f2a.json"
    assert learned_file(state, {}) is None
    assert learned_file(state, {keys.NODE_TASK_ID: '"../../etc/passwd"'}) is None


def _in_forks(draw: Callable[[], str], forks: int = 2) -> list[str]:
    """What ``draw`` returns in each of ``forks`` forked children of this process."""
    answers = []
    for _ in range(forks):
        read, write = os.pipe()
        pid = os.fork()
        if pid == 0:  # the child: answer, then leave without pytest's clean-up
            os.close(read)
            os.write(write, draw().encode())
            os._exit(0)
        os.close(write)
        with os.fdopen(read, "rb") as answer:
            answers.append(answer.read().decode())
        os.waitpid(pid, 0)
    return answers


def test_each_forked_task_writes_its_own_event_ids() -> None:
    """Warm tasks are forks of one template: each must number its documents under its own instance,
    or Elasticsearch (``create`` by ``event.id``) keeps only one task's first line, one second line..."""
    from fedops_common.telemetry.writer import EVENT_IDS

    parent = EVENT_IDS.next()
    children = _in_forks(EVENT_IDS.next)
    prefixes = {event_id.split("-")[0] for event_id in [parent, *children]}
    assert len(prefixes) == 3, (parent, children)
    assert all(child.endswith("-0000000001") for child in children)  # a new instance counts from 1


def test_each_forked_task_draws_its_own_random_numbers() -> None:
    """As new processes would: numpy's and torch's global generators are reseeded in each fork."""
    import numpy as np
    import torch

    from fedops_flower.warmapps import template

    np.random.seed(0)
    torch.manual_seed(0)

    def draw() -> str:
        template._reseed()
        return f"{np.random.randint(1 << 30)} {torch.randint(1 << 30, (1,)).item()}"

    first, second = (answer.split() for answer in _in_forks(draw))
    assert first[0] != second[0] and first[1] != second[1], (first, second)


def test_a_task_opts_out_with_a_quoted_or_bare_false_and_names_its_learned_file() -> None:
    from fedops_agent.warmapps import learned_file
    from fedops_common.runconfig import warm_apps_wanted

    for off in ('"false"', "false", " False ", "0", '"off"', "no"):
        assert not warm_apps_wanted({keys.NODE_WARM_APPS: off}), off
    for on in ("", '"true"', "true", "1"):
        assert warm_apps_wanted({keys.NODE_WARM_APPS: on}), on
    # A task's client config as the control service stores it may hold JSON values, not text.
    assert not warm_apps_wanted({keys.NODE_WARM_APPS: False}) and warm_apps_wanted({keys.NODE_WARM_APPS: True})
    state = Path("/var/lib/agent")
    assert learned_file(state, {keys.NODE_TASK_ID: '"task-1"'}) == state / "warm-imports" / "task-1.json"
    assert learned_file(state, {keys.NODE_TASK_ID: '"../etc"'}) is None
