"""The import graph goes one way: math <- kernels, nets, data <- experiment <- train <- run, latents <- modes <-
launch.py.

Read from the source with `ast` (every import, also those inside functions): a module may import modules of its
own floor or lower ones, never a higher floor.
"""

import ast
import pathlib

PACKAGE = pathlib.Path(__file__).parents[1] / "diffax"

FLOORS = {
    **dict.fromkeys(("schedules", "objectives", "sampling", "likelihood", "mixture"), 0),  # The math.
    **dict.fromkeys(("kernels", "data", "evaluation", "parallel", "checkpoint", "console", "signals", "weights"), 1),
    "nets": 2,
    **dict.fromkeys(("experiment", "generate", "run_config", "convert"), 3),
    **dict.fromkeys(("train", "config_checks"), 4),
    "run": 5,
    "latents": 5,
    "modes": 6,
}


def _unit(path: pathlib.Path) -> str:
    """'diffax/train/step.py' -> 'train'; 'diffax/run.py' -> 'run'."""
    return path.relative_to(PACKAGE).parts[0].removesuffix(".py")


def _imported_units(tree: ast.AST) -> set[str]:
    units = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names = [node.module] if node.module != "diffax" else [f"diffax.{a.name}" for a in node.names
                                                                     if not a.name.startswith("__")]
        else:
            continue
        units |= {name.split(".")[1] for name in names if name.startswith("diffax.")}
    return units


def test_every_unit_has_a_floor():
    units = {_unit(path) for path in PACKAGE.rglob("*.py") if path.name != "__init__.py" or path.parent != PACKAGE}
    assert units <= set(FLOORS), f"give these a floor: {sorted(units - set(FLOORS))}"


def test_no_module_imports_a_higher_floor():
    violations = []
    for path in sorted(PACKAGE.rglob("*.py")):
        if path == PACKAGE / "__init__.py":  # The package's lazy `load_run` re-export.
            continue
        unit = _unit(path)
        for imported in _imported_units(ast.parse(path.read_text())):
            if FLOORS[imported] > FLOORS[unit]:
                violations.append(f"{path.relative_to(PACKAGE.parent)} (floor {FLOORS[unit]}) imports "
                                  f"diffax.{imported} (floor {FLOORS[imported]})")
    assert not violations, "\n".join(violations)


def test_the_check_sees_a_violation():
    tree = ast.parse("def f():\n    from diffax.modes import train\nimport diffax.run as r\nfrom diffax import nets\n")
    assert _imported_units(tree) == {"modes", "run", "nets"}
