"""A tiny preprocessor for the PTX templates (dtype, world size, unroll factors).

PTX has no macros worth using, so kernel files carry a few directives on comment lines:

- ``${expr}`` is replaced by ``str(eval(expr, params))``;
- ``//@for NAME in EXPR`` ... ``//@endfor`` repeats its lines once per value;
- ``//@if EXPR`` / ``//@elif EXPR`` / ``//@else`` / ``//@endif`` keeps one branch;
- ``//@include FILE key=EXPR ...`` inserts another template (``*.ptxinc``) rendered with
  the current parameters plus the given ones (an EXPR runs to the next `` key=``, so it may hold
  spaces: ``S=("%r" if OCC else "%w")+str(k)``);
- ``//@set NAME = EXPR`` binds NAME for the rest of the enclosing block (a ``for`` body, say);
  ``//@default NAME = EXPR`` does the same unless NAME is bound already (a fragment's parameter
  that most includers leave at its usual value).

Templates are our own files, so ``eval`` over the parameter dict is acceptable here.
"""
from __future__ import annotations

import re
from functools import lru_cache
from pathlib import Path

_SUBST = re.compile(r"\$\{([^}]*)\}")
_DIRECTIVE = re.compile(r"^\s*//@(\w+)\s*(.*?)\s*$")
#: one ``key=EXPR`` of an include: EXPR ends where whitespace, a name and a single ``=`` follow
_INCLUDE_ARG = re.compile(r"(\w+)=(?!=)(.*?)(?=\s+\w+=(?!=)|$)")


class TemplateError(ValueError):
    """A template is malformed (unbalanced directive, bad expression)."""


_BUILTINS = {"__builtins__": {"range": range, "len": len, "min": min, "max": max, "str": str, "int": int}}


@lru_cache(maxsize=None)
def _compiled(expr: str):
    """``expr`` compiled once (the same expressions recur on every line, variant and loop pass)."""
    return compile(expr.strip(), "<template expression>", "eval")


def _eval(expr: str, params: dict, where: str):
    try:
        return eval(_compiled(expr), _BUILTINS, params)
    except Exception as exc:  # noqa: BLE001 - re-raised with context
        raise TemplateError(f"{where}: cannot evaluate {expr!r}: {exc}") from exc


def render(text: str, params: dict, *, directory: Path | None = None, name: str = "<template>") -> str:
    """Render template ``text`` with ``params``; ``directory`` resolves ``//@include``."""
    lines = text.splitlines()
    out: list[str] = []
    pos = _render_block(lines, 0, dict(params), out, directory, name, stop=())
    if pos != len(lines):
        raise TemplateError(f"{name}:{pos + 1}: unexpected //@{_DIRECTIVE.match(lines[pos]).group(1)}")
    return "\n".join(out) + "\n"


def _find_block_end(lines, start, name, openers, closers):
    """Index of the directive closing the block opened just before ``start``."""
    depth = 0
    for i in range(start, len(lines)):
        m = _DIRECTIVE.match(lines[i])
        if not m:
            continue
        word = m.group(1)
        if word in openers:
            depth += 1
        elif word in closers:
            if depth == 0:
                return i
            if word.startswith("end"):
                depth -= 1
    raise TemplateError(f"{name}:{start}: block not closed")


def _render_block(lines, pos, params, out, directory, name, stop):
    while pos < len(lines):
        line = lines[pos]
        m = _DIRECTIVE.match(line)
        if not m:
            out.append(_SUBST.sub(lambda g: str(_eval(g.group(1), params, f"{name}:{pos + 1}")), line))
            pos += 1
            continue
        word, arg = m.group(1), m.group(2)
        where = f"{name}:{pos + 1}"
        if word in stop:
            return pos
        if word == "for":
            var, _, expr = arg.partition(" in ")
            end = _find_block_end(lines, pos + 1, name, ("for",), ("endfor",))
            body = lines[pos + 1:end]
            for value in _eval(expr, params, where):
                inner = dict(params, **{var.strip(): value})
                _render_block(body, 0, inner, out, directory, name, stop=())
            pos = end + 1
        elif word == "if":
            branches = []  # (condition or None, body lines)
            cond, start = arg, pos + 1
            i = start
            depth = 0
            while True:
                if i >= len(lines):
                    raise TemplateError(f"{where}: //@if not closed")
                mm = _DIRECTIVE.match(lines[i])
                w = mm.group(1) if mm else None
                if w == "if":
                    depth += 1
                elif w == "endif" and depth > 0:
                    depth -= 1
                elif depth == 0 and w in ("elif", "else", "endif"):
                    branches.append((cond, lines[start:i]))
                    if w == "endif":
                        break
                    cond, start = (mm.group(2) if w == "elif" else None), i + 1
                i += 1
            for c, body in branches:
                if c is None or _eval(c, params, where):
                    _render_block(body, 0, params, out, directory, name, stop=())
                    break
            pos = i + 1
        elif word in ("set", "default"):
            var, eq, expr = arg.partition("=")
            if not eq or not var.strip().isidentifier():
                raise TemplateError(f"{where}: //@{word} needs NAME = EXPR")
            if word == "set" or var.strip() not in params:
                params[var.strip()] = _eval(expr, params, where)
            pos += 1
        elif word == "include":
            file, rest = (arg.split(None, 1) + ["", ""])[:2]
            if not file or directory is None:
                raise TemplateError(f"{where}: //@include needs a file and a template directory")
            if rest and not _INCLUDE_ARG.match(rest):
                raise TemplateError(f"{where}: //@include arguments must be key=EXPR (got {rest!r})")
            inner = dict(params)
            for k, v in _INCLUDE_ARG.findall(rest):
                inner[k] = _eval(v, params, where)
            _render_block((directory / file).read_text().splitlines(), 0, inner, out, directory, file, stop=())
            pos += 1
        else:
            raise TemplateError(f"{where}: unknown or misplaced directive //@{word}")
    return pos
