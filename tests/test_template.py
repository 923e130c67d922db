"""The PTX template preprocessor: substitution, for/if blocks, includes, and its errors."""
from __future__ import annotations

import pytest

from weave_nvshmem.ptx.template import TemplateError, render


def lines(text, params=None, **kw):
    return render(text, params or {}, **kw).splitlines()


def test_substitution_and_plain_lines():
    out = lines("a ${X} b ${X * 2 + 1}\nno directive here\n${'%d' % Y}_${len('abc')}", {"X": 3, "Y": 7})
    assert out == ["a 3 b 7", "no directive here", "7_3"]


def test_output_ends_with_one_newline():
    assert render("x", {}) == "x\n"
    assert render("x\ny", {}) == "x\ny\n"


def test_params_not_mutated():
    params = {"N": 2}
    render("//@for i in range(N)\n${i}\n//@endfor", params)
    assert params == {"N": 2}


def test_for_loop():
    assert lines("//@for i in range(3)\nv${i}\n//@endfor") == ["v0", "v1", "v2"]
    assert lines("//@for s in ('a', 'b')\n${s}${s}\n//@endfor") == ["aa", "bb"]
    assert lines("pre\n//@for i in range(0)\nnever\n//@endfor\npost") == ["pre", "post"]


def test_nested_for_loops_see_outer_variables():
    text = "//@for i in range(2)\n//@for j in range(i + 1)\n${i}${j}\n//@endfor\n//@endfor"
    assert lines(text) == ["00", "10", "11"]


def test_directives_may_be_indented():
    assert lines("  //@for i in range(2)\nx${i}\n\t//@endfor") == ["x0", "x1"]


@pytest.mark.parametrize("w,expected", [(1, ["one"]), (2, ["two"]), (3, ["many"]), (9, ["many"])])
def test_if_elif_else(w, expected):
    text = "//@if W == 1\none\n//@elif W == 2\ntwo\n//@else\nmany\n//@endif"
    assert lines(text, {"W": w}) == expected


def test_if_without_else_drops_everything_when_false():
    assert lines("a\n//@if 0\nb\n//@endif\nc") == ["a", "c"]


def test_elif_chain_takes_first_true_branch():
    text = "//@if X > 5\nbig\n//@elif X > 1\nmid\n//@elif X > 0\nsmall\n//@endif"
    assert lines(text, {"X": 9}) == ["big"]
    assert lines(text, {"X": 3}) == ["mid"]
    assert lines(text, {"X": 1}) == ["small"]
    assert render(text, {"X": 0}) == "\n"  # nothing kept


def test_nested_if_inside_if_and_for():
    text = "\n".join([
        "//@for i in range(4)",
        "//@if i % 2 == 0",
        "//@if i == 0",
        "zero",
        "//@else",
        "even${i}",
        "//@endif",
        "//@elif i == 1",
        "one",
        "//@else",
        "odd${i}",
        "//@endif",
        "//@endfor",
    ])
    assert lines(text) == ["zero", "one", "even2", "odd3"]


def test_for_inside_if_branch():
    text = "//@if FLAG\n//@for i in range(2)\nf${i}\n//@endfor\n//@else\nnone\n//@endif"
    assert lines(text, {"FLAG": True}) == ["f0", "f1"]
    assert lines(text, {"FLAG": False}) == ["none"]


def test_include_with_overrides(tmp_path):
    (tmp_path / "part.ptxinc").write_text("// part ${S} ${N} ${W}\n//@for k in range(N)\n${S}${k}\n//@endfor\n")
    text = "begin\n//@include part.ptxinc S=\"%r\" N=W+1\n//@include part.ptxinc S='%v'+str(W) N=1\nend"
    assert lines(text, {"W": 1}, directory=tmp_path) == [
        "begin", "// part %r 2 1", "%r0", "%r1", "// part %v1 1 1", "%v10", "end"]


def test_include_expressions_may_hold_spaces(tmp_path):
    """An include argument runs to the next ``key=``: conditional expressions, ``==`` inside."""
    (tmp_path / "p.ptxinc").write_text("${S}|${N}\n")
    text = '//@include p.ptxinc S=("%r" if OCC else "%wt")+str(1) N=2 if OCC == 1 else 3'
    assert lines(text, {"OCC": 1}, directory=tmp_path) == ["%r1|2"]
    assert lines(text, {"OCC": 0}, directory=tmp_path) == ["%wt1|3"]
    with pytest.raises(TemplateError, match="key=EXPR"):
        render("//@include p.ptxinc stray S=1", {}, directory=tmp_path)


def test_include_overrides_do_not_leak(tmp_path):
    (tmp_path / "p.ptxinc").write_text("${X}\n")
    assert lines("//@include p.ptxinc X=5\n${X}", {"X": 1}, directory=tmp_path) == ["5", "1"]


def test_nested_include(tmp_path):
    (tmp_path / "outer.ptxinc").write_text("o${A}\n//@include inner.ptxinc B=A*10\n")
    (tmp_path / "inner.ptxinc").write_text("i${A}-${B}\n")
    assert lines("//@for A in (1, 2)\n//@include outer.ptxinc\n//@endfor", directory=tmp_path) == [
        "o1", "i1-10", "o2", "i2-20"]


def test_default_binds_only_unbound_names(tmp_path):
    """A fragment's ``//@default`` is its usual value; an includer's binding (or an argument) wins."""
    (tmp_path / "p.ptxinc").write_text("//@default S = 'global'\nld.${S}\n")
    text = "//@include p.ptxinc\n//@include p.ptxinc S='shared'\n//@set S = 'const'\n//@include p.ptxinc"
    assert lines(text, directory=tmp_path) == ["ld.global", "ld.shared", "ld.const"]
    with pytest.raises(TemplateError, match="default needs NAME"):
        render("//@default 3", {})


def test_include_needs_a_directory():
    with pytest.raises(TemplateError, match="include"):
        render("//@include x.ptxinc", {})


@pytest.mark.parametrize("text", [
    "//@for i in range(2)\nx",
    "//@for i in range(2)\n//@for j in range(2)\nx\n//@endfor",
    "//@if 1\nx",
    "//@if 1\nx\n//@else\ny",
    "//@if 1\n//@if 0\nx\n//@endif",
])
def test_unclosed_blocks(text):
    with pytest.raises(TemplateError, match="not closed"):
        render(text, {})


@pytest.mark.parametrize("text", ["//@endfor", "//@endif", "x\n//@else", "//@elif 1", "//@bogus 3"])
def test_stray_or_unknown_directives(text):
    with pytest.raises(TemplateError, match="directive"):
        render(text, {})


@pytest.mark.parametrize("text", [
    "${UNDEFINED}",
    "${1 +}",
    "${1 / 0}",
    "//@for i in NOPE\nx\n//@endfor",
    "//@if missing\nx\n//@endif",
    "//@if 0\nx\n//@elif 1 +\ny\n//@endif",
    "${__import__('os')}",
])
def test_bad_expressions(text):
    with pytest.raises(TemplateError, match="cannot evaluate"):
        render(text, {})


def test_error_names_the_template_and_line():
    with pytest.raises(TemplateError, match=r"k\.ptx:3:"):
        render("a\nb\n${oops}", {}, name="k.ptx")


def test_template_error_is_a_value_error():
    assert issubclass(TemplateError, ValueError)
