"""Self-check questions: the ``{quiz}`` directive, for the site and for the Colab notebooks.

A chapter ends with a "Check your understanding" section holding one directive::

    :::{quiz}
    ? What does the softmax of two equal logits give?
    - [ ] 1 and 0
      > Why this option is wrong.
    - [x] 0.5 and 0.5
      > Why this option is right.
    ? How many parameters has the model? (a whole number)
    = {glue:text}`n_params:,`
      > How to find it. (Numeric: the answer as the page shows it, from the build's glued value.)
    :::

``?`` starts a question, ``- [ ]`` / ``- [x]`` a wrong / right option, ``=`` a
numeric answer (optionally ``= VALUE ± TOLERANCE``; by default half a unit of its
last displayed digit, so the value rounded as displayed is accepted), and ``>``
the explanation of the option or answer above it. Text is MyST Markdown (inline
maths, ``{glue:text}`` for a value the chapter computed).

On the site (``setup``) each question is a native form: a ``<fieldset>`` with its
``<legend>``, radio buttons or a text box, a Check button, and a feedback region
(``aria-live="polite"``) that says "Correct" or "Not quite" in words and shows the
explanation. ``quiz.js`` and ``quiz.css`` are written by this module into the
site's ``_static`` and added to the pages that have a quiz; nothing is fetched
from elsewhere. In the Colab notebook (``to_markdown``, called by
``tools/notebooks.py``) the questions are Markdown with each answer in a
``<details>`` block that the reader opens.

On paper (``make pdf``, the LaTeX builder) each question prints with its options
lettered, and the chapter's answers follow under "Answers", every option with
its explanation (``PrintedQuiz``).
"""

from __future__ import annotations

import hashlib
import random
import re
from dataclasses import dataclass, field
from pathlib import Path

from docutils import nodes
from docutils.statemachine import StringList
from sphinx.transforms.post_transforms import SphinxPostTransform
from sphinx.util.docutils import SphinxDirective

GLUE = re.compile(r"\{glue:text\}`([\w-]+)(?::([^`]*))?`")


# ------------------------------------------------------------------ the format

@dataclass
class Option:
    text: str
    correct: bool
    explanation: list[str] = field(default_factory=list)


@dataclass
class Question:
    text: list[str]
    options: list[Option] = field(default_factory=list)
    answer: str | None = None  # numeric: the answer as written (``{glue:text}`...``` or a number)
    tolerance: str | None = None
    explanation: list[str] = field(default_factory=list)  # numeric questions

    @property
    def numeric(self) -> bool:
        return self.answer is not None


class QuizError(ValueError):
    pass


def parse(lines: list[str]) -> list[Question]:
    """The questions of a ``{quiz}`` body, options in their shown order; QuizError names what is malformed."""
    questions: list[Question] = []
    target = None  # the list that continuation lines extend
    for number, raw in enumerate(lines, 1):
        line = raw.rstrip()
        stripped = line.strip()
        if not stripped:
            continue
        if line.startswith("? "):
            questions.append(Question([line[2:].strip()]))
            target = questions[-1].text
            continue
        if not questions:
            raise QuizError(f"line {number}: a quiz starts with a question ('? ...')")
        question = questions[-1]
        option = re.match(r"- \[([ xX])\] (.*)$", line)
        if option:
            question.options.append(Option(option.group(2).strip(), option.group(1) != " "))
            target = None
        elif line.startswith("= "):
            value, _, tolerance = line[2:].partition("±")
            question.answer, question.tolerance = value.strip(), tolerance.strip() or None
            target = None
        elif stripped.startswith(">"):
            text = stripped[1:].strip()
            if line.startswith("  >") and (target is None or target is question.text):
                target = question.options[-1].explanation if question.options else question.explanation
            target.append(text)
        elif target is not None and line.startswith("  "):
            target.append(stripped)
        else:
            raise QuizError(f"line {number}: expected '? ', '- [ ] ', '- [x] ', '= ' or '  > ', got {line!r}")
    for i, q in enumerate(questions, 1):
        if q.numeric == bool(q.options):
            raise QuizError(f"question {i}: give either options or one '= ' answer")
        if q.options and sum(o.correct for o in q.options) != 1:
            raise QuizError(f"question {i}: exactly one option must be marked [x]")
        if q.options and not all(o.explanation for o in q.options):
            raise QuizError(f"question {i}: every option needs an explanation ('  > ...')")
        if q.numeric and not q.explanation:
            raise QuizError(f"question {i}: the answer needs an explanation ('  > ...')")
        # The right option is often written first; readers see the options in an order fixed
        # by the question's text (the same in every build and in the notebook).
        seed = int(hashlib.sha1(" ".join(q.text).encode()).hexdigest()[:8], 16)
        random.Random(seed).shuffle(q.options)
    return questions


