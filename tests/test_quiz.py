"""The self-check questions at the end of every chapter (tools/quiz.py).

Without a browser: each numbered chapter ends, before its exercises, with 3-6
well-formed questions; the built page renders each of them as a form whose
numeric answer and quoted numbers are the values the build glued; the Colab
notebook carries the same questions with their answers folded away.

In a browser (slow; Debian's chromium through test_site's helpers, offline):
answering with the mouse reveals the chosen option's explanation and says in
words whether it was right; the keyboard alone (Tab, Space, arrows, Enter)
does the same; a numeric question accepts the glued value as the page rounds
it and rejects another number.
"""

from __future__ import annotations

import html
import json
import re
from pathlib import Path

import pytest

from tests.conftest import ROOT, glued_values
from tools import quiz
from tests.test_site import DESKTOP, Visit, browser, server  # noqa: F401 (fixtures)
from tools.notebooks import paired_path

CHAPTERS = sorted((ROOT / "book").glob("[0-9][0-9]_*.md"))


def chapter_id(source: Path) -> str:
    return source.stem


def quiz_body(source: Path) -> str:
    text = source.read_text(encoding="utf-8")
    match = re.search(r"^:::\{quiz\}\n(.*?)^:::\s*$", text, flags=re.M | re.S)
    assert match, f"{source.name}: no {{quiz}} directive"
    return match.group(1)


def formatted(values: dict[str, str], name: str, fmt: str) -> str:
    from myst_nb.core.variables import format_plain_text

    return format_plain_text(values[name], fmt or "")


def page_html(built_html: Path, source: Path) -> str:
    return (built_html / "book" / f"{source.stem}.html").read_text(encoding="utf-8")


def quiz_html(built_html: Path, source: Path) -> str:
    """The rendered quiz: from its container to the next section (Exercises) or the article's end."""
    text = page_html(built_html, source)
    start = text.index('<div class="tinyllm-quiz">')
    end = text.find('<section id="exercises"', start)
    return text[start:end if end != -1 else text.index("</article>", start)]


def visible_text(fragment: str) -> str:
    return html.unescape(re.sub(r"<[^>]+>", "", fragment))


# ------------------------------------------------------------------ the format

def test_the_toc_numbers_every_chapter_that_has_a_quiz():
    toc = (ROOT / "_toc.yml").read_text(encoding="utf-8")
    assert sorted(re.findall(r"file: book/(\d\d_\w+)", toc)) == [s.stem for s in CHAPTERS]


@pytest.mark.parametrize("source", CHAPTERS, ids=chapter_id)
def test_chapter_ends_with_three_to_six_questions_before_its_exercises(source):
    text = source.read_text(encoding="utf-8")
    sections = re.findall(r"^## (.+)$", text, flags=re.M)
    assert "Check your understanding" in sections, f"{source.name}: no 'Check your understanding' section"
    position = sections.index("Check your understanding")
    follows = sections[position + 1:]
    assert follows in ([], ["Exercises"]), f"{source.name}: the quiz must come just before Exercises (or last)"
    questions = quiz.parse(quiz_body(source).splitlines())
    assert 3 <= len(questions) <= 6, f"{source.name}: {len(questions)} questions"
    for q in questions:
        if not q.numeric:
            assert 2 <= len(q.options) <= 5 and sum(o.correct for o in q.options) == 1
            assert all(o.explanation for o in q.options), "every option explains itself"


@pytest.mark.parametrize("body, problem", [
    ("- [x] an option first\n  > why", "starts with a question"),
    ("? Q\n- [ ] a\n  > no\n- [ ] b\n  > no", "exactly one option"),
    ("? Q\n- [x] a\n  > yes\n- [x] b\n  > yes", "exactly one option"),
    ("? Q\n- [x] a\n  > yes\n- [ ] b", "every option needs an explanation"),
    ("? Q\n= 3", "needs an explanation"),
    ("? Q\n= 3\n  > why\n- [x] a\n  > yes", "either options or one"),
    ("? Q\nstray text", "expected"),
])
def test_malformed_quizzes_are_named(body, problem):
    with pytest.raises(quiz.QuizError, match=problem):
        quiz.parse(body.splitlines())


def test_numbers_are_read_as_the_page_writes_them():
    assert quiz.number_of("129,792") == 129792
    assert quiz.number_of("3.8%") == 3.8
    assert quiz.number_of("\u22120.5") == -0.5
    assert quiz.default_tolerance("31.03") == pytest.approx(0.005)
    assert quiz.default_tolerance("1,200") == 0.5


def test_option_order_is_fixed_by_the_question():
    body = "? Which?\n- [x] a\n  > yes\n- [ ] b\n  > no\n- [ ] c\n  > no\n- [ ] d\n  > no"
    orders = {tuple(o.text for o in quiz.parse(body.splitlines())[0].options) for _ in range(3)}
    assert len(orders) == 1


