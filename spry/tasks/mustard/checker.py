"""MUSTARD's checker: a statement is kept only when a decision procedure proves it.

MUSTARD keeps a generated problem only if a prover validates its formal solution.
Lean validates when `lean` is on PATH and the statement is written in Lean;
otherwise the statement is written in the small language of `statements` and one of
these decides it, by its class:

- closed (arithmetic, gcd, lcm, mod, primality, divisibility, factorial; no
  variables): evaluated exactly with sympy integers and rationals;
- identity: `expand(lhs - rhs) == 0` for polynomials, `cancel(together(...)) == 0`
  for rational functions; a small integer point where the sides differ is the
  counterexample;
- solution-set: sympy `solveset` over the stated domain equals the claimed set
  (a missing or an extra solution is named);
- quantified (linear and nonlinear integer / real arithmetic): z3 proves the
  statement by showing its negation unsat; a `forall` is refuted by a model of the
  negated body (the counterexample), an `exists` shown by a model of the body (the
  witness). Rational models are re-checked exactly with sympy, and a disagreement
  is "unknown". Small integer points are tried first (exactly, with sympy): z3
  may give up on nonlinear integer arithmetic that one point settles.

Every verdict carries a reason: `accepted`, `parse-error`, `false` (with a
counterexample where the solver gives one), `unknown` (z3 says unknown, a timeout,
a value sympy cannot decide) or `unsupported` (outside what the checker decides).
Only `accepted` keeps an item: unknown is a rejection, never an acceptance.
"""

from __future__ import annotations

import math
import shutil
import subprocess
import tempfile
from collections.abc import Mapping
from dataclasses import dataclass, field
from fractions import Fraction
from pathlib import Path
from typing import Any

import sympy

from .statements import (
    FACTORIAL,
    GCD,
    LCM,
    Identity,
    Implies,
    Junction,
    LeanSource,
    Not,
    Predicate,
    Quantified,
    Relation,
    SolutionSet,
    Statement,
    StatementError,
    parse_statement,
    statement_class,
)

REASONS: tuple[str, ...] = (
    "accepted",
    "parse-error",
    "false",
    "unknown",
    "unsupported",
)
MAX_FACTORIAL = 300
MAX_TERMS = 20_000  # an identity whose expansion may have more terms: unsupported
MAX_SOLVE_DEGREE = 4  # solution sets of polynomials up to quartics
MAX_BITS = 100_000  # a closed power larger than this is not evaluated
LEAN_TIMEOUT_S = 60.0


@dataclass(frozen=True)
class Verdict:
    """What the checker decided about one statement, and why."""

    reason: str  # one of REASONS
    statement_class: str = ""  # closed, identity, solution-set, quantified, lean
    detail: str = ""
    counterexample: Mapping[str, str] = field(default_factory=dict)

    @property
    def accepted(self) -> bool:
        return self.reason == "accepted"


class Unsupported(Exception):
    """The statement uses something the backend does not decide."""


class Undecided(Exception):
    """The backend cannot tell (e.g. sympy cannot decide a sign)."""


# -- closed values (sympy, exact) ----------------------------------------------------


def _integer(value: sympy.Expr, what: str) -> int:
    if not (value.is_Integer):
        raise Unsupported(f"{what} needs integers, got {value}")
    return int(value)


