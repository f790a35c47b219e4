"""Prompt templates stored as YAML files in `prompts/`, rendered into chat messages.

A template has `system` (optional) and `user` strings; `{question}` in them is replaced by the
problem text and nothing else is interpreted, so LaTeX braces such as `\\boxed{}` are safe.
The chat template of the model turns the messages into tokens (in the backend).

    template = load_template("math_cot")
    messages = template.render("What is 2 + 3?")
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from cotdistill.config import read_yaml
from cotdistill.errors import InputError
from cotdistill.infra.files import sha256_text
from cotdistill.records import Message

PROMPTS_DIR = Path(__file__).resolve().parent.parent / "prompts"


@dataclass(frozen=True)
class PromptTemplate:
    name: str
    user: str
    system: str | None
    hash: str

    def render(self, question: str) -> list[Message]:
        messages = []
        if self.system:
            system = self.system.replace("{question}", question)
            messages.append(Message(role="system", content=system))
        messages.append(Message(role="user", content=self.user.replace("{question}", question)))
        return messages


def chat_template_kwargs(enable_thinking: bool | None) -> dict[str, bool]:
    """Extra variables for the model's chat template (vLLM `chat_template_kwargs`).

    Templates that read `enable_thinking` (Qwen3) switch thinking mode with it; other
    templates ignore unknown variables, and unset means the template's own default.
    """
    return {} if enable_thinking is None else {"enable_thinking": enable_thinking}


def available_templates() -> list[str]:
    return sorted(p.stem for p in PROMPTS_DIR.glob("*.yaml"))


def load_template(name_or_path: str) -> PromptTemplate:
    """A name from prompts/ (`math_cot`) or a path to a YAML template file."""
    path = Path(name_or_path)
    if not path.suffix:
        path = PROMPTS_DIR / f"{name_or_path}.yaml"
    if not path.exists():
        raise InputError(
            f"prompt template not found (available: {', '.join(available_templates())})",
            file=path,
            field="prompt_template",
        )
    data = read_yaml(path)
    user = data.get("user")
    if not isinstance(user, str) or "{question}" not in user:
        raise InputError("template needs a `user` string containing {question}", file=path,
                         field="user")
    system = data.get("system")
    if system is not None and not isinstance(system, str):
        raise InputError("`system` must be a string or null", file=path, field="system")
    return PromptTemplate(
        name=path.stem, user=user, system=system, hash=sha256_text(path.read_text())[:16]
    )