# ------------------------------------------------------------------ the built page

@pytest.mark.parametrize("source", CHAPTERS, ids=chapter_id)
def test_page_renders_each_question_as_a_form(built_html, source):
    questions = quiz.parse(quiz_body(source).splitlines())
    fragment = quiz_html(built_html, source)
    forms = re.findall(r'<form class="quiz-question".*?</form>', fragment, flags=re.S)
    assert len(forms) == len(questions)
    text = page_html(built_html, source)
    # quiz.css is one of the page's stylesheets, which the site serves as one bundle (tools/sphinx_site.py).
    bundled = re.search(r"<!-- the stylesheets of this page, bundled into site\.css: ([^<>]*?) -->", text)
    assert 'src="../_static/quiz.js' in text and bundled and "_static/quiz.css" in bundled.group(1).split()
    assert (built_html / "_static" / "quiz.js").is_file()
    assert ".tinyllm-quiz .quiz-check" in (built_html / "_static" / "styles" / "site.css").read_text()
    for form, q in zip(forms, questions):
        assert form.count("<fieldset>") == 1 and form.count("<legend>") == 1
        assert 'aria-live="polite"' in form and '<button type="submit" class="quiz-check">Check</button>' in form
        if q.numeric:
            assert re.search(r'<label for="([^"]+)">.*?</label> <input type="text" id="\1"', form)
        else:
            assert form.count('type="radio"') == len(q.options) and form.count("data-correct") == 1
            qid = re.search(r'id="(quiz-[^"]+)"', form).group(1)
            for j in range(len(q.options)):
                assert f'<label for="{qid}-{j}">' in form
                assert f'class="quiz-explanation" data-for="{j}" hidden' in form


@pytest.mark.parametrize("source", CHAPTERS, ids=chapter_id)
def test_quoted_and_numeric_values_are_the_builds(built_html, source):
    """Each {glue:text} in the quiz shows the glued value; a numeric answer is the glued value as shown."""
    body = quiz_body(source)
    values = glued_values(source)
    assert values, f"{source.name}: no glued values (build the book first)"
    fragment = quiz_html(built_html, source)
    shown = visible_text(fragment)
    for name, fmt in quiz.GLUE.findall(body):
        assert name in values, f"{source.name}: the quiz quotes {name!r}, which no cell glued"
        assert formatted(values, name, fmt) in shown, f"{source.name}: {name} is not shown as the build computed it"
    forms = re.findall(r'<form class="quiz-question"[^>]*>', fragment)
    for q, form in zip(quiz.parse(body.splitlines()), forms):
        if q.numeric:
            match = quiz.GLUE.fullmatch(q.answer)
            expected = formatted(values, *match.groups()) if match else q.answer
            answer = float(re.search(r'data-answer="([^"]+)"', form).group(1))
            assert answer == quiz.number_of(expected)
            assert f"The answer is {expected}." in shown


@pytest.mark.parametrize("source", CHAPTERS, ids=chapter_id)
def test_colab_notebook_has_the_questions_with_folded_answers(source):
    notebook = json.loads(paired_path(source).read_text(encoding="utf-8"))
    markdown = "\n".join("".join(c["source"]) for c in notebook["cells"] if c["cell_type"] == "markdown")
    assert "## Check your understanding" in markdown
    assert markdown.index("## Check your understanding") < markdown.index("## Exercises")
    values = notebook["metadata"]["glued"]
    questions = quiz.parse(quiz_body(source).splitlines())
    for i, q in enumerate(questions, 1):
        text = quiz.GLUE.sub(lambda m: formatted(values, m.group(1), m.group(2)), " ".join(q.text))
        assert f"**Question {i}.** {text}" in markdown, f"{source.name}: question {i} is not in the notebook"
    assert markdown.count("<details><summary>") == len(questions)
    assert "{glue:text}" not in markdown and ":::{quiz}" not in markdown


# ------------------------------------------------------------------ in a browser

@pytest.fixture(scope="module")
def chapter_pages(browser, server):
    """Opens a chapter on a desktop-sized screen through test_site's offline Visit."""
    return lambda source: Visit(browser, server, f"book/{source.stem}.html", DESKTOP)


def _verdict(form) -> str:
    return form.locator(".quiz-verdict").inner_text().strip()


def _shown(form) -> list[str]:
    return form.locator(".quiz-explanation").evaluate_all(
        "els => els.filter(e => !e.hidden && e.offsetParent !== null).map(e => e.dataset.for)")