def value_of(expr: sympy.Expr) -> sympy.Expr:
    """The exact value of a closed term; gcd/lcm/factorial evaluated with bounds."""
    if expr.free_symbols:
        raise Unsupported(f"free variables {sorted(map(str, expr.free_symbols))}")
    if isinstance(expr, sympy.Pow) and expr.exp.is_Integer:
        base = value_of(expr.base)
        if base == 0 and expr.exp < 0:
            raise ZeroDivisionError("division by zero")
        if base.is_Rational:
            bits = max(abs(base.p), abs(base.q)).bit_length() * abs(int(expr.exp))
            if bits > MAX_BITS:
                raise Unsupported(f"a power of more than {MAX_BITS} bits")
        return sympy.Pow(base, expr.exp)
    if expr.is_Atom:
        return expr
    args = [value_of(a) for a in expr.args]
    func = expr.func
    if func == GCD or func == LCM:
        values = [_integer(a, str(func)) for a in args]
        if len(values) < 2:
            raise Unsupported(f"{func} takes two or more arguments")
        reduce = sympy.igcd if func == GCD else sympy.ilcm
        return sympy.Integer(reduce(*values))
    if func == FACTORIAL:
        (n,) = (_integer(a, "factorial") for a in args)
        if not 0 <= n <= MAX_FACTORIAL:
            raise Unsupported(f"factorial of {n} (0..{MAX_FACTORIAL} only)")
        return sympy.factorial(sympy.Integer(n))
    if func == sympy.Mod and args[1] == 0:
        raise ZeroDivisionError("modulo zero")
    value = func(*args)
    if value.has(sympy.zoo, sympy.nan, sympy.oo, -sympy.oo):
        raise ZeroDivisionError("undefined value")
    return value


def _compare(op: str, left: sympy.Expr, right: sympy.Expr) -> bool:
    if left.is_Rational and right.is_Rational:  # the common case: exact, at once
        difference = left - right
    else:
        difference = sympy.simplify(left - right)
    if op in ("=", "!="):
        zero = difference.is_zero
        if zero is None:
            raise Undecided(f"cannot decide whether {left} = {right}")
        return zero if op == "=" else not zero
    if not difference.is_real:
        raise Undecided(f"{left} and {right} are not both real")
    sign = {"<": difference.is_negative, ">": difference.is_positive}.get(op)
    if op == "<=":
        sign = difference.is_nonpositive
    elif op == ">=":
        sign = difference.is_nonnegative
    if sign is None:
        raise Undecided(f"cannot decide {left} {op} {right}")
    return bool(sign)


def closed_truth(formula: Any, bindings: Mapping[str, Any] | None = None) -> bool:
    """The truth of a quantifier-free formula under `bindings` (exact)."""
    subs = {sympy.Symbol(k): v for k, v in (bindings or {}).items()}

    def term(expr: sympy.Expr) -> sympy.Expr:
        return value_of(expr.xreplace(subs) if subs else expr)

    if isinstance(formula, Relation):
        values = [term(t) for t in formula.terms]
        return all(
            _compare(op, a, b)
            for op, a, b in zip(formula.ops, values, values[1:], strict=False)
        )
    if isinstance(formula, Predicate):
        args = [term(a) for a in formula.args]
        if formula.name == "prime":
            return bool(sympy.isprime(_integer(args[0], "prime")))
        a, b = (_integer(x, "divides") for x in args)
        return b == 0 if a == 0 else b % a == 0
    if isinstance(formula, Not):
        return not closed_truth(formula.body, bindings)
    if isinstance(formula, Junction):
        parts = [closed_truth(p, bindings) for p in formula.parts]
        return all(parts) if formula.op == "and" else any(parts)
    if isinstance(formula, Implies):
        return (not closed_truth(formula.left, bindings)) or closed_truth(
            formula.right, bindings
        )
    raise Unsupported("a quantifier inside a closed formula")


def _describe(formula: Any) -> str:
    """The values of a false closed relation's sides, for the verdict."""
    if isinstance(formula, Relation):
        values = []
        for t in formula.terms:
            try:
                values.append(f"{t} evaluates to {value_of(t)}")
            except (Unsupported, ZeroDivisionError):
                values.append(str(t))
        return "; ".join(values)
    return ""


# -- identities and solution sets (sympy) --------------------------------------------


def _counterpoint(
    difference: sympy.Expr, symbols: list[sympy.Symbol]
) -> dict[str, str] | None:
    """A small integer point where `difference` is defined and not zero."""
    points = [0, 1, -1, 2, -2, 3, 5, 7]
    for i in range(len(points) ** min(len(symbols), 2)):
        values = {}
        k = i
        for s in symbols:
            values[s] = points[k % len(points)]
            k //= len(points)
        value = difference.subs(values)
        if value.is_finite and value.is_zero is False:
            return {str(s): str(v) for s, v in values.items()}
    return None


