"""tinybig's `string_to_function` without `sympy.sympify`: formulas parsed with `ast`, in a
fixed grammar, so that a formula string never runs code."""

from __future__ import annotations

import ast
import operator
from collections.abc import Callable
from typing import Any

import numpy as np

__all__ = ["parse_formula"]

_BINARY = {
    ast.Add: operator.add,
    ast.Sub: operator.sub,
    ast.Mult: operator.mul,
    ast.Div: operator.truediv,
    ast.Pow: operator.pow,
}
_FUNCTIONS = {
    name: getattr(np, name) for name in ("exp", "log", "sqrt", "sin", "cos", "tan", "tanh", "abs")
}


def parse_formula(formula: object, variable: object) -> Callable[[Any], Any]:
    """A formula in one variable as a function, parsed and never evaluated as code.

    Numbers, the variable, `+ - * / **`, parentheses and the functions
    `exp log sqrt sin cos tan tanh abs` (numpy's); tinybig's `string_to_function`.

    Raises:
        TypeError: formula or variable is not a str.
        ValueError: the formula uses anything else.

    Example:
        >>> parse_formula("2*x**2 + 1", "x")(3.0)
        19.0
    """
    if not isinstance(formula, str) or not isinstance(variable, str):
        raise TypeError("formula and variable must be str")
    try:
        tree = ast.parse(formula, mode="eval").body
    except SyntaxError as error:
        raise ValueError(f"formula {formula!r} is not a formula: {error.msg}") from None

    def evaluate(node: ast.AST, value: Any) -> Any:
        if isinstance(node, ast.Constant) and isinstance(node.value, (int, float)):
            return node.value
        if isinstance(node, ast.Name) and node.id == variable:
            return value
        if isinstance(node, ast.BinOp) and type(node.op) in _BINARY:
            return _BINARY[type(node.op)](evaluate(node.left, value), evaluate(node.right, value))
        if isinstance(node, ast.UnaryOp) and isinstance(node.op, (ast.USub, ast.UAdd)):
            operand = evaluate(node.operand, value)
            return -operand if isinstance(node.op, ast.USub) else operand
        if (
            isinstance(node, ast.Call)
            and isinstance(node.func, ast.Name)
            and node.func.id in _FUNCTIONS
            and len(node.args) == 1
            and not node.keywords
        ):
            return _FUNCTIONS[node.func.id](evaluate(node.args[0], value))
        raise ValueError(
            f"formula {formula!r} may use only numbers, {variable!r}, + - * / **, and "
            f"{sorted(_FUNCTIONS)}; got {ast.unparse(node)!r}"
        )

    with np.errstate(all="ignore"):  # refuse a bad formula now, not at the first call
        evaluate(tree, np.float64(1.0))
    return lambda value: evaluate(tree, value)
