"""Structural figures of the `pap/` package, read from the source alone (stdlib: ast, tokenize).

    python bench/code_shape.py                      # this checkout
    python bench/code_shape.py --root /path/to/checkout

Nothing is imported or run; every figure comes from parsing `pap/**/*.py`:

* the 10 largest files and the 10 largest classes, by line count;
* imports of pap modules inside function bodies, and how many have a comment on the same
  line, the line just above, or above the block of imports they are in (the reason for
  deferring the import);
* upward imports: an import, at module level or in a function, from a module of a lower
  layer (`LAYERS` below) to a module of a higher one;
* code locations that write fp32 master weights, Adam's moments or Adam's step, and calls
  to private members of megatron objects;
* functions of `pap/sharding/` and `pap/pruning/` that take a `trainer` or reach into one;
* calls to `remove_from_arch` per module (each call recomputes a round's `Arch`).

The optimizer-state writes are found by a **heuristic** on the syntax tree, not by data
flow: a subscript store keyed "exp_avg", "exp_avg_sq", "step" or by a name containing
"moment", into a container named like optimizer state (`state`, `adam`, `group`); an in-place tensor method (`copy_`, `add_`, ...) on an expression naming a master
(`master`, `main_param`, `exp_avg`, a moment), directly or through a local name assigned
from one; an assignment to a `.main_param`/`.exp_avg*` attribute; a call to megatron's
`_copy_*_params_to_*_params`. A write through a generic helper (a tensor handed to a copy
routine that does not name it) is not seen, and a match is not proof of a write.
"""

from __future__ import annotations

import argparse
import ast
import io
import re
import tokenize
from collections import Counter, defaultdict
from pathlib import Path
from typing import Dict, Iterator, List, Optional, Set, Tuple

LAYERS: List[Tuple[str, int]] = [
    # L0: leaves and utilities every layer may use (no pruning, sharding or model knowledge).
    ("pap/__init__.py", 0), ("pap/errors.py", 0), ("pap/arch.py", 0), ("pap/config.py", 0),
    ("pap/distributed.py", 0), ("pap/env_check.py", 0), ("pap/exit_request.py", 0),
    ("pap/fault_injection.py", 0), ("pap/progress.py", 0), ("pap/run_lock.py", 0),
    ("pap/hf/remote_code/", 0),  # ships inside exported models: must import nothing of pap
    # L1: what to remove (saliency, selection, removal bookkeeping); pure, no collectives.
    ("pap/pruning/", 1),
    # L2: where weights live and moving them between ranks.
    ("pap/sharding/", 2),
    # L3: the model (megatron modules and their construction), checkpoints, data, HF I/O.
    ("pap/model.py", 3), ("pap/cluster_attention.py", 3), ("pap/per_layer_config.py", 3),
    ("pap/init.py", 3), ("pap/checkpoint.py", 3), ("pap/data.py", 3), ("pap/hf/", 3),
    # L4: the trainer and its components.
    ("pap/trainer.py", 4), ("pap/prune_hook.py", 4), ("pap/callbacks.py", 4), ("pap/forward_step.py", 4),
    ("pap/pruning_log.py", 4), ("pap/components.py", 4), ("pap/distill/", 4),
    ("pap/eval/training.py", 4),  # lm-eval during training: a training component
    ("pap/params.py", 0), ("pap/eval/table.py", 0), ("pap/resume_settings.py", 0),  # the parameter table; lm-eval's table rendering
    # L5: entry points.
    ("pap/train.py", 5), ("pap/convert.py", 5), ("pap/eval/", 5), ("pap/baselines.py", 5),
    ("pap/plot.py", 5), ("pap/generate.py", 5),
]
"""Module path prefix (relative to the checkout) -> layer, lowest first; the longest prefix wins."""