def degree_bound(expr: sympy.Expr) -> int:
    """An upper bound of the total degree of `expr`, without expanding it.

    Denominators count with their degree too (what `together` multiplies out).
    """
    if expr.is_Symbol:
        return 1
    if not expr.free_symbols:
        return 0
    if isinstance(expr, sympy.Pow) and expr.exp.is_Integer:
        return degree_bound(expr.base) * abs(int(expr.exp))
    parts = [degree_bound(a) for a in expr.args]
    return sum(parts) if isinstance(expr, sympy.Add | sympy.Mul) else max(parts)


def _guard_size(difference: sympy.Expr, symbols: list[sympy.Symbol]) -> None:
    """Refuse what would take too long to expand (a proof we cannot afford)."""
    degree = degree_bound(difference)
    if math.comb(degree + len(symbols), max(len(symbols), 1)) > MAX_TERMS:
        raise Unsupported(f"too large to expand (degree up to {degree})")


def check_identity(statement: Identity) -> Verdict:
    for side in (statement.lhs, statement.rhs):
        if side.has(GCD, LCM, FACTORIAL, sympy.Mod, sympy.Abs):
            raise Unsupported("identity: only polynomial and rational functions")
    difference = statement.lhs - statement.rhs
    symbols = sorted(difference.free_symbols, key=str)
    _guard_size(difference, symbols)
    difference = difference.doit()
    if difference.is_polynomial(*symbols):
        zero = sympy.expand(difference) == 0
        how = "expand(lhs - rhs)"
    elif difference.is_rational_function(*symbols):
        zero = sympy.cancel(sympy.together(difference)) == 0
        how = "cancel(lhs - rhs)"
    else:
        raise Unsupported("identity: only polynomial and rational functions")
    if zero:
        return Verdict("accepted", "identity", f"{how} = 0")
    point = _counterpoint(difference, symbols)
    residue = sympy.expand(difference)
    return Verdict(
        "false", "identity", f"lhs - rhs = {residue}", counterexample=point or {}
    )


_SETS = {"Int": sympy.S.Integers, "Nat": sympy.S.Naturals0, "Real": sympy.S.Reals}


def check_solution_set(statement: SolutionSet) -> Verdict:
    x = sympy.Symbol(statement.variable)
    for side in (statement.lhs, statement.rhs):
        if side.has(GCD, LCM, FACTORIAL):
            raise Unsupported("solve: gcd, lcm and factorial are not solved for")
    equation = statement.lhs - statement.rhs
    _guard_size(equation, [x])
    equation = equation.doit()
    numerator, _ = sympy.fraction(sympy.together(equation))
    if not numerator.is_polynomial(x):
        raise Unsupported("solve: only polynomial and rational equations")
    if sympy.degree(numerator, x) > MAX_SOLVE_DEGREE:
        raise Unsupported(f"solve: degree above {MAX_SOLVE_DEGREE}")
    claimed = [value_of(c) for c in statement.claimed]
    solutions = sympy.solveset(equation, x, sympy.S.Reals)
    if statement.domain != "Real":
        solutions = solutions.intersect(_SETS[statement.domain])
    if isinstance(solutions, sympy.ConditionSet):
        raise Undecided(f"sympy cannot solve {equation} = 0")
    if not isinstance(solutions, sympy.FiniteSet | type(sympy.S.EmptySet)):
        return Verdict(
            "false",
            "solution-set",
            f"the solutions over {statement.domain} are {solutions}, not finite",
        )
    found = list(solutions)

    def same(a: sympy.Expr, b: sympy.Expr) -> bool:
        return sympy.simplify(a - b) == 0

    missing = [s for s in found if not any(same(s, c) for c in claimed)]
    extra = [c for c in claimed if not any(same(c, s) for s in found)]
    if not missing and not extra:
        return Verdict("accepted", "solution-set", f"solveset = {solutions}")
    example = {}
    if missing:
        example["missing"] = ", ".join(map(str, missing))
    if extra:
        example["not a solution"] = ", ".join(map(str, extra))
    return Verdict(
        "false",
        "solution-set",
        f"the solutions over {statement.domain} are {solutions}",
        counterexample=example,
    )