def number_of(text: str) -> float:
    """A number as the page writes it: ``1,200``, ``3.8%``, ``−0.5``."""
    return float(text.replace(",", "").replace("%", "").replace("\u2212", "-").strip())


def default_tolerance(text: str) -> float:
    """Half a unit of the last digit shown: ``31.03`` accepts 31.025 to 31.035."""
    digits = text.replace(",", "").replace("%", "").strip()
    decimals = len(digits.split(".")[1]) if "." in digits else 0
    return 0.5 * 10 ** -decimals


def letter(i: int) -> str:
    return "ABCDEFGH"[i]


# ------------------------------------------------------------------ Colab

def to_markdown(body: str) -> str:
    """The questions as notebook Markdown, each answer in a ``<details>`` block.

    ``{glue:text}`` is left in place: tools/notebooks.py writes the values in afterwards.
    """
    out = []
    for i, q in enumerate(parse(body.splitlines()), 1):
        out.append(f"**Question {i}.** " + " ".join(q.text))
        out.append("")
        if q.numeric:
            out.append("*Answer with a number.*")
            out.append("")
            out.append("<details><summary>Show the answer</summary>")
            out.append("")
            out.append(f"**{q.answer}**. " + " ".join(q.explanation))
        else:
            out.extend(f"- **{letter(j)}.** {o.text}" for j, o in enumerate(q.options))
            out.append("")
            out.append("<details><summary>Show the answer and why</summary>")
            out.append("")
            right = next(j for j, o in enumerate(q.options) if o.correct)
            out.append(f"The answer is **{letter(right)}**.")
            out.append("")
            for j, o in enumerate(q.options):
                verdict = "Correct" if o.correct else "Not quite"
                out.append(f"- **{letter(j)}.** {verdict}: " + " ".join(o.explanation))
        out.append("")
        out.append("</details>")
        out.append("")
    return "\n".join(out).rstrip("\n")


# ------------------------------------------------------------------ Sphinx

class quiz_node(nodes.General, nodes.Element):
    pass


class quiz_question(nodes.General, nodes.Element):
    pass


class quiz_legend(nodes.General, nodes.TextElement):
    pass


class quiz_option(nodes.General, nodes.TextElement):
    pass


class quiz_number(nodes.General, nodes.TextElement):
    pass


class quiz_feedback(nodes.General, nodes.Element):
    pass


class quiz_explanation(nodes.General, nodes.Element):
    pass


