"""How the code is laid out, in numbers: the largest modules and functions, and every asset body's
length (the rule: an asset body reads, calls one or two library functions, writes, returns metadata,
in about 40 lines or fewer). Reads the source only.

    python bench/structure.py [ROOT] [--top N]
"""

from __future__ import annotations

import argparse
import ast
from pathlib import Path

FOLDERS = ("featureflow_dagster", "assets", "resources")


def _is_asset(fn: ast.FunctionDef) -> bool:
    """Decorated with `@dg.asset(...)` or an `Artefact`'s `@X.asset(...)`."""
    for d in fn.decorator_list:
        target = d.func if isinstance(d, ast.Call) else d
        if isinstance(target, ast.Attribute) and target.attr == "asset":
            return True
    return False


def _length(fn: ast.FunctionDef) -> int:
    """Lines of the body, from its first statement (after the docstring) to its end."""
    body = fn.body[1:] if fn.body and isinstance(fn.body[0], ast.Expr) and isinstance(getattr(fn.body[0], "value", None), ast.Constant) else fn.body
    return (body[-1].end_lineno - body[0].lineno + 1) if body else 0


def survey(root: Path) -> tuple[list, list, list]:
    modules, functions, assets = [], [], []
    for folder in FOLDERS:
        for path in sorted((root / folder).rglob("*.py")):
            text = path.read_text()
            rel = str(path.relative_to(root))
            modules.append((len(text.splitlines()), rel))
            for node in ast.walk(ast.parse(text)):
                if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                    functions.append((node.end_lineno - node.lineno + 1, f"{rel}:{node.name}"))
                    if _is_asset(node):
                        assets.append((_length(node), f"{rel}:{node.name}"))
    return sorted(modules, reverse=True), sorted(functions, reverse=True), sorted(assets, reverse=True)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("root", nargs="?", default=str(Path(__file__).parents[1]))
    ap.add_argument("--top", type=int, default=8)
    args = ap.parse_args()
    modules, functions, assets = survey(Path(args.root))
    print(f"{len(modules)} modules, {sum(n for n, _ in modules):,} lines; {len(assets)} asset bodies, "
          f"{sum(n > 40 for n, _ in assets)} over 40 lines")
    for title, rows in (("largest modules (lines)", modules), ("largest functions (lines)", functions),
                        ("longest asset bodies (lines)", assets)):
        print(f"\n{title}:")
        for n, name in rows[: args.top]:
            print(f"  {n:5d}  {name}")


if __name__ == "__main__":
    main()