STATE_WORDS = re.compile(r"master|main_param|exp_avg|moment")
STATE_KEYS = {"exp_avg", "exp_avg_sq", "step"}
INPLACE = {"copy_", "add_", "sub_", "mul_", "div_", "zero_", "fill_", "addcmul_", "addcdiv_", "lerp_",
           "index_copy_", "index_add_", "masked_fill_", "clamp_", "set_"}
OPTIMIZER_CONTAINERS = re.compile(r"state|adam|group")
MEGATRON_COPIES = re.compile(r"^_copy_\w*params_to_\w*params$")


# ---- reading the tree -------------------------------------------------------------------------

class Module:
    """One parsed source file."""

    def __init__(self, root: Path, path: Path):
        self.path = path
        self.rel = path.relative_to(root).as_posix()
        self.text = path.read_text(encoding="utf-8")
        self.lines = self.text.splitlines()
        self.tree = ast.parse(self.text, filename=self.rel)
        self.comment_lines = _comment_lines(self.text)
        self.parents: Dict[ast.AST, ast.AST] = {}
        for node in ast.walk(self.tree):
            for child in ast.iter_child_nodes(node):
                self.parents[child] = node

    @property
    def dotted(self) -> str:
        parts = self.rel[:-3].split("/")
        return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)

    def enclosing_function(self, node: ast.AST) -> Optional[str]:
        """Qualified name (Class.method, outer.inner) of the innermost function around `node`."""
        names, inside = [], False
        while node in self.parents:
            node = self.parents[node]
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                inside = True
                names.append(node.name)
            elif isinstance(node, ast.ClassDef):
                names.append(node.name)
        return ".".join(reversed(names)) if inside else None

    def where(self, node: ast.AST) -> str:
        return f"{self.rel}:{self.enclosing_function(node) or '<module>'}"


def _comment_lines(text: str) -> Set[int]:
    """Line numbers that carry a comment."""
    lines = set()
    try:
        for token in tokenize.generate_tokens(io.StringIO(text).readline):
            if token.type == tokenize.COMMENT:
                lines.add(token.start[0])
    except (tokenize.TokenError, SyntaxError):
        pass
    return lines


def load(root: Path) -> List[Module]:
    return [Module(root, path) for path in sorted((root / "pap").rglob("*.py"))]


def layer_of(rel: str) -> Optional[int]:
    best = None
    for prefix, layer in LAYERS:
        if rel.startswith(prefix) and (best is None or len(prefix) > len(best[0])):
            best = (prefix, layer)
    return None if best is None else best[1]


def _resolve(root: Path, dotted: str) -> Optional[str]:
    """Checkout-relative file of a dotted pap module, or None."""
    base = root / Path(*dotted.split("."))
    for candidate in (base.with_suffix(".py"), base / "__init__.py"):
        if candidate.is_file():
            return candidate.relative_to(root).as_posix()
    return None


def pap_imports(root: Path, module: Module) -> Iterator[Tuple[ast.stmt, str]]:
    """(import statement, imported file) for every pap module an import statement names."""
    package = module.dotted if module.rel.endswith("__init__.py") else module.dotted.rpartition(".")[0]
    for node in ast.walk(module.tree):
        if isinstance(node, ast.Import):
            for alias in node.names:
                if alias.name == "pap" or alias.name.startswith("pap."):
                    target = _resolve(root, alias.name)
                    if target:
                        yield node, target
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")[:len(package.split(".")) - node.level + 1]
                name = ".".join(base + ([node.module] if node.module else []))
            else:
                name = node.module or ""
            if not (name == "pap" or name.startswith("pap.")):
                continue
            found = False
            for alias in node.names:  # `from pap import checkpoint` imports a module
                target = _resolve(root, f"{name}.{alias.name}")
                if target:
                    found = True
                    yield node, target
            if not found:
                target = _resolve(root, name)
                if target:
                    yield node, target


def _identifiers(node: ast.AST) -> Set[str]:
    """Names and attribute names an expression mentions (not string contents)."""
    out = set()
    for sub in ast.walk(node):
        if isinstance(sub, ast.Name):
            out.add(sub.id)
        elif isinstance(sub, ast.Attribute):
            out.add(sub.attr)
    return out


