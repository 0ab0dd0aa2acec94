"""The package's shape: no import cycles, and the two public faces export what they name."""

from __future__ import annotations

import grimp

import rcukit
import rcukit.sim


def _cycles(graph: grimp.ImportGraph) -> list[list[str]]:
    """Strongly connected components of more than one module (Tarjan, iterative)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    on_stack: set[str] = set()
    stack: list[str] = []
    out: list[list[str]] = []
    counter = 0
    for root in sorted(graph.modules):
        if root in index:
            continue
        work = [(root, iter(sorted(graph.find_modules_directly_imported_by(root))))]
        index[root] = low[root] = counter
        counter += 1
        stack.append(root)
        on_stack.add(root)
        while work:
            node, children = work[-1]
            child = next(children, None)
            if child is not None:
                if child not in index:
                    index[child] = low[child] = counter
                    counter += 1
                    stack.append(child)
                    on_stack.add(child)
                    work.append(
                        (child, iter(sorted(graph.find_modules_directly_imported_by(child))))
                    )
                elif child in on_stack:
                    low[node] = min(low[node], index[child])
                continue
            work.pop()
            if work:
                parent = work[-1][0]
                low[parent] = min(low[parent], low[node])
            if low[node] == index[node]:
                comp = []
                while True:
                    m = stack.pop()
                    on_stack.discard(m)
                    comp.append(m)
                    if m == node:
                        break
                if len(comp) > 1:
                    out.append(sorted(comp))
    return out


def test_no_module_imports_itself_through_others() -> None:
    """No module imports itself through others when the program runs.

    ``if TYPE_CHECKING:`` imports are left to the import-linter contracts in pyproject.toml,
    which count them: across packages they must go down the layers like any import. Inside
    one package a part may name its whole's type (``tree_exp`` names ``RcuState``, the way
    ``tree_exp.h`` is compiled into ``tree.c``). Package ``__init__`` re-exports are excluded:
    a package importing its own children is not a cycle between concepts."""
    graph = grimp.build_graph("rcukit", exclude_type_checking_imports=True)
    for pkg in [m for m in graph.modules if graph.find_children(m)]:
        for child in graph.find_children(pkg):
            if graph.direct_import_exists(importer=pkg, imported=child):
                graph.remove_import(importer=pkg, imported=child)
    assert _cycles(graph) == []


def test_cycle_finder_finds_a_cycle() -> None:
    graph = grimp.ImportGraph()
    for a, b in [("p.a", "p.b"), ("p.b", "p.c"), ("p.c", "p.a"), ("p.c", "p.d")]:
        graph.add_import(importer=a, imported=b)
    assert _cycles(graph) == [["p.a", "p.b", "p.c"]]


def test_public_faces_export_exactly_what_they_name() -> None:
    """``rcukit`` is the application API with its errors; ``rcukit.sim`` the simulator."""
    for mod in (rcukit, rcukit.sim):
        assert sorted(mod.__all__) == sorted(set(mod.__all__))
        for name in mod.__all__:
            assert getattr(mod, name) is not None, f"{mod.__name__}.{name}"
    for err in ("RcuBackpressureError", "RcuClosedError", "RcuLeakError", "RcuUsageError"):
        assert issubclass(getattr(rcukit, err), rcukit.RcukitError)
    # the application API does not drag the simulator's names in
    assert not {"Kernel", "boot", "simulate", "Task"} & set(rcukit.__all__)
    assert {"Kernel", "boot", "simulate", "Task", "GFP_KERNEL", "Subsystems"} <= set(
        rcukit.sim.__all__
    )


def test_the_application_api_does_not_load_the_simulator() -> None:
    """An application importing ``rcukit`` gets the RCU engine it runs on (gpcore, segcblist,
    the clock-free kvfree core, the version profiles) and nothing of the simulated kernel."""
    import subprocess
    import sys

    code = "import sys, rcukit; print(' '.join(sorted(sys.modules)))"
    loaded = set(subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True
    ).stdout.split())
    assert {"rcukit.app", "rcukit.rcu.gpcore", "rcukit.rcu.kvfree.core"} <= loaded
    simulator = {"rcukit.kernel", "rcukit.machine", "rcukit.sched", "rcukit.locking",
                 "rcukit.mm.page_alloc", "rcukit.rcu.tree", "rcukit.rcu.kvfree.sim", "rcukit.wq"}
    assert not simulator & loaded