class QuizDirective(SphinxDirective):
    has_content = True

    def _inline(self, text: str) -> list[nodes.Node]:
        """MyST inline markup (maths, glue) parsed as one paragraph; its children."""
        holder = nodes.container()
        self.state.nested_parse(StringList([text], self.get_source_info()[0]), self.content_offset, holder)
        if len(holder.children) != 1 or not isinstance(holder[0], nodes.paragraph):
            raise self.error(f"quiz: {text!r} must be one paragraph of inline text")
        return list(holder[0].children)

    def _blocks(self, lines: list[str], into: nodes.Element) -> nodes.Element:
        self.state.nested_parse(StringList(lines, self.get_source_info()[0]), self.content_offset, into)
        return into

    def _glued(self, answer: str) -> str:
        """A numeric answer as the page shows it: a glued value formatted, or the number written."""
        match = GLUE.fullmatch(answer)
        if not match:
            number_of(answer)  # a plain number
            return answer
        from myst_nb.core.variables import format_plain_text
        from myst_nb.ext.glue.utils import RetrievalError, retrieve_glue_data

        try:
            data = retrieve_glue_data(self.state.document, match.group(1))
        except RetrievalError as error:
            raise self.error(f"quiz: {error}") from error
        return format_plain_text(data.data["text/plain"], match.group(2) or "")

    def run(self) -> list[nodes.Node]:
        try:
            questions = parse(list(self.content))
        except QuizError as error:
            raise self.error(f"quiz: {error}") from error
        if not questions:
            raise self.error("quiz: no questions")
        root = quiz_node()
        docname = self.env.docname.replace("/", "-")
        serial = self.env.new_serialno("quiz")
        for i, q in enumerate(questions, 1):
            qid = f"quiz-{docname}-{serial}-{i}"
            question = quiz_question(ids=[qid], kind="number" if q.numeric else "choice")
            legend = quiz_legend()
            legend += nodes.strong(text=f"Question {i}. ")
            legend.extend(self._inline(" ".join(q.text)))
            question += legend
            feedback = quiz_feedback(ids=[f"{qid}-feedback"])
            if q.numeric:
                shown = self._glued(q.answer)
                tolerance = number_of(q.tolerance) if q.tolerance else default_tolerance(shown)
                question["answer"], question["tolerance"] = str(number_of(shown)), repr(tolerance)
                question += quiz_number(ids=[f"{qid}-input"], text="Your answer (a number)")
                explanation = quiz_explanation(which="answer")
                explanation += nodes.paragraph("", "", nodes.Text(f"The answer is {shown}. "),
                                               *self._inline(" ".join(q.explanation)))
                feedback += explanation
            else:
                for j, o in enumerate(q.options):
                    option = quiz_option(ids=[f"{qid}-{j}"], name=qid, correct=o.correct, index=j)
                    option.extend(self._inline(o.text))
                    question += option
                    feedback += self._blocks([" ".join(o.explanation)], quiz_explanation(which=str(j)))
            question += feedback
            root += question
        return [root]


def _attr(value) -> str:
    from html import escape

    return escape(str(value), quote=True)


def visit_quiz_html(self, node):
    self.body.append('<div class="tinyllm-quiz">')


def depart_quiz_html(self, node):
    self.body.append("</div>")


def visit_question_html(self, node):
    qid = node["ids"][0]
    extra = (f' data-answer="{_attr(node["answer"])}" data-tolerance="{_attr(node["tolerance"])}"'
             if node["kind"] == "number" else "")
    self.body.append(f'<form class="quiz-question" id="{qid}" data-kind="{node["kind"]}"{extra} novalidate>'
                     "<fieldset>")


def depart_question_html(self, node):
    self.body.append("</fieldset></form>")


def visit_legend_html(self, node):
    self.body.append("<legend>")


def depart_legend_html(self, node):
    self.body.append("</legend>")


def visit_option_html(self, node):
    oid = node["ids"][0]
    self.body.append(f'<div class="quiz-option"><input type="radio" id="{oid}" name="{node["name"]}" '
                     f'value="{node["index"]}"{" data-correct" if node["correct"] else ""}>'
                     f'<label for="{oid}">')


def depart_option_html(self, node):
    self.body.append("</label></div>")


def visit_number_html(self, node):
    nid = node["ids"][0]
    self.body.append(f'<div class="quiz-number"><label for="{nid}">')


def depart_number_html(self, node):
    nid = node["ids"][0]
    self.body.append(f'</label> <input type="text" id="{nid}" inputmode="decimal" autocomplete="off" '
                     'spellcheck="false" size="12"></div>')


def visit_feedback_html(self, node):
    self.body.append('<div class="quiz-actions"><button type="submit" class="quiz-check">Check</button></div>'
                     f'<div class="quiz-feedback" id="{node["ids"][0]}" aria-live="polite">'
                     '<p class="quiz-verdict"></p>')


def depart_feedback_html(self, node):
    self.body.append("</div>")


def visit_explanation_html(self, node):
    self.body.append(f'<div class="quiz-explanation" data-for="{node["which"]}" hidden>')


def depart_explanation_html(self, node):
    self.body.append("</div>")