def _root_name(node: ast.AST) -> Optional[str]:
    while isinstance(node, (ast.Attribute, ast.Subscript, ast.Call)):
        node = node.func if isinstance(node, ast.Call) else node.value
    return node.id if isinstance(node, ast.Name) else None


def _functions(tree: ast.AST) -> Iterator[ast.AST]:
    for node in ast.walk(tree):
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
            yield node


def _own_nodes(function: ast.AST) -> Iterator[ast.AST]:
    """Nodes of `function`'s body, not descending into nested functions or classes."""
    stack = list(ast.iter_child_nodes(function))
    while stack:
        node = stack.pop()
        yield node
        if not isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef, ast.Lambda)):
            stack.extend(ast.iter_child_nodes(node))


# ---- the figures ------------------------------------------------------------------------------

def largest(modules: List[Module], count: int = 10):
    files = sorted(((len(m.lines), m.rel) for m in modules), reverse=True)[:count]
    classes = []
    for m in modules:
        for node in ast.walk(m.tree):
            if isinstance(node, ast.ClassDef):
                classes.append((node.end_lineno - node.lineno + 1, f"{m.rel}:{node.name}"))
    return files, sorted(classes, reverse=True)[:count]


def _commented(m: "Module", node: ast.AST) -> bool:
    """A comment on the import's lines, or just above it or above the run of import lines
    it belongs to (one comment may give the reason for a block of deferred imports)."""
    if set(range(node.lineno, node.end_lineno + 1)) & m.comment_lines:
        return True
    line = node.lineno - 1
    while line > 0 and m.lines[line - 1].strip().startswith(("from ", "import ")):
        line -= 1
    return line in m.comment_lines or (node.lineno - 1) in m.comment_lines


def deferred_imports(root: Path, modules: List[Module]):
    """[(file:function, line, commented)] for each pap import statement inside a function body."""
    out, seen = [], set()
    for m in modules:
        for node, _ in pap_imports(root, m):
            if id(node) in seen or m.enclosing_function(node) is None:
                continue
            seen.add(id(node))
            out.append((m.where(node), node.lineno, _commented(m, node)))
    return out


def upward_imports(root: Path, modules: List[Module]):
    """[(importer:line, imported, from layer, to layer, in a function)] and the unlayered files."""
    out, unlayered = [], sorted({m.rel for m in modules if layer_of(m.rel) is None})
    for m in modules:
        low = layer_of(m.rel)
        for node, target in pap_imports(root, m):
            high = layer_of(target)
            if low is not None and high is not None and high > low:
                out.append((f"{m.rel}:{node.lineno}", target, low, high, m.enclosing_function(node) is not None))
    return sorted(set(out)), unlayered


def _aliases(function: ast.AST) -> Set[str]:
    """Local names bound to an expression that names optimizer state (two passes: chains)."""
    names: Set[str] = set()
    assigns = [n for n in _own_nodes(function) if isinstance(n, ast.Assign)]
    for _ in range(2):
        for node in assigns:
            for target in node.targets:
                pairs = [(target, node.value)]
                if isinstance(target, ast.Tuple) and isinstance(node.value, ast.Tuple) \
                        and len(target.elts) == len(node.value.elts):
                    pairs = list(zip(target.elts, node.value.elts))
                for name, value in pairs:
                    words = _identifiers(value)
                    if isinstance(name, ast.Name) and (any(STATE_WORDS.search(w) for w in words) or words & names):
                        names.add(name.id)
    return names


def _subscript_key(node: ast.Subscript) -> Optional[str]:
    """The state key a subscript store writes (`adam["exp_avg"]`, `group["step"]`,
    `state[moment]`), or None; the container must look like optimizer state, so copying a
    moment into a local dict (`fields[moment] = ...`) does not count."""
    if not any(OPTIMIZER_CONTAINERS.search(w) for w in _identifiers(node.value)):
        return None
    key = node.slice
    if isinstance(key, ast.Constant) and isinstance(key.value, str):
        return key.value if key.value in STATE_KEYS else None
    if isinstance(key, ast.Name) and "moment" in key.id:
        return key.id
    return None