@pytest.mark.slow
@pytest.mark.parametrize("source", CHAPTERS, ids=chapter_id)
def test_answering_with_the_mouse_reveals_the_explanation(chapter_pages, source):
    visit = chapter_pages(source)
    try:
        forms = visit.page.locator("form.quiz-question")
        assert forms.count() == len(quiz.parse(quiz_body(source).splitlines()))
        for i in range(forms.count()):
            form = forms.nth(i)
            form.scroll_into_view_if_needed()
            assert _shown(form) == [] and _verdict(form) == "", "nothing is revealed before an answer"
            if form.get_attribute("data-kind") == "choice":
                radios = form.locator("input[type=radio]")
                wrong = next(j for j in range(radios.count()) if radios.nth(j).get_attribute("data-correct") is None)
                right = next(j for j in range(radios.count()) if radios.nth(j).get_attribute("data-correct") is not None)
                form.locator("label").nth(wrong).click()  # a reader clicks the option's text
                form.get_by_role("button", name="Check").click()
                assert _verdict(form).startswith("Not quite"), _verdict(form)
                assert _shown(form) == [str(wrong)]
                form.locator("label").nth(right).click()
                form.get_by_role("button", name="Check").click()
                assert _verdict(form).startswith("Correct"), _verdict(form)
                assert _shown(form) == [str(right)]
            else:
                answer, tolerance = float(form.get_attribute("data-answer")), float(form.get_attribute("data-tolerance"))
                box = form.get_by_role("textbox")
                box.fill(f"{answer + 10 * tolerance + 1:g}")
                form.get_by_role("button", name="Check").click()
                assert _verdict(form).startswith("Not quite"), _verdict(form)
                assert _shown(form) == [], "a first wrong number does not give the answer away"
                form.get_by_role("button", name="Check").click()
                assert _verdict(form).startswith("Not quite") and _shown(form) == ["answer"]
                shown = re.search(r"The answer is (\S+)\.", form.locator(".quiz-explanation").inner_text()).group(1)
                box.fill(shown)  # the value exactly as the page rounds it
                form.get_by_role("button", name="Check").click()
                assert _verdict(form) == "Correct.", (shown, _verdict(form))
        assert not visit.errors, visit.errors
        assert not visit.external, visit.external
    finally:
        visit.close()


@pytest.mark.slow
@pytest.mark.parametrize("source", CHAPTERS, ids=chapter_id)
def test_the_keyboard_alone_answers_every_question(chapter_pages, source):
    visit = chapter_pages(source)
    page = visit.page
    try:
        page.locator("#check-your-understanding").scroll_into_view_if_needed()
        # Start from the section's heading link and move with Tab only.
        page.evaluate("""() => { const h = document.querySelector('#check-your-understanding');
                                  h.setAttribute('tabindex', '-1'); h.focus(); }""")
        forms = page.locator("form.quiz-question")
        for i in range(forms.count()):
            form = forms.nth(i)
            kind = form.get_attribute("data-kind")
            for _ in range(30):  # to the question's first control (maths in the legend is a tab stop too)
                page.keyboard.press("Tab")
                if form.evaluate("f => f.contains(document.activeElement) && document.activeElement.tagName === 'INPUT'"):
                    break
            else:
                raise AssertionError(f"{source.name}: Tab never reached question {i + 1}")
            if kind == "choice":
                page.keyboard.press("Space")  # choose the focused option
                for _ in range(6):
                    if page.evaluate("() => document.activeElement.hasAttribute('data-correct')"):
                        break
                    page.keyboard.press("ArrowDown")  # arrows move the choice within the group
                assert page.evaluate("() => document.activeElement.checked")
                for _ in range(30):  # MathJax makes typeset maths a tab stop of its own
                    page.keyboard.press("Tab")
                    if page.evaluate("() => document.activeElement.classList.contains('quiz-check')"):
                        break
                assert form.evaluate("f => f.querySelector('.quiz-check') === document.activeElement")
                page.keyboard.press("Enter")
                assert _verdict(form).startswith("Correct"), (source.name, i, _verdict(form))
                assert len(_shown(form)) == 1
            else:
                shown = visible_text(form.locator(".quiz-explanation").evaluate("e => e.innerHTML"))
                value = re.search(r"The answer is (\S+)\.", shown).group(1)
                page.keyboard.type("0.000123")
                page.keyboard.press("Enter")  # Enter in the box submits its question
                assert _verdict(form).startswith("Not quite"), _verdict(form)
                page.keyboard.press("Control+A")
                page.keyboard.type(value)
                page.keyboard.press("Enter")
                assert _verdict(form) == "Correct.", (source.name, i, value, _verdict(form))
                assert _shown(form) == ["answer"]
                page.keyboard.press("Tab")  # on to the Check button, then the next question
        assert not visit.errors, visit.errors
    finally:
        visit.close()