def _skip(self, node):
    raise nodes.SkipNode


# Builders other than HTML and LaTeX leave the quiz out (it needs a browser to be answered);
# LaTeX (make pdf) gets it as plain text by PrintedQuiz below.
OTHER = (_skip, None)


class PrintedQuiz(SphinxPostTransform):
    """On paper (``make pdf``): each question with its options lettered A, B, ..., then the answers
    and every option's explanation under "Answers", as the Colab notebook folds them."""

    builders = ("latex",)
    default_priority = 5

    def run(self, **kwargs) -> None:
        for quiz in list(self.document.findall(quiz_node)):
            questions, answers = [], [nodes.rubric(text="Answers")]
            for question in quiz.findall(quiz_question):
                legend = next(iter(question.findall(quiz_legend)))
                number = legend[0].astext().strip().rstrip(".")  # "Question 3"
                questions.append(nodes.paragraph("", "", *[child.deepcopy() for child in legend.children]))
                explanations = list(question.findall(quiz_explanation))
                if question["kind"] == "number":
                    questions.append(nodes.paragraph("", "", nodes.emphasis(text="Answer with a number.")))
                    working = explanations[0].children[0].deepcopy()
                    working.insert(0, nodes.strong(text=f"{number}: "))
                    answers.append(working)
                    continue
                options = list(question.findall(quiz_option))
                choices = nodes.enumerated_list(enumtype="upperalpha", prefix="", suffix=".")
                for option in options:
                    choices += nodes.list_item("", nodes.paragraph("", "", *[c.deepcopy() for c in option.children]))
                questions.append(choices)
                right = next(i for i, option in enumerate(options) if option["correct"])
                answers.append(nodes.paragraph("", "", nodes.strong(text=f"{number}: {letter(right)}.")))
                why = nodes.bullet_list()
                for i, (option, explanation) in enumerate(zip(options, explanations)):
                    verdict = "Correct" if option["correct"] else "Not quite"
                    blocks = [block.deepcopy() for block in explanation.children]
                    blocks[0].insert(0, nodes.Text(f"{letter(i)}. {verdict}: "))
                    why += nodes.list_item("", *blocks)
                answers.append(why)
            quiz.replace_self(questions + answers)

QUIZ_JS = r"""// Self-check questions (tools/quiz.py): answered in the page, no server.
(function () {
  "use strict";
  function check(form) {
    const verdict = form.querySelector(".quiz-verdict");
    const explanations = form.querySelectorAll(".quiz-explanation");
    explanations.forEach((e) => { e.hidden = true; });
    let which = null, right = false;
    if (form.dataset.kind === "number") {
      const input = form.querySelector("input[type=text]");
      const text = input.value.replace(/[,%\s]/g, "").replace("\u2212", "-");
      if (text === "" || !isFinite(Number(text))) {
        verdict.textContent = "Enter a number first.";
        form.dataset.state = "";
        return;
      }
      const tolerance = Number(form.dataset.tolerance) * (1 + 1e-9);
      right = Math.abs(Number(text) - Number(form.dataset.answer)) <= tolerance;
      which = "answer";
    } else {
      const chosen = form.querySelector("input[type=radio]:checked");
      if (!chosen) {
        verdict.textContent = "Choose an answer first.";
        form.dataset.state = "";
        return;
      }
      right = chosen.hasAttribute("data-correct");
      which = chosen.value;
    }
    form.dataset.state = right ? "correct" : "wrong";
    const tries = Number(form.dataset.tries || 0) + (right ? 0 : 1);
    form.dataset.tries = String(tries);
    const explanation = form.querySelector('.quiz-explanation[data-for="' + which + '"]');
    if (form.dataset.kind === "number") {
      // A wrong number gets a second try before the working (which states the answer) is shown.
      verdict.textContent = right ? "Correct." : (tries < 2 ? "Not quite: that is not the answer. Try again."
                                                            : "Not quite: that is not the answer. The working:");
      if (right || tries >= 2) explanation.hidden = false;
    } else {
      verdict.textContent = right ? "Correct. Why:" : "Not quite. Why this option is wrong:";
      explanation.hidden = false;
    }
  }
  document.addEventListener("submit", (event) => {
    const form = event.target.closest(".quiz-question");
    if (!form) return;
    event.preventDefault();
    check(form);
  });
})();
"""