def state_writes(modules: List[Module]):
    """[(file:function, line, what)] of heuristic optimizer-state writes (see the docstring)."""
    out = []
    for m in modules:
        for function in _functions(m.tree):
            aliases = _aliases(function)
            for node in _own_nodes(function):
                targets = []
                if isinstance(node, (ast.Assign, ast.AugAssign, ast.AnnAssign)):
                    targets = node.targets if isinstance(node, ast.Assign) else [node.target]
                for target in targets:
                    for sub in ast.walk(target):
                        if isinstance(sub, ast.Subscript) and _subscript_key(sub):
                            out.append((m.where(node), node.lineno, f"[{_subscript_key(sub)}] ="))
                        elif isinstance(sub, ast.Attribute) and sub.attr in ("main_param", "exp_avg", "exp_avg_sq"):
                            out.append((m.where(node), node.lineno, f".{sub.attr} ="))
                if isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute):
                    method, receiver = node.func.attr, node.func.value
                    if method in INPLACE:
                        words = _identifiers(receiver)
                        if any(STATE_WORDS.search(w) for w in words) or _root_name(receiver) in aliases:
                            out.append((m.where(node), node.lineno, f"{ast.unparse(receiver)}.{method}"))
                    elif MEGATRON_COPIES.match(method):
                        out.append((m.where(node), node.lineno, method))
    return sorted(set(out))


def _import_roots(module: Module) -> Dict[str, str]:
    """Local name -> the module it was imported from (module level and in functions)."""
    roots = {}
    for node in ast.walk(module.tree):
        if isinstance(node, ast.Import):
            for alias in node.names:
                roots[alias.asname or alias.name.split(".")[0]] = alias.name
        elif isinstance(node, ast.ImportFrom) and node.module:
            for alias in node.names:
                roots[alias.asname or alias.name] = f"{node.module}.{alias.name}"
    return roots


def _defined_names(modules: List[Module]) -> Set[str]:
    """Every function, class and attribute name pap defines itself."""
    names = set()
    for m in modules:
        for node in ast.walk(m.tree):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
                names.add(node.name)
            elif isinstance(node, ast.Attribute) and isinstance(node.ctx, ast.Store):
                names.add(node.attr)
            elif isinstance(node, ast.Name) and isinstance(node.ctx, ast.Store):
                names.add(node.id)
    return names


def megatron_private(modules: List[Module]):
    """[(file:function, line, expression)] using a private member of a megatron object.

    Private: a single leading underscore, not defined anywhere in pap. Megatron's: reached
    from a name imported from megatron, or from a local object (not `self`, not a module
    imported from elsewhere, e.g. torch)."""
    ours = _defined_names(modules)
    out = []
    for m in modules:
        roots = _import_roots(m)
        for node in ast.walk(m.tree):
            if isinstance(node, ast.ImportFrom) and (node.module or "").startswith("megatron"):
                for alias in node.names:
                    if alias.name.startswith("_") and not alias.name.startswith("__"):
                        out.append((m.where(node), node.lineno, f"from {node.module} import {alias.name}"))
            if not isinstance(node, ast.Attribute):
                continue
            name = node.attr
            if not name.startswith("_") or name.startswith("__") or name in ours:
                continue
            root = _root_name(node.value)
            if root in ("self", "cls"):
                continue
            origin = roots.get(root or "")
            if origin is not None and not origin.startswith("megatron"):
                continue
            out.append((m.where(node), node.lineno, ast.unparse(node)))
    return sorted(set(out))


