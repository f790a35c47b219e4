"""The public Python API (`import cotdistill as cd`, docs/api.md): the agreed names, each one
resolving to what it says, loaded lazily so that `import cotdistill` imports no torch."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

import cotdistill

API = {
    "GenerateConfig", "FilterConfig", "TrainConfig", "EvaluateConfig", "PipelineConfig",
    "StudentInitConfig", "QuantizeConfig", "load_config",
    "Problem", "Trace", "Message", "EvalSample",
    "run_generate", "run_filter", "run_train", "run_evaluate", "run_pipeline",
    "run_student_init", "run_quantize",
    "load_problems", "filter_traces", "extract_answer", "check_answers",
    "InputError", "ServiceError",
}
HEAVY = ("torch", "transformers", "vllm", "trl", "peft", "datasets", "math_verify")


def fresh_python(code: str) -> dict:
    """Run `code` in a new interpreter (this one has imported torch already); its JSON output."""
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          check=True, timeout=120)
    return json.loads(done.stdout.strip().splitlines()[-1])


def test_all_is_the_agreed_api() -> None:
    assert set(cotdistill.__all__) == API | {"__version__"}
    assert len(cotdistill.__all__) == len(set(cotdistill.__all__))
    assert set(cotdistill.__all__) <= set(dir(cotdistill))


@pytest.mark.parametrize("name", sorted(API))
def test_every_name_resolves_to_its_own_definition(name: str) -> None:
    value = getattr(cotdistill, name)
    # The object is the one its name says (a mapping typo would hand out another).
    assert value.__name__ == name
    assert value.__module__.startswith("cotdistill.")


def test_an_unknown_name_is_an_attribute_error() -> None:
    with pytest.raises(AttributeError, match="run_generat"):
        cotdistill.run_generat  # noqa: B018
    assert not hasattr(cotdistill, "generate_traces")


def test_import_is_lazy_and_imports_no_torch() -> None:
    loaded = fresh_python(
        "import json, sys, cotdistill\n"
        f"print(json.dumps([m for m in {HEAVY!r} if m in sys.modules]))"
    )
    assert loaded == []


def test_resolving_every_name_still_imports_no_torch() -> None:
    """Stage modules keep their heavy imports inside functions (docs/architecture.md), so even
    the configs and runners come without torch; the stage loads it when it runs."""
    loaded = fresh_python(
        "import json, sys, cotdistill as cd\n"
        "[getattr(cd, n) for n in cd.__all__]\n"
        f"print(json.dumps([m for m in {HEAVY!r} if m in sys.modules]))"
    )
    assert loaded == []


@pytest.mark.parametrize(
    ("runner", "config", "message"),
    [
        ("run_generate", "GenerateConfig", "needs --problems and --out"),
        ("run_filter", "FilterConfig", "needs --traces"),
        ("run_evaluate", "EvaluateConfig", "needs --problems and --out"),
    ],
)
def test_runners_raise_the_exported_input_error(runner: str, config: str, message: str) -> None:
    """Bad input is `cd.InputError` (the CLI's exit 2), raised before any model loads."""
    with pytest.raises(cotdistill.InputError, match=message):
        getattr(cotdistill, runner)(getattr(cotdistill, config)())
