"""A safe arithmetic evaluator for the equations problem sets ship (no `eval`).

Only numbers, `+ - * / **`, unary signs and parentheses are read (Python's `ast`, then a walk
that refuses every other node); values are exact fractions, so `0.1 + 0.2` is `3/10`, and a
power is refused when its exponent is not a small integer (no `9**9**9`). GSM8K writes
`x` and `÷` for times and divide in a few annotations: both are read.

    evaluate("48/2")            -> Fraction(24, 1)
    evaluate("(12.5 - 2) * 3")  -> Fraction(63, 2)
    evaluate("__import__('os')") raises ArithmeticError
"""

from __future__ import annotations

import ast
import operator
from collections.abc import Callable, Mapping
from decimal import Decimal
from fractions import Fraction

_BINARY: dict[type[ast.operator], Callable[[Fraction, Fraction], Fraction]] = {
    ast.Add: operator.add,
    ast.Sub: operator.sub,
    ast.Mult: operator.mul,
    ast.Div: operator.truediv,
}
MAX_EXPONENT = 64
MAX_TEXT = 500


class EquationError(ArithmeticError):
    """The text is not plain arithmetic, or its value is undefined (x / 0)."""


def parse(text: str) -> ast.expr:
    """The expression tree of `text`, refused unless it is plain arithmetic."""
    if len(text) > MAX_TEXT:
        raise EquationError("expression too long")
    text = text.replace("×", "*").replace("÷", "/").replace("x", "*").replace("X", "*")
    try:
        tree = ast.parse(text.strip(), mode="eval").body
    except SyntaxError as exc:
        raise EquationError(f"not arithmetic: {text!r}") from exc
    for node in ast.walk(tree):
        allowed = (ast.BinOp, ast.UnaryOp, ast.Constant, ast.Name, ast.USub, ast.UAdd,
                   ast.Pow, *_BINARY)
        if not isinstance(node, allowed):
            raise EquationError(f"{type(node).__name__} is not arithmetic: {text!r}")
        if isinstance(node, ast.Constant) and (
            isinstance(node.value, bool) or not isinstance(node.value, int | float)
        ):
            raise EquationError(f"{node.value!r} is not a number: {text!r}")
    return tree


def value_of(node: ast.expr, names: Mapping[str, Fraction] | None = None) -> Fraction:
    """The exact value of a tree from `parse`; `names` gives the value of each variable."""
    if isinstance(node, ast.Constant):
        # repr, not the float itself: 0.1 is the decimal 0.1, not its binary neighbour
        return Fraction(Decimal(repr(node.value)))
    if isinstance(node, ast.Name):
        if names is None or node.id not in names:
            raise EquationError(f"unknown name {node.id!r}")
        return names[node.id]
    if isinstance(node, ast.UnaryOp):
        inner = value_of(node.operand, names)
        return -inner if isinstance(node.op, ast.USub) else inner
    if isinstance(node, ast.BinOp):
        left, right = value_of(node.left, names), value_of(node.right, names)
        if isinstance(node.op, ast.Pow):
            if right.denominator != 1 or abs(right) > MAX_EXPONENT:
                raise EquationError(f"exponent {right} is not a small integer")
            if left == 0 and right < 0:
                raise EquationError("zero to a negative power")
            return left ** int(right)
        if isinstance(node.op, ast.Div) and right == 0:
            raise EquationError("division by zero")
        return _BINARY[type(node.op)](left, right)
    raise EquationError(f"{type(node).__name__} is not arithmetic")


def evaluate(text: str) -> Fraction:
    """The exact value of an arithmetic expression (see the module docstring)."""
    return value_of(parse(text))
