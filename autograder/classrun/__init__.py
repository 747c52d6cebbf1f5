"""The class run: ``python -m autograder grade`` over a folder of submissions.

``submissions`` finds what to grade and chooses one notebook per student and
assignment; ``course`` reads the course file (due dates, late policy, the Canvas
roster); ``grade`` is the command (options, reruns, parallel workers) that
grades each submission and rebuilds the outputs.

May import: every other layer (:mod:`autograder.outputs`,
:mod:`autograder.grading`, :mod:`autograder.sandbox`); nothing imports it but
the package's entry points (``__main__``, ``gradescope``).
"""