QUIZ_CSS = """/* Self-check questions (tools/quiz.py); the theme's variables, so light and dark mode both work. */
.tinyllm-quiz .quiz-question { margin: 0 0 1.25rem; }
.tinyllm-quiz fieldset { border: 1px solid var(--pst-color-border); border-radius: .4rem;
  padding: .75rem 1rem 1rem; margin: 0; color: var(--pst-color-text-base); background: var(--pst-color-surface); }
.tinyllm-quiz legend { float: left; width: 100%; padding: 0; margin: 0 0 .4rem; font-size: 1rem;
  color: var(--pst-color-text-base); }  /* floated: a long question wraps inside the box, not across its border */
.tinyllm-quiz legend + * { clear: both; }
.tinyllm-quiz .quiz-option { display: flex; gap: .5rem; align-items: baseline; margin: .3rem 0; }
.tinyllm-quiz .quiz-option input { flex: none; }
.tinyllm-quiz .quiz-number input { border: 1px solid var(--pst-color-border); border-radius: .25rem;
  padding: .15rem .4rem; color: var(--pst-color-text-base); background: var(--pst-color-background); }
.tinyllm-quiz .quiz-check { margin-top: .5rem; padding: .25rem .9rem; border-radius: .25rem;
  border: 1px solid var(--pst-color-primary); color: var(--pst-color-text-base); background: var(--pst-color-background); }
.tinyllm-quiz input:focus-visible, .tinyllm-quiz .quiz-check:focus-visible {
  outline: 3px solid var(--pst-color-primary); outline-offset: 2px; }
.tinyllm-quiz .quiz-feedback { margin-top: .5rem; }
.tinyllm-quiz .quiz-verdict { font-weight: bold; margin: 0; }
.tinyllm-quiz .quiz-verdict:empty { display: none; }
.tinyllm-quiz [data-state="correct"] .quiz-feedback { border-left: 4px solid var(--pst-color-success); padding-left: .6rem; }
.tinyllm-quiz [data-state="wrong"] .quiz-feedback { border-left: 4px dashed var(--pst-color-warning); padding-left: .6rem; }
.tinyllm-quiz .quiz-explanation p { margin: .25rem 0 0; }
"""


def _page_assets(app, pagename, templatename, context, doctree) -> None:
    if doctree is not None and next(iter(doctree.findall(quiz_node)), None) is not None:
        app.add_css_file("quiz.css")
        app.add_js_file("quiz.js")


def _write_assets(app, exception) -> None:
    if exception is None and app.builder.format == "html":
        static = Path(app.outdir) / "_static"
        static.mkdir(parents=True, exist_ok=True)
        (static / "quiz.js").write_text(QUIZ_JS, encoding="utf-8")
        (static / "quiz.css").write_text(QUIZ_CSS, encoding="utf-8")


def setup(app):
    app.add_directive("quiz", QuizDirective)
    app.add_node(quiz_node, html=(visit_quiz_html, depart_quiz_html), latex=OTHER, text=OTHER)
    app.add_node(quiz_question, html=(visit_question_html, depart_question_html), latex=OTHER, text=OTHER)
    app.add_node(quiz_legend, html=(visit_legend_html, depart_legend_html), latex=OTHER, text=OTHER)
    app.add_node(quiz_option, html=(visit_option_html, depart_option_html), latex=OTHER, text=OTHER)
    app.add_node(quiz_number, html=(visit_number_html, depart_number_html), latex=OTHER, text=OTHER)
    app.add_node(quiz_feedback, html=(visit_feedback_html, depart_feedback_html), latex=OTHER, text=OTHER)
    app.add_node(quiz_explanation, html=(visit_explanation_html, depart_explanation_html), latex=OTHER, text=OTHER)
    app.add_post_transform(PrintedQuiz)
    app.connect("html-page-context", _page_assets)
    app.connect("build-finished", _write_assets)
    return {"parallel_read_safe": True, "parallel_write_safe": True}