# -- quantified arithmetic (z3) ----------------------------------------------------


class _Z3:
    """sympy terms and the formula tree as z3 expressions over typed variables."""

    def __init__(self, variables: Mapping[str, str]) -> None:
        import z3

        self.z3 = z3
        self.types = dict(variables)
        self.vars = {
            name: (z3.Real(name) if kind == "Real" else z3.Int(name))
            for name, kind in variables.items()
        }

    def bind(self, variables: tuple[tuple[str, str], ...]) -> _Z3:
        inner = _Z3({**self.types, **dict(variables)})
        return inner

    def constant(self, expr: sympy.Expr) -> Any:
        value = value_of(expr)
        if not value.is_Rational:
            raise Unsupported(f"the irrational constant {value}")
        if value.is_Integer:
            return self.z3.IntVal(int(value))
        return self.z3.RealVal(f"{value.p}/{value.q}")

    def is_integer(self, expr: sympy.Expr) -> bool:
        return all(self.types[str(s)] != "Real" for s in expr.free_symbols)

    def term(self, expr: sympy.Expr) -> Any:
        z3 = self.z3
        if not expr.free_symbols:
            return self.constant(expr)
        if isinstance(expr, sympy.Symbol):
            if str(expr) not in self.vars:
                raise Unsupported(f"unbound variable {expr}")
            return self.vars[str(expr)]
        if isinstance(expr, sympy.Add):
            parts = [self.term(a) for a in expr.args]
            return z3.Sum(*parts) if len(parts) > 1 else parts[0]
        if isinstance(expr, sympy.Mul):
            parts = [self.term(a) for a in expr.args]
            return z3.Product(*parts) if len(parts) > 1 else parts[0]
        if isinstance(expr, sympy.Pow):
            if not expr.exp.is_Integer:
                raise Unsupported(f"a non-integer power of a variable: {expr}")
            if expr.exp < 0:
                raise Unsupported(f"a non-constant denominator: {expr}")
            base = self.term(expr.base)
            result = z3.IntVal(1) if self.is_integer(expr.base) else z3.RealVal(1)
            for _ in range(int(expr.exp)):
                result = result * base
            return result
        if isinstance(expr, sympy.Mod):
            modulus = expr.args[1]
            if (
                modulus.free_symbols
                or not (value_of(modulus).is_Integer)
                or (value_of(modulus) <= 0)
            ):
                raise Unsupported("mod needs a positive integer constant modulus")
            if not self.is_integer(expr.args[0]):
                raise Unsupported("mod of a real-valued term")
            return self.term(expr.args[0]) % self.constant(modulus)
        if isinstance(expr, sympy.Abs):
            inner = self.term(expr.args[0])
            return z3.If(inner >= 0, inner, -inner)
        raise Unsupported(f"{expr.func} of a variable")

    def formula(self, formula: Any) -> Any:
        z3 = self.z3
        if isinstance(formula, Relation):
            terms = [self.term(t) for t in formula.terms]
            comparisons = {
                "=": lambda a, b: a == b,
                "!=": lambda a, b: a != b,
                "<": lambda a, b: a < b,
                "<=": lambda a, b: a <= b,
                ">": lambda a, b: a > b,
                ">=": lambda a, b: a >= b,
            }
            parts = [
                comparisons[op](a, b)
                for op, a, b in zip(formula.ops, terms, terms[1:], strict=False)
            ]
            return z3.And(*parts) if len(parts) > 1 else parts[0]
        if isinstance(formula, Predicate):
            if formula.name == "prime" or formula.args[0].free_symbols:
                raise Unsupported(f"{formula.name} of a variable")
            divisor = value_of(formula.args[0])
            if not (divisor.is_Integer and divisor > 0):
                raise Unsupported("divides needs a positive integer constant divisor")
            if not self.is_integer(formula.args[1]):
                raise Unsupported("divides of a real-valued term")
            return self.term(formula.args[1]) % int(divisor) == 0
        if isinstance(formula, Not):
            return z3.Not(self.formula(formula.body))
        if isinstance(formula, Junction):
            parts = [self.formula(p) for p in formula.parts]
            return z3.And(*parts) if formula.op == "and" else z3.Or(*parts)
        if isinstance(formula, Implies):
            return z3.Implies(self.formula(formula.left), self.formula(formula.right))
        if isinstance(formula, Quantified):
            inner = self.bind(formula.variables)
            body = inner.formula(formula.body)
            bound = [inner.vars[name] for name, _ in formula.variables]
            naturals = [inner.vars[n] >= 0 for n, d in formula.variables if d == "Nat"]
            if formula.kind == "forall":
                guarded = z3.Implies(z3.And(*naturals), body) if naturals else body
                return z3.ForAll(bound, guarded)
            guarded = z3.And(*naturals, body) if naturals else body
            return z3.Exists(bound, guarded)
        raise Unsupported(f"{type(formula).__name__}")


