"""Print every environment variable of every service (name, default, description) as Markdown.

``make env-table`` regenerates the configuration section of README.md from the settings classes,
so the documentation cannot drift from the code.
"""

from __future__ import annotations

import sys
from pathlib import Path

from pydantic_settings import BaseSettings

from gradeflow_inference.config import InferenceSettings
from gradeflow_mlflow.config import MlflowSettings
from gradeflow_monitor.config import MonitorSettings
from gradeflow_shared.settings import BaseServiceSettings
from gradeflow_trainer.config import TrainerSettings

BEGIN, END = "<!-- env-table:begin -->", "<!-- env-table:end -->"


def rows(cls: type[BaseSettings], skip: set[str]) -> list[str]:
    out = []
    for name, field in cls.model_fields.items():
        if name in skip:
            continue
        default = field.default
        shown = "(empty)" if default is None or default == "" else f"`{default}`"
        desc = (field.description or "").replace("|", "\\|")
        out.append(f"| `{name.upper()}` | {shown} | {desc} |")
    return out


SERVICES: tuple[tuple[str, type[BaseSettings]], ...] = (
    ("mlflow", MlflowSettings),
    ("trainer", TrainerSettings),
    ("inference", InferenceSettings),
    ("monitor", MonitorSettings),
)


def shared_mixins() -> list[type[BaseSettings]]:
    """Settings classes from gradeflow_shared (other than the base) that services inherit: listed once."""
    seen: list[type[BaseSettings]] = []
    for _, cls in SERVICES:
        for base in cls.__mro__[1:]:
            if (
                isinstance(base, type)
                and issubclass(base, BaseSettings)
                and base.__module__.startswith("gradeflow_shared")
                and base not in (BaseServiceSettings, BaseSettings)
                and base not in seen
            ):
                seen.append(base)
    return seen


def table() -> str:
    common = set(BaseServiceSettings.model_fields)
    parts = ["| variable | default | meaning |", "|---|---|---|"]
    parts += ["| **all services** | | |"] + rows(BaseServiceSettings, set())
    mixins = shared_mixins()
    for mixin in mixins:
        users = [title for title, cls in SERVICES if issubclass(cls, mixin)]
        parts += [f"| **{', '.join(users)}** | | |"] + rows(mixin, set())
        common |= set(mixin.model_fields)
    for title, cls in SERVICES:
        parts += [f"| **{title}** | | |"] + rows(cls, common)
    return "\n".join(parts)


def main() -> int:
    text = table()
    if len(sys.argv) > 1:
        path = Path(sys.argv[1])
        doc = path.read_text()
        start, end = doc.index(BEGIN) + len(BEGIN), doc.index(END)
        path.write_text(doc[:start] + "\n" + text + "\n" + doc[end:])
    else:
        print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