def trainer_functions(modules: List[Module]):
    """[(file:function, how)] in pap/sharding/ and pap/pruning/ taking or using a trainer."""
    out = []
    for m in modules:
        if not m.rel.startswith(("pap/sharding/", "pap/pruning/")):
            continue
        for function in _functions(m.tree):
            args = function.args
            params = {a.arg for a in args.posonlyargs + args.args + args.kwonlyargs}
            uses = set()
            for node in _own_nodes(function):
                if isinstance(node, ast.Attribute):
                    if isinstance(node.value, ast.Name) and node.value.id == "trainer":
                        uses.add("trainer.")
                    elif isinstance(node.value, ast.Attribute) and node.value.attr == "trainer" \
                            and isinstance(node.value.value, ast.Name) and node.value.value.id == "self":
                        uses.add("self.trainer.")
            how = (["parameter `trainer`"] if "trainer" in params else []) + [f"uses `{u}`" for u in sorted(uses)]
            if how:
                out.append((m.where(function.body[0]), ", ".join(how)))
    return out


def remove_from_arch_calls(modules: List[Module]) -> Counter:
    calls = Counter()
    for m in modules:
        for node in ast.walk(m.tree):
            if isinstance(node, ast.Call):
                func = node.func
                name = func.id if isinstance(func, ast.Name) else func.attr if isinstance(func, ast.Attribute) else None
                if name == "remove_from_arch":
                    calls[m.rel] += 1
    return calls


# ---- report -----------------------------------------------------------------------------------

def report(root: Path) -> str:
    modules = load(root)
    out: List[str] = []
    say = out.append
    total = sum(len(m.lines) for m in modules)
    say(f"pap/ at {root}: {len(modules)} files, {total} lines")

    files, classes = largest(modules)
    say("\n10 largest files (lines)")
    say("\n".join(f"  {n:5d}  {rel}" for n, rel in files))
    say("\n10 largest classes (lines)")
    say("\n".join(f"  {n:5d}  {name}" for n, name in classes))

    deferred = deferred_imports(root, modules)
    commented = sum(1 for *_, c in deferred if c)
    say(f"\npap imports inside function bodies: {len(deferred)} ({commented} with a comment on the line or just above)")
    by_file = Counter(where.split(":")[0] for where, _, _ in deferred)
    say("  " + ", ".join(f"{rel} {n}" for rel, n in by_file.most_common()))

    upward, unlayered = upward_imports(root, modules)
    say(f"\nupward imports (lower layer -> higher layer): {len(upward)}")
    for importer, target, low, high, in_function in upward:
        say(f"  {importer} -> {target}  (L{low} -> L{high}{', in a function' if in_function else ''})")
    if unlayered:
        say("  not in LAYERS (not checked): " + ", ".join(unlayered))

    writes = state_writes(modules)
    places = sorted({where for where, _, _ in writes})
    say(f"\ncode locations writing fp32 masters / Adam moments / Adam step (heuristic): "
        f"{len(places)} functions, {len(writes)} sites")
    grouped = defaultdict(list)
    for where, line, what in writes:
        grouped[where].append(f"{line}: {what}")
    for where in places:
        say(f"  {where}  [{'; '.join(grouped[where])}]")

    private = megatron_private(modules)
    say(f"\nmegatron private members used: {len(private)}")
    for where, line, expr in private:
        say(f"  {where}:{line}  {expr}")

    trainers = trainer_functions(modules)
    say(f"\nfunctions in pap/sharding/ and pap/pruning/ taking or using a trainer: {len(trainers)}")
    for where, how in trainers:
        say(f"  {where}  ({how})")

    calls = remove_from_arch_calls(modules)
    say(f"\nremove_from_arch calls: {sum(calls.values())}")
    for rel, n in sorted(calls.items()):
        say(f"  {n:3d}  {rel}")
    return "\n".join(out)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--root", type=Path, default=Path(__file__).resolve().parent.parent,
                        help="checkout whose pap/ to read (default: the one holding this script)")
    args = parser.parse_args()
    print(report(args.root.resolve()))


if __name__ == "__main__":
    main()