def _model_values(model: Any, variables: Mapping[str, Any]) -> dict[str, Any]:
    """Exact values (Fraction, or the solver's text for algebraic numbers)."""
    values: dict[str, Any] = {}
    for name, var in variables.items():
        value = model.eval(var, model_completion=True)
        if hasattr(value, "as_fraction"):
            values[name] = value.as_fraction()
        elif hasattr(value, "as_long"):
            values[name] = Fraction(value.as_long())
        else:
            values[name] = str(value)
    return values


SEARCH_VALUES = (0, 1, -1, 2, -2, 3, -3, 4, 5, 6)
SEARCH_POINTS = 200


def _search(statement: Quantified) -> dict[str, str] | None:
    """A small-integer counterexample (forall) or witness (exists), checked exactly.

    z3 can give up on nonlinear integer arithmetic where a small value settles the
    question; a point found here is evaluated with sympy, so it is a proof.
    """
    if _has_quantifier(statement.body):
        return None
    names = [name for name, _ in statement.variables]
    domains = dict(statement.variables)
    wanted = statement.kind == "exists"
    for index in range(min(len(SEARCH_VALUES) ** len(names), SEARCH_POINTS)):
        point, k = {}, index
        for name in names:
            point[name] = sympy.Integer(SEARCH_VALUES[k % len(SEARCH_VALUES)])
            k //= len(SEARCH_VALUES)
        if any(domains[n] == "Nat" and v < 0 for n, v in point.items()):
            continue
        try:
            holds = closed_truth(statement.body, point)
        except (Unsupported, Undecided, ZeroDivisionError, TypeError, ValueError):
            continue
        if holds == wanted:
            return {n: str(v) for n, v in point.items()}
    return None


def check_quantified(statement: Quantified, timeout_ms: int) -> Verdict:
    import z3

    found = _search(statement)
    if found is not None:
        if statement.kind == "forall":
            return Verdict("false", "quantified", "a counterexample by search", found)
        return Verdict("accepted", "quantified", "a witness by search", found)
    outer = dict(statement.variables)
    translate = _Z3(outer)
    body = translate.formula(statement.body)
    naturals = [translate.vars[n] >= 0 for n, d in statement.variables if d == "Nat"]
    solver = z3.Solver()
    solver.set("timeout", int(timeout_ms))
    # forall: refute by a model of the negated body; exists: show a model of the body
    solver.add(*naturals)
    solver.add(z3.Not(body) if statement.kind == "forall" else body)
    answer = solver.check()
    if answer == z3.unknown:
        return Verdict(
            "unknown", "quantified", f"z3: unknown ({solver.reason_unknown()})"
        )
    if statement.kind == "forall" and answer == z3.unsat:
        return Verdict("accepted", "quantified", "z3: the negation is unsat")
    if statement.kind == "exists" and answer == z3.unsat:
        return Verdict("false", "quantified", "z3: no value satisfies the body")
    values = _model_values(solver.model(), translate.vars)
    shown = {k: str(v) for k, v in values.items()}
    quantifier_free = not _has_quantifier(statement.body)
    exact = all(isinstance(v, Fraction) for v in values.values())
    if quantifier_free and exact:  # re-check the model exactly, independently of z3
        bindings = {
            k: sympy.Rational(v.numerator, v.denominator) for k, v in values.items()
        }
        try:
            holds = closed_truth(statement.body, bindings)
        except (Unsupported, Undecided, ZeroDivisionError) as error:
            return Verdict("unknown", "quantified", f"re-check failed: {error}")
        if holds != (statement.kind == "exists"):
            return Verdict("unknown", "quantified", "z3's model fails sympy's re-check")
    if statement.kind == "forall":
        return Verdict(
            "false", "quantified", "z3: a counterexample", counterexample=shown
        )
    return Verdict("accepted", "quantified", "z3: a witness", counterexample=shown)


