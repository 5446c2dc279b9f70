"""The model layer depends on no domain: arrows run worker → domains and worker → llm only.

Read from the sources rather than from `sys.modules`, so an import inside a function or
under `TYPE_CHECKING` counts as much as one at the top of a module.
"""

import ast
from pathlib import Path

import shared
from shared import llm

LLM_DIR = Path(llm.__file__).parent
SHARED_DIR = Path(shared.__file__).parent
# The packages above shared.llm: the domains (every package of shared/ but llm) and the apps.
DOMAINS = sorted(
    p.name for p in SHARED_DIR.iterdir() if (p / "__init__.py").exists() and p.name != "llm"
)
FORBIDDEN = [*(f"shared.{name}" for name in DOMAINS), "api", "worker", "cli"]


def imported_modules(source: Path) -> set[str]:
    modules: set[str] = set()
    for node in ast.walk(ast.parse(source.read_text(), filename=str(source))):
        if isinstance(node, ast.Import):
            modules.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            modules.add(node.module)
            modules.update(f"{node.module}.{alias.name}" for alias in node.names)
    return modules


def reaches(module: str, package: str) -> bool:
    return module == package or module.startswith(f"{package}.")


def test_the_domains_are_found() -> None:
    assert {"audits", "batches", "rubrics"} <= set(DOMAINS)


def test_the_model_layer_imports_no_domain_and_no_app() -> None:
    sources = sorted(LLM_DIR.rglob("*.py"))
    assert sources

    offending = {
        f"{source.relative_to(SHARED_DIR.parent)}: {module}"
        for source in sources
        for module in imported_modules(source)
        if any(reaches(module, package) for package in FORBIDDEN)
    }

    assert not offending, sorted(offending)


def test_relative_imports_stay_inside_the_model_layer() -> None:
    for source in LLM_DIR.rglob("*.py"):
        tree = ast.parse(source.read_text())
        assert not any(isinstance(n, ast.ImportFrom) and n.level > 1 for n in ast.walk(tree))
