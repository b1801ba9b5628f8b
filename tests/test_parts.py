"""The engine's parts and the arrows between them, as README's "Parts and the arrows between them" table states:
a part (a subpackage or a top-level module of workbench/) imports only parts on a lower floor, imports inside
functions included (not those under TYPE_CHECKING), so there is no import circle; widgets/ sits above them all."""

from __future__ import annotations

import ast
import os
import re

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def readme_floors() -> dict[str, int]:
    text = open(os.path.join(ROOT, "README.md")).read()
    section = text[text.index("### Parts and the arrows between them") : text.index("### Files")]
    floors = {}
    for floor, parts in re.findall(r"^\| (\d+) \| ([^|]+) \|", section, re.M):
        for name in re.findall(r"`([\w/]+)`", parts):
            floors["widgets" if name == "widgets/" else name] = int(floor)
    return floors


def part_of(module: str) -> str:
    """workbench.config.schema -> config; workbench.launch -> launch; workbench -> workbench; widgets.x -> widgets."""
    bits = module.split(".")
    if bits[0] == "widgets":
        return "widgets"
    if len(bits) == 1:
        return "workbench"
    sub = os.path.join(ROOT, "workbench", bits[1])
    return bits[1] if os.path.isdir(sub) or os.path.isfile(sub + ".py") else "workbench"


def imports_of(path: str, package: str) -> list[tuple[str, int]]:
    tree = ast.parse(open(path).read())
    skip = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test):
            skip.update(id(n) for b in node.body for n in ast.walk(b))
    out = []
    for node in ast.walk(tree):
        if id(node) in skip:
            continue
        if isinstance(node, ast.Import):
            out += [(a.name, node.lineno) for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                up = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join(up + ([base] if base else []))
            for a in node.names:  # a submodule of that name, else a name defined in base
                sub = os.path.join(ROOT, *(base + "." + a.name).split("."))
                out.append(
                    (base + "." + a.name if os.path.isdir(sub) or os.path.isfile(sub + ".py") else base, node.lineno)
                )
    return [(m, line) for m, line in out if m.split(".")[0] in ("workbench", "widgets")]


def test_every_import_between_parts_goes_down_a_floor():
    floors = readme_floors()
    assert floors["config"] < floors["plan"] < floors["parallel"] < floors["worker"] < floors["widgets"]
    upward, unlisted = [], set()
    for pkg in ("workbench", "widgets"):
        for d, _, files in os.walk(os.path.join(ROOT, pkg)):
            for f in files:
                if not f.endswith(".py"):
                    continue
                path = os.path.join(d, f)
                rel = os.path.relpath(path, ROOT)
                module = rel[:-3].replace(os.sep, ".").removesuffix(".__init__")
                package = module if f == "__init__.py" else module.rsplit(".", 1)[0]
                me = part_of(module)
                for target, line in imports_of(path, package):
                    other = part_of(target)
                    unlisted.update(p for p in (me, other) if p not in floors)
                    if other != me and other in floors and me in floors and floors[other] >= floors[me]:
                        upward.append(f"{rel}:{line} ({me}, floor {floors[me]}) imports {target} ({other}, floor "
                                      f"{floors[other]})")  # fmt: skip
    assert not unlisted, f"parts missing from README's table of floors: {sorted(unlisted)}"
    assert not upward, "imports that do not go down a floor:\n" + "\n".join(upward)
