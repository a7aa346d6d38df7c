"""The formal statement language MUSTARD's offline checker understands, and its parser.

A generated item ends with a formal statement; the checker (`checker`) decides it.
The language is small on purpose: every construct in it has a decision procedure
here (exact sympy arithmetic, sympy's `expand`/`solveset`, z3), so "accepted" means
proved, never "looked plausible". Grammar (ASCII; `∀ ∃ ∧ ∨ ¬ → ≤ ≥ ≠ ·` are read
as `forall exists and or not => <= >= != *`)::

    statement  ::= "identity" ":" term "=" term             (polynomial / rational)
                 | "solve" VAR "in" DOMAIN ":" term "=" term "->" set
                 | quantified
                 | formula                                  (closed: no free VAR)
                 | LEAN                                     (starts with theorem,
                                                              lemma or example)
    quantified ::= ("forall" | "exists") binders ":" (quantified | formula)
    binders    ::= VAR ("," VAR)* "in" DOMAIN ("," VAR ("," VAR)* "in" DOMAIN)*
    DOMAIN     ::= "Int" | "Nat" | "Real"                   (Nat: Int, >= 0)
    formula    ::= disjunct ("=>" formula)?                 (right associative)
    disjunct   ::= conjunct ("or" conjunct)*
    conjunct   ::= negation ("and" negation)*
    negation   ::= "not" negation | "(" formula ")" | atom
    atom       ::= term REL term (REL term)*                (chains: 0 < x < 5)
                 | "prime" "(" term ")" | "divides" "(" term "," term ")"
    REL        ::= "=" | "!=" | "<" | "<=" | ">" | ">="
    set        ::= "{" (term ("," term)*)? "}"
    term       ::= sympy's expression syntax over numbers, VAR, + - * / ^ **
                   % (mod), parentheses, implicit products (2x), and the
                   functions gcd lcm mod factorial abs sqrt
    VAR        ::= a letter, optionally followed by digits (x, n, a1)

Terms are parsed by sympy's parser (`parse_expr`, `evaluate=False`, decimals read
as exact rationals) after a whitelist of tokens has passed: only numbers of at most
`MAX_DIGITS` digits, the names above, operators and brackets reach it, and an
exponent must be a literal integer of at most `MAX_EXPONENT`, so no input can make
the parser or an evaluation run away. Anything else is a `StatementError` (the
checker's "parse error").
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Literal

import sympy
from sympy.parsing.sympy_parser import (
    convert_xor,
    implicit_multiplication,
    parse_expr,
    rationalize,
    standard_transformations,
)

Domain = Literal["Int", "Nat", "Real"]
DOMAINS: tuple[str, ...] = ("Int", "Nat", "Real")
RELATIONS: tuple[str, ...] = ("=", "!=", "<", "<=", ">", ">=")
PREDICATES: tuple[str, ...] = ("prime", "divides")
MAX_LENGTH = 400  # characters in one statement
MAX_DIGITS = 15  # digits in one number literal
MAX_EXPONENT = 64  # |exponent| of a power
LEAN_STARTS = ("theorem", "lemma", "example")

# Function names a term may use, and what sympy reads them as. gcd, lcm and
# factorial stay unevaluated symbols of their own (the checker evaluates them with
# bounds), so parsing never computes anything large.
GCD = sympy.Function("gcd")
LCM = sympy.Function("lcm")
FACTORIAL = sympy.Function("factorial")
FUNCTIONS: dict[str, object] = {
    "gcd": GCD,
    "lcm": LCM,
    "factorial": FACTORIAL,
    "mod": sympy.Mod,
    "abs": sympy.Abs,
    "sqrt": sympy.sqrt,
}
KEYWORDS = frozenset({"forall", "exists", "and", "or", "not", "in", "solve"})
# What sympy's generated code may name (evaluate=False builds these nodes).
_SYMPY_NAMES = ("Add", "Mul", "Pow", "Integer", "Rational", "Float", "Symbol", "Mod")
_TRANSFORMS = (
    *standard_transformations,
    implicit_multiplication,
    convert_xor,
    rationalize,
)
_VARIABLE = re.compile(r"[A-Za-z][0-9]*")
_UNICODE = {
    "∀": " forall ",
    "∃": " exists ",
    "∧": " and ",
    "∨": " or ",
    "¬": " not ",
    "→": " => ",
    "⇒": " => ",
    "≤": "<=",
    "≥": ">=",
    "≠": "!=",
    "·": "*",
    "×": "*",
    "−": "-",
    "∈": " in ",
    "ℤ": "Int",
    "ℕ": "Nat",
    "ℝ": "Real",
}
_TOKEN = re.compile(
    r"\s*(?:(?P<number>\d+(?:\.\d+)?)|(?P<name>[A-Za-z_][A-Za-z0-9_]*)"
    r"|(?P<op>=>|->|\*\*|<=|>=|!=|==|[-+*/^%(),:{}<>=])|(?P<bad>\S))"
)


class StatementError(ValueError):
    """The text is not a statement of the language (the checker's parse error)."""


# -- the syntax tree -------------------------------------------------------------------


@dataclass(frozen=True)
class Relation:
    """`terms[0] ops[0] terms[1] ops[1] ...`: every adjacent comparison holds."""

    ops: tuple[str, ...]
    terms: tuple[sympy.Expr, ...]


@dataclass(frozen=True)
class Predicate:
    """`prime(n)` or `divides(a, b)` (a divides b)."""

    name: str
    args: tuple[sympy.Expr, ...]


@dataclass(frozen=True)
class Not:
    """`not body`."""

    body: Formula


@dataclass(frozen=True)
class Junction:
    """`and` / `or` of two or more parts."""

    op: Literal["and", "or"]
    parts: tuple[Formula, ...]


@dataclass(frozen=True)
class Implies:
    """`left => right`."""

    left: Formula
    right: Formula


@dataclass(frozen=True)
class Quantified:
    """`forall`/`exists` over typed variables, of a body (maybe quantified)."""

    kind: Literal["forall", "exists"]
    variables: tuple[tuple[str, Domain], ...]
    body: Formula


Formula = Relation | Predicate | Not | Junction | Implies | Quantified


@dataclass(frozen=True)
class Identity:
    """`identity: lhs = rhs`, for every value of its variables."""

    lhs: sympy.Expr
    rhs: sympy.Expr


@dataclass(frozen=True)
class SolutionSet:
    """`solve x in D: lhs = rhs -> {a, b}`: the solutions in D are exactly these."""

    variable: str
    domain: Domain
    lhs: sympy.Expr
    rhs: sympy.Expr
    claimed: tuple[sympy.Expr, ...]


@dataclass(frozen=True)
class LeanSource:
    """A statement with its proof written in Lean 4 (checked by `lean`, if any)."""

    text: str


Statement = Formula | Identity | SolutionSet | LeanSource


def statement_class(statement: Statement) -> str:
    """The checker class: closed, identity, solution-set, quantified or lean."""
    if isinstance(statement, Identity):
        return "identity"
    if isinstance(statement, SolutionSet):
        return "solution-set"
    if isinstance(statement, LeanSource):
        return "lean"
    if isinstance(statement, Quantified):
        return "quantified"
    return "closed"


# -- tokens ------------------------------------------------------------------------


@dataclass(frozen=True)
class Token:
    """A whitelisted token: a number literal, a name or an operator."""

    kind: Literal["number", "name", "op"]
    text: str


def tokenize(text: str) -> list[Token]:
    """The whitelisted tokens of `text`; anything else is a `StatementError`."""
    for symbol, ascii_text in _UNICODE.items():
        text = text.replace(symbol, ascii_text)
    tokens: list[Token] = []
    position = 0
    text = text.rstrip()
    while position < len(text):
        match = _TOKEN.match(text, position)
        if match is None or match.end() == position:
            break
        position = match.end()
        if match["bad"]:
            raise StatementError(f"unexpected character {match['bad']!r}")
        if match["number"]:
            if len(match["number"].replace(".", "")) > MAX_DIGITS:
                raise StatementError(f"number longer than {MAX_DIGITS} digits")
            tokens.append(Token("number", match["number"]))
        elif match["name"]:
            tokens.append(Token("name", match["name"]))
        else:
            op = "=" if match["op"] == "==" else match["op"]
            tokens.append(Token("op", op))
    return tokens


def _check_exponents(tokens: list[Token]) -> None:
    """Every `^`/`**` is followed by a literal integer of at most MAX_EXPONENT."""
    for i, token in enumerate(tokens):
        if token.text not in ("^", "**"):
            continue
        rest = [t.text for t in tokens[i + 1 : i + 5]]
        if rest[:1] == ["("]:
            rest = rest[1:]
            if rest[:1] in (["-"], ["+"]):
                rest = rest[1:]
            closed = len(rest) >= 2 and rest[1] == ")"
        else:
            closed = True
        if not (rest and rest[0].isdigit() and closed):
            raise StatementError("an exponent must be a literal integer")
        if not rest[1:2] == [")"] and rest[1:2] in (["^"], ["**"]):
            raise StatementError("a tower of powers (write its exponent out)")
        if int(rest[0]) > MAX_EXPONENT:
            raise StatementError(f"exponent larger than {MAX_EXPONENT}")


# -- terms (sympy) -----------------------------------------------------------------


def parse_term(tokens: list[Token]) -> sympy.Expr:
    """One arithmetic term from its tokens, by sympy's parser (nothing evaluated)."""
    if not tokens:
        raise StatementError("a term is missing")
    local: dict[str, object] = {}
    for token in tokens:
        if token.kind != "name":
            if token.text in ("=>", "->", ":", "{", "}", *RELATIONS):
                raise StatementError(f"{token.text!r} inside a term")
            continue
        if token.text in FUNCTIONS:
            local[token.text] = FUNCTIONS[token.text]
        elif _VARIABLE.fullmatch(token.text) and token.text not in KEYWORDS:
            local[token.text] = sympy.Symbol(token.text)
        else:
            raise StatementError(f"unknown name {token.text!r}")
    _check_exponents(tokens)
    source = " ".join(t.text for t in tokens)
    names = {name: getattr(sympy, name) for name in _SYMPY_NAMES}
    try:
        expr = parse_expr(
            source,
            local_dict=local,
            global_dict=names,
            transformations=_TRANSFORMS,
            evaluate=False,
        )
    except (SyntaxError, TypeError, ValueError, AttributeError, NameError) as error:
        raise StatementError(f"cannot read term {source!r}: {error}") from None
    if not isinstance(expr, sympy.Expr):
        raise StatementError(f"{source!r} is not an arithmetic term")
    return expr


# -- the logical layer -------------------------------------------------------------


class _Parser:
    """Recursive descent over tokens; terms are maximal runs handed to sympy."""

    def __init__(self, tokens: list[Token]) -> None:
        self.tokens = tokens
        self.at = 0

    def peek(self, offset: int = 0) -> Token | None:
        i = self.at + offset
        return self.tokens[i] if i < len(self.tokens) else None

    def take(self, text: str | None = None) -> Token:
        token = self.peek()
        if token is None:
            raise StatementError(f"expected {text or 'more'} at the end")
        if text is not None and token.text != text:
            raise StatementError(f"expected {text!r}, got {token.text!r}")
        self.at += 1
        return token

    def done(self) -> bool:
        return self.at >= len(self.tokens)

    # statement kinds

    def statement(self) -> Statement:
        first = self.peek()
        if first is not None and first.text == "identity":
            self.take()
            self.take(":")
            lhs, rhs = self.equation()
            return Identity(lhs, rhs)
        if first is not None and first.text == "solve":
            return self.solution_set()
        formula = self.formula()
        return formula

    def equation(self) -> tuple[sympy.Expr, sympy.Expr]:
        lhs = self.term(stop={"="})
        self.take("=")
        rhs = self.term(stop={"->"})
        return lhs, rhs

    def solution_set(self) -> SolutionSet:
        self.take("solve")
        variable = self.take().text
        if not _VARIABLE.fullmatch(variable) or variable in FUNCTIONS:
            raise StatementError(f"bad variable {variable!r}")
        self.take("in")
        domain = self.domain()
        self.take(":")
        lhs, rhs = self.equation()
        self.take("->")
        self.take("{")
        claimed: list[sympy.Expr] = []
        while self.peek() is not None and self.peek().text != "}":  # type: ignore[union-attr]
            claimed.append(self.term(stop={",", "}"}))
            if self.peek() is not None and self.peek().text == ",":  # type: ignore[union-attr]
                self.take(",")
        self.take("}")
        free = {str(s) for e in (lhs, rhs) for s in e.free_symbols}
        if free - {variable}:
            raise StatementError(f"unbound variables {sorted(free - {variable})}")
        if any(c.free_symbols for c in claimed):
            raise StatementError("a claimed solution has a variable")
        return SolutionSet(variable, domain, lhs, rhs, tuple(claimed))

    def domain(self) -> Domain:
        name = self.take().text
        if name not in DOMAINS:
            raise StatementError(f"domain should be one of {DOMAINS}, got {name!r}")
        return name  # type: ignore[return-value]

    # formulas

    def formula(self) -> Formula:
        first = self.peek()
        if first is not None and first.text in ("forall", "exists"):
            return self.quantified()
        left = self.disjunct()
        if self.peek() is not None and self.peek().text == "=>":  # type: ignore[union-attr]
            self.take()
            return Implies(left, self.formula())
        return left

    def quantified(self) -> Quantified:
        kind = self.take().text
        variables: list[tuple[str, Domain]] = []
        while True:
            names = [self.take().text]
            while self.peek() is not None and self.peek().text == ",":  # type: ignore[union-attr]
                self.take(",")
                names.append(self.take().text)
            self.take("in")
            domain = self.domain()
            for name in names:
                if not _VARIABLE.fullmatch(name) or name in FUNCTIONS:
                    raise StatementError(f"bad variable {name!r}")
                variables.append((name, domain))
            if self.peek() is not None and self.peek().text == ",":  # type: ignore[union-attr]
                self.take(",")
                continue
            break
        self.take(":")
        return Quantified(kind, tuple(variables), self.formula())  # type: ignore[arg-type]

    def disjunct(self) -> Formula:
        parts = [self.conjunct()]
        while self.peek() is not None and self.peek().text == "or":  # type: ignore[union-attr]
            self.take()
            parts.append(self.conjunct())
        return parts[0] if len(parts) == 1 else Junction("or", tuple(parts))

    def conjunct(self) -> Formula:
        parts = [self.negation()]
        while self.peek() is not None and self.peek().text == "and":  # type: ignore[union-attr]
            self.take()
            parts.append(self.negation())
        return parts[0] if len(parts) == 1 else Junction("and", tuple(parts))

    def negation(self) -> Formula:
        token = self.peek()
        if token is None:
            raise StatementError("a formula is missing")
        if token.text == "not":
            self.take()
            return Not(self.negation())
        if token.text in ("forall", "exists"):
            return self.quantified()
        if token.text == "(" and self._group_is_formula():
            self.take("(")
            inner = self.formula()
            self.take(")")
            return inner
        return self.atom()

    def _group_is_formula(self) -> bool:
        """Whether the bracket here holds a formula (a relation or a connective)."""
        depth = 0
        for token in self.tokens[self.at :]:
            if token.text == "(":
                depth += 1
            elif token.text == ")":
                depth -= 1
                if depth == 0:
                    return False
            elif depth == 1 and (
                token.text in RELATIONS
                or token.text in ("and", "or", "not", "=>", "forall", "exists")
            ):
                return True
        return False

    def atom(self) -> Formula:
        token = self.peek()
        following = self.peek(1)
        if (
            token is not None
            and token.text in PREDICATES
            and following is not None
            and following.text == "("
        ):
            self.take()
            self.take("(")
            args = [self.term(stop={",", ")"})]
            while self.peek() is not None and self.peek().text == ",":  # type: ignore[union-attr]
                self.take(",")
                args.append(self.term(stop={",", ")"}))
            self.take(")")
            wanted = 1 if token.text == "prime" else 2
            if len(args) != wanted:
                raise StatementError(f"{token.text} takes {wanted} argument(s)")
            return Predicate(token.text, tuple(args))
        terms = [self.term(stop=set(RELATIONS))]
        ops: list[str] = []
        while self.peek() is not None and self.peek().text in RELATIONS:  # type: ignore[union-attr]
            ops.append(self.take().text)
            terms.append(self.term(stop=set(RELATIONS)))
        if not ops:
            raise StatementError("expected a comparison (=, <, ...) or a predicate")
        return Relation(tuple(ops), tuple(terms))

    def term(self, stop: set[str]) -> sympy.Expr:
        """The tokens up to a stop token, a connective or an unmatched bracket."""
        start, depth = self.at, 0
        ends = stop | {"and", "or", "=>", "->", ":", "}"}
        while not self.done():
            text = self.tokens[self.at].text
            if depth == 0 and (text in ends or text in RELATIONS):
                break
            if text == "(":
                depth += 1
            elif text == ")":
                if depth == 0:
                    break
                depth -= 1
            elif depth == 0 and text == "," and "," in stop:
                break
            self.at += 1
        return parse_term(self.tokens[start : self.at])


def parse_statement(text: str) -> Statement:
    """`text` as a statement of the language; a `StatementError` says why not."""
    text = text.strip().rstrip(".")
    if not text:
        raise StatementError("empty statement")
    if text.split(maxsplit=1)[0] in LEAN_STARTS:
        return LeanSource(text)
    if len(text) > MAX_LENGTH:
        raise StatementError(f"longer than {MAX_LENGTH} characters")
    parser = _Parser(tokenize(text))
    statement = parser.statement()
    if not parser.done():
        raise StatementError(f"unexpected {parser.peek().text!r}")  # type: ignore[union-attr]
    return statement