def _has_quantifier(formula: Any) -> bool:
    if isinstance(formula, Quantified):
        return True
    if isinstance(formula, Not):
        return _has_quantifier(formula.body)
    if isinstance(formula, Junction):
        return any(_has_quantifier(p) for p in formula.parts)
    if isinstance(formula, Implies):
        return _has_quantifier(formula.left) or _has_quantifier(formula.right)
    return False


# -- Lean ------------------------------------------------------------------------------


def check_lean(statement: LeanSource, timeout_s: float = LEAN_TIMEOUT_S) -> Verdict:
    """`lean FILE` on the statement and its proof; accepted if it compiles clean."""
    lean = shutil.which("lean")
    if lean is None:
        return Verdict("unsupported", "lean", "lean is not on PATH")
    if "sorry" in statement.text or "admit" in statement.text:
        return Verdict("false", "lean", "the proof uses sorry/admit")
    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / "Item.lean"
        path.write_text(statement.text + "\n")
        try:
            done = subprocess.run(
                [lean, str(path)], capture_output=True, text=True, timeout=timeout_s
            )
        except subprocess.TimeoutExpired:
            return Verdict("unknown", "lean", f"lean: timeout after {timeout_s} s")
    output = (done.stdout + done.stderr).strip()
    if done.returncode == 0 and "error" not in output:
        return Verdict("accepted", "lean", "lean: compiled without errors")
    return Verdict("unknown", "lean", f"lean did not check it: {output[:200]}")


# -- one entry point -------------------------------------------------------------------


def check_statement(statement: Statement, *, timeout_ms: int = 2000) -> Verdict:
    """The verdict on a parsed statement (never raises for bad content)."""
    kind = statement_class(statement)
    try:
        if isinstance(statement, LeanSource):
            return check_lean(statement)
        if isinstance(statement, Identity):
            return check_identity(statement)
        if isinstance(statement, SolutionSet):
            return check_solution_set(statement)
        if isinstance(statement, Quantified):
            return check_quantified(statement, timeout_ms)
        if _has_quantifier(statement):
            raise Unsupported("a quantifier must come first")
        truth = closed_truth(statement)
    except Unsupported as error:
        return Verdict("unsupported", kind, str(error))
    except Undecided as error:
        return Verdict("unknown", kind, str(error))
    except ZeroDivisionError as error:
        return Verdict("false", kind, f"undefined: {error}")
    except (TypeError, ValueError, AttributeError, RecursionError) as error:
        return Verdict("unknown", kind, f"{type(error).__name__}: {error}")
    if truth:
        return Verdict("accepted", kind, "exact evaluation")
    return Verdict("false", kind, _describe(statement))


def check(text: str, *, timeout_ms: int = 2000) -> Verdict:
    """Parse `text` and check it: the verdict, with a reason."""
    try:
        statement = parse_statement(text)
    except StatementError as error:
        return Verdict("parse-error", "", str(error))
    except RecursionError:
        return Verdict("parse-error", "", "nested too deeply")
    return check_statement(statement, timeout_ms=timeout_ms)
